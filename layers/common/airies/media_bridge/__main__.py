"""``python -m airies.media_bridge``: run the bridge with its settings from the environment (``AIRIES_BRIDGE_*``)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from airies.media_bridge.config import BridgeConfig, ConfigError
from airies.media_bridge.server import MediaBridge


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("AIRIES_BRIDGE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # websockets logs every handshake at INFO, the load balancer's health checks ("connection rejected (200 OK)")
    # included; the bridge logs each call itself.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        config = BridgeConfig.from_env()
    except ConfigError as exc:
        print(f"media bridge: {exc}", file=sys.stderr)
        return 2
    asyncio.run(MediaBridge(config).serve_forever())
    return 0


if __name__ == "__main__":
    sys.exit(main())
