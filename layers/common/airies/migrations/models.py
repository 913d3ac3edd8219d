"""Every capability's ORM models, imported so ``metadata`` holds every table (migrations, tests)."""

from airies.accounts import models as accounts  # noqa: F401
from airies.agents import models as agents  # noqa: F401
from airies.billing import models as billing  # noqa: F401
from airies.conversations import models as conversations  # noqa: F401
from airies.core.models import Base
from airies.knowledge import models as knowledge  # noqa: F401
from airies.llm import models as llm  # noqa: F401
from airies.telephony import models as telephony  # noqa: F401
from airies.voice import models as voice  # noqa: F401
from airies.webhooks import models as webhooks  # noqa: F401
from airies.widget import models as widget  # noqa: F401

metadata = Base.metadata
