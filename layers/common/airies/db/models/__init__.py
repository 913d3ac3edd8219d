"""All ORM models; importing this registers every table on ``Base.metadata``.

One module per capability, so each capability owns its tables.
"""

from airies.accounts.models import Account, ApiKey
from airies.agents.models import Agent, AgentVersion
from airies.billing import models as billing  # noqa: F401
from airies.conversations import models as conversations  # noqa: F401
from airies.core.models import Base, utcnow
from airies.knowledge import models as knowledge  # noqa: F401
from airies.llm import models as llm  # noqa: F401
from airies.voice import models as voice  # noqa: F401
from airies.widget import models as publishable_keys  # noqa: F401

__all__ = ["Account", "Agent", "AgentVersion", "ApiKey", "Base", "utcnow"]
