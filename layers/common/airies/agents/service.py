"""Agent management: drafts, validation, immutable published versions, clone, templates."""

from __future__ import annotations

import builtins
import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from airies.accounts.provider_keys import stored_providers
from airies.agents.config import AgentConfig
from airies.agents.engines import ConfiguredEngines, engine_warnings
from airies.agents.models import Agent, AgentVersion
from airies.agents.templates import TEMPLATES
from airies.agents.versions import get_agent, published_version
from airies.core.config import Settings
from airies.core.database import Database
from airies.core.errors import NotFoundError, ValidationFailedError
from airies.core.ids import new_id
from airies.core.models import utcnow
from airies.core.url_guard import URLGuard, URLNotAllowed, url_guard
from airies.knowledge.models import KnowledgeBase
from airies.llm import catalog
from airies.llm.custom_endpoints import account_endpoint_models
from airies.llm.service import configured_llm_providers
from airies.voice import catalog as voice_catalog
from airies.voice.factory import configured_voice_vendors
from airies.voice.models import Voice
from airies.voice.speech_models import SpeechModelCache, prepare_speech_model

# (session, account_id, ids) -> the subset of ids that exist and belong to the account
KnowledgeBaseOwnership = Callable[[Session, str, list[str]], set[str]]
# (session, account_id, provider) -> voice ids the account may use beyond the built-in ones
AccountVoices = Callable[[Session, str, str], set[str]]
# (session, account_id) -> the models of the account's own LLM endpoints (provider "custom:<name>")
AccountLLMModels = Callable[[Session, str], list[catalog.LLMModel]]
# (session, account_id, agent_id, period) -> the agent's call analytics: the conversations capability answers it
# (the API edge passes ``airies.conversations.service.get_agent_analytics``)
AgentAnalytics = Callable[[Session, str, str, str], dict[str, Any]]
# (session, account_id) -> the LLM providers and voice vendors the account can call (keys, endpoints)
ConfiguredEngineLookup = Callable[[Session, str], ConfiguredEngines]


def configured_engine_lookup(settings: Settings) -> ConfiguredEngineLookup:
    def lookup(session: Session, account_id: str) -> ConfiguredEngines:
        stored = stored_providers(session, account_id)  # one query for both kinds
        return ConfiguredEngines(
            llm=frozenset(configured_llm_providers(settings, session, account_id, stored)),
            voice=frozenset(configured_voice_vendors(settings, stored)),
            offline_fallback=settings.voice_offline_fallback,
        )

    return lookup


def owned_knowledge_base_ids(session: Session, account_id: str, ids: list[str]) -> set[str]:
    if not ids:
        return set()
    query = select(KnowledgeBase.id).where(KnowledgeBase.account_id == account_id, KnowledgeBase.id.in_(ids))
    return set(session.scalars(query))


def account_voice_ids(session: Session, account_id: str, provider: str) -> set[str]:
    rows = session.scalars(select(Voice.voice_id).where(Voice.account_id == account_id, Voice.provider == provider))
    return set(rows)


def agents_using_provider(session: Session, account_id: str, provider: str) -> list[str]:
    """Agents whose draft or current published config routes to LLM ``provider`` (as provider or fallback)."""
    drafts = session.execute(select(Agent.id, Agent.draft_config).where(Agent.account_id == account_id))
    published = session.execute(
        select(Agent.id, AgentVersion.config)
        .join(AgentVersion, (AgentVersion.agent_id == Agent.id) & (AgentVersion.version == Agent.current_version))
        .where(Agent.account_id == account_id)
    )
    return sorted({agent_id for agent_id, config in [*drafts, *published] if provider in _llm_providers(config)})


def _llm_providers(config: dict[str, Any]) -> set[str]:
    llm = config.get("llm") or {}
    return {str(llm.get("provider"))} | {str(fb.get("provider")) for fb in llm.get("fallbacks") or []}


def prepare_deployed_agents(cache: SpeechModelCache, database: Database) -> int:
    """Offline recogniser models for the current version of every deployed agent (``make run`` at start-up: agents
    deployed before models were built, or by another process). Returns how many are ready."""
    with database.session() as session:
        rows = session.execute(
            select(AgentVersion.account_id, AgentVersion.config).join(
                Agent, (Agent.id == AgentVersion.agent_id) & (Agent.current_version == AgentVersion.version)
            )
        ).all()
    return sum(prepare_speech_model(cache, account_id, config) for account_id, config in rows)


def estimate_tokens(text: str) -> int:
    # ~4 characters per token for English; used only to compare with a context window.
    return math.ceil(len(text) / 4)


def _problem(field: str, code: str, message: str) -> dict[str, str]:
    return {"field": field, "code": code, "message": message, "severity": "error"}


def errors_of(problems: list[dict[str, str]]) -> list[dict[str, str]]:
    """The problems that make a config invalid (the rest are warnings: it works, but not as configured)."""
    return [problem for problem in problems if problem.get("severity") != "warning"]


def pydantic_problems(exc: ValidationError) -> list[dict[str, str]]:
    return [
        _problem(".".join(str(part) for part in err["loc"]) or "body", err["type"], err["msg"]) for err in exc.errors()
    ]


class AgentValidator:
    """Checks that need data: providers, models (the account's own endpoints' too), voices, knowledge bases, context
    size; with ``configured_engines``, warnings for providers that have no key (``airies.agents.engines``).
    Every problem has a ``severity``: ``error`` (the config is invalid) or ``warning``."""

    def __init__(
        self,
        session: Session,
        *,
        knowledge_bases: KnowledgeBaseOwnership = owned_knowledge_base_ids,
        account_voices: AccountVoices = account_voice_ids,
        llm_model: Callable[[str, str], catalog.LLMModel | None] = catalog.llm_model,
        account_llm_models: AccountLLMModels = account_endpoint_models,
        configured_engines: ConfiguredEngineLookup | None = None,
        tool_url_guard: URLGuard | None = None,
    ) -> None:
        self.session = session
        # Tool URLs are the tenant's input: checked (DNS included) when saved, and again on every call.
        self.tool_url_guard = tool_url_guard or URLGuard(https_only=True)
        self.knowledge_bases = knowledge_bases
        self.account_voices = account_voices
        self.llm_model = llm_model
        self.account_llm_models = account_llm_models
        self.configured_engines = configured_engines

    def problems(self, account_id: str, raw: dict[str, Any]) -> list[dict[str, str]]:
        try:
            config = AgentConfig.model_validate(raw)
        except ValidationError as exc:
            return pydantic_problems(exc)
        return self.semantic_problems(account_id, config)

    def semantic_problems(self, account_id: str, config: AgentConfig) -> list[dict[str, str]]:
        problems: list[dict[str, str]] = []
        own = {(m.provider, m.model): m for m in self.account_llm_models(self.session, account_id)}
        own_providers = {provider for provider, _ in own}
        llm_choices = [("llm", config.llm.provider, config.llm.model)] + [
            (f"llm.fallbacks.{i}", fb.provider, fb.model) for i, fb in enumerate(config.llm.fallbacks)
        ]
        for field, provider, model in llm_choices:
            known = provider in catalog.llm_providers() or provider in own_providers
            if not known and self.llm_model(provider, model) is None:
                problems.append(_problem(f"{field}.provider", "unknown_provider", f"unknown LLM provider '{provider}'"))
                continue
            entry = own.get((provider, model)) or self.llm_model(provider, model)
            if entry is None:
                problems.append(
                    _problem(f"{field}.model", "unknown_model", f"model '{model}' is not offered by '{provider}'")
                )
            elif field == "llm" and entry.context_window > 0:  # 0: a custom endpoint's model, context unknown
                prompt_tokens = estimate_tokens(config.system_prompt) + config.llm.max_tokens
                if prompt_tokens > entry.context_window:
                    problems.append(
                        _problem(
                            "system_prompt",
                            "prompt_too_long",
                            f"system prompt (~{prompt_tokens} tokens with max_tokens) exceeds the "
                            f"{entry.context_window}-token context of {model}",
                        )
                    )

        tts = voice_catalog.tts_providers()
        voice_providers = [("voice", config.voice.provider, config.voice.voice_id)] + [
            (f"voice.fallback_voices.{i}", fb.provider, fb.voice_id)
            for i, fb in enumerate(config.voice.fallback_voices)
        ]
        for field, provider, voice_id in voice_providers:
            if provider not in tts:
                problems.append(_problem(f"{field}.provider", "unknown_provider", f"unknown TTS provider '{provider}'"))
                continue
            voices = voice_catalog.builtin_voice_ids(provider) | self.account_voices(self.session, account_id, provider)
            if voice_id not in voices:
                problems.append(
                    _problem(
                        f"{field}.voice_id", "unknown_voice", f"voice '{voice_id}' is not available on '{provider}'"
                    )
                )
        if config.voice.model and config.voice.model not in tts.get(config.voice.provider, {}).get("models", []):
            problems.append(_problem("voice.model", "unknown_model", f"unknown TTS model '{config.voice.model}'"))

        stt = voice_catalog.stt_providers()
        if config.transcriber.provider not in stt:
            problems.append(
                _problem(
                    "transcriber.provider", "unknown_provider", f"unknown STT provider '{config.transcriber.provider}'"
                )
            )
        elif config.transcriber.model not in stt[config.transcriber.provider]["models"]:
            problems.append(
                _problem(
                    "transcriber.model",
                    "unknown_model",
                    f"model '{config.transcriber.model}' is not offered by '{config.transcriber.provider}'",
                )
            )

        if config.knowledge_base_ids:
            owned = self.knowledge_bases(self.session, account_id, config.knowledge_base_ids)
            for i, kb_id in enumerate(config.knowledge_base_ids):
                if kb_id not in owned:
                    problems.append(
                        _problem(
                            f"knowledge_base_ids.{i}", "unknown_knowledge_base", f"knowledge base '{kb_id}' not found"
                        )
                    )
        if config.first_message_mode == "assistant_speaks_first" and not config.first_message:
            problems.append(
                _problem("first_message", "missing", "first_message is required when the assistant speaks first")
            )
        problems += self.tool_problems(config)
        if self.configured_engines is not None:
            problems += engine_warnings(config, self.configured_engines(self.session, account_id))
        return problems

    def tool_problems(self, config: AgentConfig) -> list[dict[str, str]]:
        problems: list[dict[str, str]] = []
        for i, tool in enumerate(config.tools):
            field = f"tools.{i}.server.url"
            try:
                self.tool_url_guard.check(tool.server.url, field=field)
            except URLNotAllowed as exc:
                problems.append(_problem(field, exc.reason, exc.message))
        if config.builtin_tools.query_knowledge_base.enabled and not config.knowledge_base_ids:
            problems.append(
                _problem(
                    "builtin_tools.query_knowledge_base.enabled",
                    "no_knowledge_base",
                    "query_knowledge_base needs at least one knowledge base in knowledge_base_ids",
                )
            )
        return problems


# Objects a partial update replaces instead of merging: free-form maps whose keys the sender owns.
REPLACED_WHOLE = frozenset({"metadata", "json_schema"})


def _deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in REPLACED_WHOLE:
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class AgentService:
    def __init__(
        self, session: Session, validator: AgentValidator | None = None, *, settings: Settings | None = None
    ) -> None:
        self.session = session
        self.validator = validator or AgentValidator(
            session,
            llm_model=catalog.llm_model_lookup(settings),
            configured_engines=configured_engine_lookup(settings) if settings is not None else None,
            tool_url_guard=url_guard(settings) if settings is not None else None,
        )

    # -- reads -------------------------------------------------------------------------------
    def get(self, account_id: str, agent_id: str) -> Agent:
        return get_agent(self.session, account_id, agent_id)

    def list(
        self,
        account_id: str,
        *,
        limit: int = 20,
        cursor: str | None = None,
        status: str | None = None,
        agent_type: str | None = None,
        search: str | None = None,
    ) -> tuple[list[Agent], str | None]:
        query = select(Agent).where(Agent.account_id == account_id)
        if cursor:
            query = query.where(Agent.id < cursor)
        if status:
            query = query.where(Agent.status == status)
        if agent_type:
            query = query.where(Agent.agent_type == agent_type)
        if search:
            pattern = f"%{search.lower()}%"
            query = query.where(or_(func.lower(Agent.name).like(pattern), func.lower(Agent.description).like(pattern)))
        rows = list(self.session.scalars(query.order_by(Agent.id.desc()).limit(limit + 1)))
        next_cursor = rows[limit - 1].id if len(rows) > limit else None
        return rows[:limit], next_cursor

    def versions(self, account_id: str, agent_id: str) -> builtins.list[AgentVersion]:
        self.get(account_id, agent_id)
        return list(
            self.session.scalars(
                select(AgentVersion)
                .where(AgentVersion.agent_id == agent_id, AgentVersion.account_id == account_id)
                .order_by(AgentVersion.version.desc())
            )
        )

    def published_version(self, account_id: str, agent_id: str, version: int | None = None) -> AgentVersion:
        return published_version(self.session, account_id, agent_id, version)

    # -- writes ------------------------------------------------------------------------------
    def _checked(self, account_id: str, config: AgentConfig) -> dict[str, Any]:
        """The config to store; 422 with its errors (warnings do not stop a save: ``warnings_for`` reports them)."""
        errors = errors_of(self.validator.semantic_problems(account_id, config))
        if errors:
            raise ValidationFailedError("agent config is invalid", details=errors)
        return config.model_dump(mode="json")

    def warnings_for(self, account_id: str) -> Callable[[dict[str, Any]], builtins.list[dict[str, str]]]:
        """``config -> warnings`` for stored configs of this account: providers without a key, so another engine
        answers (the account's keys and endpoints are looked up once, however many configs are asked about)."""
        lookup = self.validator.configured_engines
        if lookup is None:
            return lambda config: []
        configured = lookup(self.session, account_id)

        def warnings(config: dict[str, Any]) -> builtins.list[dict[str, str]]:
            try:
                return engine_warnings(AgentConfig.model_validate(config), configured)
            except ValidationError:  # stored under an older schema: nothing to say about its engines
                return []

        return warnings

    def create(self, account_id: str, config: AgentConfig) -> Agent:
        data = self._checked(account_id, config)
        agent = Agent(
            id=new_id("agt"),
            account_id=account_id,
            name=config.name,
            description=config.description,
            agent_type=config.agent_type.value,
            status="draft",
            draft_config=data,
            current_version=None,
            has_undeployed_changes=True,
        )
        self.session.add(agent)
        self.session.flush()
        return agent

    def update(self, account_id: str, agent_id: str, patch: dict[str, Any]) -> Agent:
        agent = self.get(account_id, agent_id)
        merged = _deep_merge(agent.draft_config, patch)
        try:
            config = AgentConfig.model_validate(merged)
        except ValidationError as exc:
            raise ValidationFailedError("agent config is invalid", details=pydantic_problems(exc)) from exc
        data = self._checked(account_id, config)
        if data != agent.draft_config:
            agent.draft_config = data
            agent.name = config.name
            agent.description = config.description
            agent.agent_type = config.agent_type.value
            agent.has_undeployed_changes = True
            agent.updated_at = utcnow()
        return agent

    def delete(self, account_id: str, agent_id: str) -> None:
        agent = self.get(account_id, agent_id)
        self.session.delete(agent)

    def deploy(self, account_id: str, agent_id: str) -> AgentVersion:
        # Row lock on PostgreSQL so two concurrent deploys cannot claim the same version number.
        agent = self.session.scalar(
            select(Agent).where(Agent.id == agent_id, Agent.account_id == account_id).with_for_update()
        )
        if agent is None:
            raise NotFoundError("agent", agent_id)
        config = AgentConfig.model_validate(agent.draft_config)
        data = self._checked(account_id, config)
        next_version = (agent.current_version or 0) + 1
        version = AgentVersion(
            id=new_id("agv"),
            agent_id=agent.id,
            account_id=account_id,
            version=next_version,
            config=data,
        )
        self.session.add(version)
        agent.current_version = next_version
        agent.status = "deployed"
        agent.has_undeployed_changes = False
        agent.updated_at = utcnow()
        self.session.flush()
        return version

    def clone(self, account_id: str, agent_id: str, *, name: str | None = None) -> Agent:
        source = self.get(account_id, agent_id)
        config = copy.deepcopy(source.draft_config)
        config["name"] = (name or f"{source.name} (copy)")[:200]
        return self.create(account_id, AgentConfig.model_validate(config))

    @staticmethod
    def templates() -> Iterable[dict[str, Any]]:
        return TEMPLATES
