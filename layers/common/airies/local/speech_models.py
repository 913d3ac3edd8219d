"""Local stack (``make run``) wiring of the offline recogniser: at start-up, the domain model of every agent already
deployed (by an earlier run, or before models were built at deploy) is built or found in the cache, on a background
thread so serving starts at once. Agents deployed while the stack runs get theirs from the deploy route."""

from __future__ import annotations

import sys
import threading

from airies.agents.service import prepare_deployed_agents
from airies.local.server import LocalStack, on_startup
from airies.voice.factory import speech_model_cache


@on_startup
def prepare_speech_models(stack: LocalStack) -> None:
    def prepare() -> None:
        try:
            ready = prepare_deployed_agents(speech_model_cache(stack.settings), stack.database)
        except Exception as exc:  # the stack serves without them: turns then use the general model
            print(f"speech models: {exc!r}", file=sys.stderr)
            return
        print(f"speech models: {ready} deployed agent(s) ready", flush=True)

    threading.Thread(target=prepare, name="speech-models", daemon=True).start()
