"""``make run BRIDGE=1``: the media bridge beside the local stack, on ``ws://127.0.0.1:8765/twilio`` (``BRIDGE_PORT``),
forwarding to the local voice WebSocket (``ws://127.0.0.1:{PORT}/ws``). The Makefile sets
``AIRIES_LOCAL_MEDIA_BRIDGE_PORT`` and, unless it is set already, ``AIRIES_MEDIA_BRIDGE_URL`` to the bridge's URL, so
numbers may take telephony mode ``media_stream``. Twilio itself cannot reach 127.0.0.1: put a tunnel in front and
set ``AIRIES_MEDIA_BRIDGE_URL`` to its ``wss://`` URL (docs/telephony.md)."""

from __future__ import annotations

import asyncio
import os
import threading

from airies.local.server import LocalStack, on_startup

PORT_VARIABLE = "AIRIES_LOCAL_MEDIA_BRIDGE_PORT"


@on_startup
def start_media_bridge(stack: LocalStack) -> None:
    port = os.environ.get(PORT_VARIABLE)
    if not port:
        return
    # only with BRIDGE=1: every `make run` imports this module, and the bridge brings websockets and webrtcvad
    from airies.media_bridge.config import BridgeConfig
    from airies.media_bridge.server import MediaBridge

    config = BridgeConfig.from_env(api_ws_url=f"ws://127.0.0.1:{stack.port}/ws", host="127.0.0.1", port=int(port))
    bridge = MediaBridge(config)
    thread = threading.Thread(target=asyncio.run, args=(bridge.serve_forever(),), name="media-bridge", daemon=True)
    thread.start()
    print(f"  media bridge ws://127.0.0.1:{config.port}{config.path} -> {config.api_ws_url}", flush=True)
