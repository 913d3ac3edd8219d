from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request, Response

from airies.accounts.auth import Caller, current_caller
from airies.agents.config import AgentConfig
from airies.agents.models import Agent, AgentVersion
from airies.agents.schemas import (
    AgentCreate,
    AgentOut,
    AgentTemplate,
    AgentTestRequest,
    AgentUpdate,
    AgentVersionOut,
    ValidationResult,
)
from airies.agents.service import AgentAnalytics, AgentService, errors_of
from airies.agents.testing import run_agent_test
from airies.core.schemas import Limit, Page, StrictModel
from airies.voice.factory import speech_model_cache
from airies.voice.speech_models import SpeechModelCache, prepare_speech_model

router = APIRouter(prefix="/agents", tags=["agents"])


def agent_service(caller: Caller) -> AgentService:
    # The caller's settings: custom-endpoint models (Ollama, vLLM) validate only where one is configured.
    return AgentService(caller.session, settings=caller.settings)


Warnings = Callable[[dict[str, Any]], list[dict[str, Any]]]


def agent_out(agent: Agent, warnings: Warnings) -> AgentOut:
    return AgentOut(
        id=agent.id,
        name=agent.name,
        description=agent.description,
        agent_type=agent.agent_type,
        status=agent.status,
        current_version=agent.current_version,
        has_undeployed_changes=agent.has_undeployed_changes,
        config=agent.draft_config,
        created_at=agent.created_at,
        updated_at=agent.updated_at,
        warnings=warnings(agent.draft_config),
    )


def version_out(version: AgentVersion, warnings: Warnings) -> AgentVersionOut:
    return AgentVersionOut(
        agent_id=version.agent_id,
        version=version.version,
        config=version.config,
        created_at=version.created_at,
        warnings=warnings(version.config),
    )


class CloneRequest(StrictModel):
    name: str | None = None


# Static paths first, so they never match as an agent id.
@router.get("/templates")
def templates(_caller: Caller = Depends(current_caller)) -> dict[str, list[AgentTemplate]]:
    """Ready-made agent configurations to start from."""
    return {"data": [AgentTemplate(**template) for template in AgentService.templates()]}


@router.post("/validate")
def validate(config: dict[str, Any] = Body(...), caller: Caller = Depends(current_caller)) -> ValidationResult:
    """Check an agent configuration without saving it: the problems found, by field."""
    problems = agent_service(caller).validator.problems(caller.account_id, config)
    return ValidationResult(valid=not errors_of(problems), problems=problems)


@router.post("", status_code=201)
def create_agent(body: AgentCreate, caller: Caller = Depends(current_caller)) -> AgentOut:
    """Create an agent (a draft until it is deployed)."""
    service = agent_service(caller)
    return agent_out(service.create(caller.account_id, body), service.warnings_for(caller.account_id))


@router.get("")
def list_agents(
    caller: Caller = Depends(current_caller),
    limit: Annotated[Limit, Query(le=100)] = 20,
    cursor: str | None = Query(None, max_length=40),
    status: Literal["draft", "deployed"] | None = None,
    agent_type: Literal["inbound", "outbound", "web"] | None = None,
    q: str | None = Query(None, max_length=200),
) -> Page[AgentOut]:
    """The account's agents, a page at a time."""
    service = agent_service(caller)
    rows, next_cursor = service.list(
        caller.account_id, limit=limit, cursor=cursor, status=status, agent_type=agent_type, search=q
    )
    warnings = service.warnings_for(caller.account_id)
    data = [agent_out(agent, warnings) for agent in rows]
    return Page(data=data, next_cursor=next_cursor, has_more=next_cursor is not None)


@router.get("/{agent_id}")
def get_agent(agent_id: str, caller: Caller = Depends(current_caller)) -> AgentOut:
    """One agent with its current configuration."""
    service = agent_service(caller)
    return agent_out(service.get(caller.account_id, agent_id), service.warnings_for(caller.account_id))


@router.put("/{agent_id}")
def update_agent(agent_id: str, body: AgentUpdate, caller: Caller = Depends(current_caller)) -> AgentOut:
    """Change an agent's configuration (deployed versions stay as they were)."""
    patch = body.model_dump(exclude_unset=True)
    service = agent_service(caller)
    return agent_out(service.update(caller.account_id, agent_id, patch), service.warnings_for(caller.account_id))


@router.delete("/{agent_id}", status_code=204)
def delete_agent(agent_id: str, caller: Caller = Depends(current_caller)) -> Response:
    """Delete an agent."""
    agent_service(caller).delete(caller.account_id, agent_id)
    return Response(status_code=204)


@router.post("/{agent_id}/deploy", status_code=201)
def deploy_agent(agent_id: str, request: Request, caller: Caller = Depends(current_caller)) -> AgentVersionOut:
    """Publish the agent's configuration as a new immutable version that conversations use."""
    service = agent_service(caller)
    version = service.deploy(caller.account_id, agent_id)
    # The offline recogniser's model of this version is built now, so that no call waits for it.
    prepare_speech_model(speech_models(request), caller.account_id, AgentConfig.model_validate(version.config))
    return version_out(version, service.warnings_for(caller.account_id))


def speech_models(request: Request) -> SpeechModelCache:
    """The offline recogniser's model cache (tests may inject ``app.state.speech_models``)."""
    cache = getattr(request.app.state, "speech_models", None)
    if cache is None:
        cache = request.app.state.speech_models = speech_model_cache(request.app.state.settings)
    return cache


@router.get("/{agent_id}/versions")
def list_versions(agent_id: str, caller: Caller = Depends(current_caller)) -> dict[str, list[AgentVersionOut]]:
    """The agent's deployed versions."""
    service = agent_service(caller)
    warnings = service.warnings_for(caller.account_id)
    return {"data": [version_out(v, warnings) for v in service.versions(caller.account_id, agent_id)]}


@router.post("/{agent_id}/clone", status_code=201)
def clone_agent(agent_id: str, body: CloneRequest | None = None, caller: Caller = Depends(current_caller)) -> AgentOut:
    """Copy an agent into a new draft (optionally under a new name)."""
    name = body.name if body else None
    service = agent_service(caller)
    return agent_out(service.clone(caller.account_id, agent_id, name=name), service.warnings_for(caller.account_id))


@router.post("/{agent_id}/test")
def test_agent(
    agent_id: str, body: AgentTestRequest, request: Request, caller: Caller = Depends(current_caller)
) -> dict[str, Any]:
    """Run scripted test conversations against the agent and report which expectations held."""
    state = request.app.state
    return run_agent_test(caller.session, state.settings, state.database, caller.account_id, agent_id, body)


@router.get("/{agent_id}/analytics")
def agent_analytics(
    agent_id: str,
    request: Request,
    caller: Caller = Depends(current_caller),
    period: Literal["24h", "7d", "30d", "90d"] = "7d",
) -> dict[str, Any]:
    """The agent's conversation statistics over a period."""
    agent_service(caller).get(caller.account_id, agent_id)
    analytics: AgentAnalytics = request.app.state.agent_analytics  # the conversations capability's, wired by the edge
    return analytics(caller.session, caller.account_id, agent_id, period)
