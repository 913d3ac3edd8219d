"""The bridge's settings, from the environment (``VARIABLES``), as the ECS task definition sets them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

# Each setting's variable (docs/configuration.md, "Media bridge").
VARIABLES = {
    "api_ws_url": "AIRIES_BRIDGE_API_WS_URL",
    "host": "AIRIES_BRIDGE_HOST",
    "port": "AIRIES_BRIDGE_PORT",
    "path": "AIRIES_BRIDGE_PATH",
    "health_path": "AIRIES_BRIDGE_HEALTH_PATH",
    "chunk_ms": "AIRIES_BRIDGE_CHUNK_MS",
    "mark_every_ms": "AIRIES_BRIDGE_MARK_EVERY_MS",
    "barge_in_ms": "AIRIES_BRIDGE_BARGE_IN_MS",
    "backoff_ms": "AIRIES_BRIDGE_BACKOFF_MS",
    "start_timeout_s": "AIRIES_BRIDGE_START_TIMEOUT_S",
    "connect_timeout_s": "AIRIES_BRIDGE_CONNECT_TIMEOUT_S",
    "end_grace_s": "AIRIES_BRIDGE_END_GRACE_S",
    "max_calls": "AIRIES_BRIDGE_MAX_CALLS",
    "vad_aggressiveness": "AIRIES_BRIDGE_VAD_AGGRESSIVENESS",
}


class ConfigError(ValueError):
    """A setting is missing or not of its type: the bridge does not start."""


@dataclass(frozen=True)
class BridgeConfig:
    # The voice WebSocket API the bridge calls for each phone call: wss://{api-id}.execute-api.{region}
    # .amazonaws.com/{stage} on AWS, ws://127.0.0.1:8000/ws under ``make run``.
    api_ws_url: str
    host: str = "0.0.0.0"
    port: int = 8080
    path: str = "/twilio"  # Twilio's stream URL path
    health_path: str = "/health"  # the load balancer's health check
    chunk_ms: int = 200  # caller audio per protocol frame (80-250 ms)
    mark_every_ms: int = 100  # agent audio between two marks: the precision of played_ms
    barge_in_ms: int = 200  # caller speech over the agent's playing audio that interrupts it (the default when the
    backoff_ms: int = 1000  # stream's parameters do not carry the agent's own interruption settings)
    start_timeout_s: float = 10.0  # from the socket opening to Twilio's ``start``
    connect_timeout_s: float = 10.0  # opening the API connection
    end_grace_s: float = 30.0  # at most this long to let the caller hear the agent's last words after ``ended``
    max_calls: int = 25  # concurrent calls per task; more are refused (503) so the load balancer picks another
    vad_aggressiveness: int = 2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> BridgeConfig:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for item in fields(cls):
            variable = VARIABLES[item.name]
            raw = env.get(variable)
            if raw is None or raw == "":
                continue
            kind = item.type if isinstance(item.type, type) else {"int": int, "float": float}.get(str(item.type), str)
            try:
                values[item.name] = kind(raw)
            except ValueError as exc:
                raise ConfigError(f"{variable}={raw!r} is not a valid {kind.__name__}") from exc
        values.update(overrides)
        if not values.get("api_ws_url"):
            raise ConfigError(f"{VARIABLES['api_ws_url']} is required: the voice WebSocket API (wss://...)")
        config = cls(**values)
        if not config.api_ws_url.startswith(("ws://", "wss://")):
            raise ConfigError(f"{VARIABLES['api_ws_url']} must be a ws:// or wss:// URL, not {config.api_ws_url!r}")
        if not 80 <= config.chunk_ms <= 250 or config.chunk_ms % 20:
            raise ConfigError(f"{VARIABLES['chunk_ms']} must be a multiple of 20 between 80 and 250")
        if config.mark_every_ms < 20 or config.mark_every_ms % 20:
            raise ConfigError(f"{VARIABLES['mark_every_ms']} must be a multiple of 20")
        return config
