"""A turn's engines in production: the LLM, voice, knowledge and tools capabilities behind the turn pipeline's
interfaces (``airies.conversations.turns``). The live runtime and the HTTP turns build them; nothing that only ends,
sweeps or analyses a conversation loads them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from airies.agents.config import AgentConfig
from airies.conversations.models import Conversation
from airies.conversations.turns import TurnEngines
from airies.core.config import Settings
from airies.core.url_guard import url_guard
from airies.tools.runner import ToolRunner
from airies.voice.stt.base import STTOptions, Transcript
from airies.voice.tts.base import TTSOptions


class VoiceSTT:
    """STTProvider over the voice capability's service (provider choice, account keys, offline fallback). A turn
    uses the offline recogniser's prebuilt model only: building one is deploy-time work, never a turn's."""

    def __init__(self, voice: Any, config: AgentConfig) -> None:
        self.voice = voice
        self.config = config
        self.name = config.transcriber.provider

    async def transcribe(self, pcm16: bytes, sample_rate: int, options: STTOptions) -> Transcript:
        transcript: Transcript = await self.voice.speech_to_text(
            pcm16,
            sample_rate,
            transcriber=self.config.transcriber,
            expected_phrases=options.expected_phrases,
            prebuilt_only=True,
        )
        return transcript


class VoiceTTS:
    """TTSProvider over the voice capability's service (fallback voices; reports the provider actually used)."""

    def __init__(self, voice: Any, config: AgentConfig) -> None:
        self.voice = voice
        self.config = config
        self._name = config.voice.provider

    @property
    def name(self) -> str:
        """The provider that spoke last (a fallback voice, say), else the configured one."""
        return getattr(self.voice, "last_tts_provider", None) or self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    def start_turn(self) -> None:
        """Engines kept for the next turn: the provider an earlier turn spoke with is not this turn's."""
        if getattr(self.voice, "last_tts_provider", None) is not None:
            self.voice.last_tts_provider = None

    async def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[bytes]:
        async for chunk in self.voice.text_to_speech(
            text, voice=self.config.voice, output_format=options.output_format
        ):
            yield chunk

    async def list_voices(self) -> list[Any]:
        return []


def build_engines(
    settings: Settings, session: Session | None, account_id: str, config: AgentConfig, database: Any = None
) -> TurnEngines:
    """The production engines: the LLM, voice and knowledge capabilities behind the turn pipeline's interfaces."""
    from airies.llm.service import build_llm_service
    from airies.voice.factory import build_voice_service

    llm_service = build_llm_service(settings, session=session, account_id=account_id)
    voice = build_voice_service(settings, account_id=account_id, session=session)
    retrieve = None
    if config.knowledge_base_ids:
        from airies.knowledge.service import build_knowledge_service

        knowledge = build_knowledge_service(settings, database)

        async def retrieve(account: str, kb_ids: list[str], query: str) -> list[dict[str, Any]]:
            chunks = await asyncio.to_thread(knowledge.retrieve_for_agent, account, kb_ids, query)
            return [
                {
                    "text": c.text,
                    "score": c.score,
                    "document_id": c.document_id,
                    "document_name": c.document_name,
                    "knowledge_base_id": c.knowledge_base_id,
                    "chunk_id": c.chunk_id,
                }
                for c in chunks
            ]

    tools = None
    if config.tools:
        secret = tool_secret_lookup(settings, database, account_id) if database is not None else None
        tools = ToolRunner(url_guard(settings), secret=secret)
    return TurnEngines(
        llm=llm_service.stream_response,
        stt=VoiceSTT(voice, config),
        tts=VoiceTTS(voice, config),
        retrieve=retrieve,
        tools=tools,
    )


def tool_secret_lookup(settings: Settings, database: Any, account_id: str) -> Callable[[str], str | None]:
    """(conversation id) -> the secret that signs its tool calls: its agent's server-message secret, else the
    account's (``WebhookService.signing_secret_for``); read in a unit of work of its own (it runs on a thread)."""
    from airies.webhooks.service import WebhookService

    def lookup(conversation_id: str) -> str | None:
        with database.session() as db:
            agent_id = db.scalar(
                select(Conversation.agent_id).where(
                    Conversation.id == conversation_id, Conversation.account_id == account_id
                )
            )
            return WebhookService(db, settings, queue=None).signing_secret_for(account_id, agent_id)

    return lookup
