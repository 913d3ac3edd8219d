"""A conversation's turns over HTTP (``POST /conversations/{id}/messages`` and ``/audio``): the conversation
service with the turn pipeline, which only the API's conversation routes need."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

from airies.agents.config import AgentConfig
from airies.conversations import protocol as wp
from airies.conversations.engines import build_engines
from airies.conversations.models import ConversationTurn
from airies.conversations.service import ConversationService
from airies.conversations.turns import TurnEngines, TurnInput, TurnMode, TurnResult, TurnRunner
from airies.core.errors import BadRequestError, ConflictError
from airies.core.ids import new_id

# (config) -> engines: tests' and the local stack's doubles (the live runtime's factory also takes the session)
EnginesForConfig = Callable[[AgentConfig], TurnEngines]


class ListSink:
    """A TurnSink that collects frames (the HTTP routes: no socket, never cancelled)."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> bool:
        self.frames.append(message)
        return True

    async def cancelled(self) -> tuple[bool, int | None]:
        return False, None


class HttpTurns(ConversationService):
    """``engines``: what runs a turn (tests and the local stack inject doubles); default, the production engines of
    the conversation's account."""

    def __init__(self, *args: Any, engines: EnginesForConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engines = engines

    def engines_for(self, account_id: str, config: AgentConfig) -> TurnEngines:
        if self._engines is not None:
            return self._engines(config)
        return build_engines(self.settings, self.session, account_id, config, self.database)

    async def _http_turn(
        self,
        account_id: str,
        conversation_id: str,
        *,
        mode: TurnMode,
        text: str | None,
        pcm: bytes | None,
        speak: bool,
    ) -> tuple[ConversationTurn, TurnResult, builtins.list[dict[str, Any]]]:
        conversation = self.get(account_id, conversation_id)
        if conversation.status == "ended":
            raise ConflictError("this conversation has ended", code="conversation_ended")
        allowed, reason, message = self.check_credit(account_id)
        if not allowed:
            from airies.core.errors import PaymentRequiredError

            raise PaymentRequiredError(message or "insufficient credits", code=reason or "insufficient_credits")
        config = self.config_for(conversation)
        self.mark_active(conversation)
        runner = TurnRunner(self.engines_for(account_id, config), out_chunk_ms=self.settings.ws_out_chunk_ms)
        sink = ListSink()
        history = self.history_messages(conversation.id)
        inp = TurnInput(
            turn_id=new_id("turn"),
            seq=self.next_seq(conversation.id),
            mode=mode,
            account_id=account_id,
            conversation_id=conversation.id,
            text=text,
            pcm=pcm,
            speak=speak,
        )
        # No transaction stays open while the providers run (it would pin a pooled connection idle in
        # transaction for seconds): the reads above are committed, the turn is recorded in a new one.
        self.session.commit()
        result = await runner.run(config, history, inp, sink)
        if self.turn_metrics is not None:
            self.turn_metrics.turn(result)
        if result.status == "failed":
            from airies.core.errors import ProviderError

            err = result.error or {}
            raise ProviderError(err.get("message", "turn failed"), provider=err.get("code", "pipeline"))
        turn = self.record_turn(conversation, result)
        if result.end_call:
            self.end_conversation(account_id, conversation.id, result.end_call)
        return turn, result, sink.frames

    async def process_message(
        self, account_id: str, conversation_id: str, text: str, *, with_audio: bool = False
    ) -> tuple[ConversationTurn, TurnResult, builtins.list[dict[str, Any]]]:
        """A text turn over HTTP: the reply text (and its audio if asked)."""
        return await self._http_turn(
            account_id, conversation_id, mode=TurnMode.TEXT, text=text, pcm=None, speak=with_audio
        )

    async def handle_audio_input(
        self, account_id: str, conversation_id: str, pcm16: bytes
    ) -> tuple[ConversationTurn, TurnResult, builtins.list[dict[str, Any]]]:
        """An uploaded utterance (PCM16 16 kHz mono): transcript plus the reply's text and audio."""
        if not pcm16 or len(pcm16) % 2:
            raise BadRequestError("audio must be non-empty PCM16 (an even number of bytes)", code="bad_audio")
        limit = self.settings.ws_max_utterance_seconds * wp.SAMPLE_RATE * 2
        if len(pcm16) > limit:
            from airies.core.errors import PayloadTooLargeError

            raise PayloadTooLargeError(f"an utterance may be at most {self.settings.ws_max_utterance_seconds} s")
        return await self._http_turn(account_id, conversation_id, mode=TurnMode.AUDIO, text=None, pcm=pcm16, speak=True)
