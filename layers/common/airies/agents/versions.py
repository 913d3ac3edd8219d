"""Reading an agent and its published versions: what a call needs of the agents capability (the agent exists for
the account; the immutable config a conversation runs). Apart from ``service`` (drafts, validation, deploys) so the
capabilities that only read, and the voice functions' cold start, do not import the validator's engine, key and
URL lookups."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from airies.agents.models import Agent, AgentVersion
from airies.core.errors import BadRequestError, NotFoundError


def get_agent(session: Session, account_id: str, agent_id: str) -> Agent:
    """The account's agent; 404 for a foreign or unknown one."""
    agent = session.scalar(select(Agent).where(Agent.id == agent_id, Agent.account_id == account_id))
    if agent is None:
        raise NotFoundError("agent", agent_id)
    return agent


def published_version(session: Session, account_id: str, agent_id: str, version: int | None = None) -> AgentVersion:
    """The agent's published ``version`` (None: its current one); 400 when it was never deployed."""
    agent = get_agent(session, account_id, agent_id)
    wanted = version or agent.current_version
    if wanted is None:
        raise BadRequestError("agent has no published version: deploy it first", code="agent_not_deployed")
    record = session.scalar(
        select(AgentVersion).where(AgentVersion.agent_id == agent_id, AgentVersion.version == wanted)
    )
    if record is None:
        raise NotFoundError("agent_version", str(wanted))
    return record
