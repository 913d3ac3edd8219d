"""Telephony modes, and the ``<Parameter>``s a Media Streams ``<Stream>`` hands the media bridge.

No imports beyond the standard library: the media bridge (its own service, not the API) reads these names too.
"""

from __future__ import annotations

from typing import Literal

RELAY = "relay"  # Twilio ConversationRelay: Twilio's STT and TTS, text over our WebSocket API (the default)
MEDIA_STREAM = "media_stream"  # Twilio Media Streams through the media bridge: the agent's own STT and voice
TelephonyMode = Literal["relay", "media_stream"]

# <Stream> parameters (Twilio sends them back in ``start.customParameters``)
CONVERSATION_PARAMETER = "conversation_id"
TOKEN_PARAMETER = "token"
BARGE_IN_PARAMETER = "barge_in_ms"  # caller speech that interrupts the agent; 0: the agent cannot be interrupted
BACKOFF_PARAMETER = "backoff_ms"  # no barge-in this soon after the agent starts to speak
