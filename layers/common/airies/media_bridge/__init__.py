"""The media bridge: a small long-lived service (ECS Fargate on AWS) between Twilio Media Streams and the voice
WebSocket API (protocol v1).

Twilio sends one 20 ms 8 kHz μ-law frame per WebSocket message; the WebSocket API takes 80–250 ms PCM16 16 kHz
chunks, one Lambda invocation each. The bridge holds one Twilio stream and one API connection per call, turns ten
caller frames into one 200 ms chunk, and plays the agent's audio back as 20 ms μ-law frames with marks, so it
knows what the caller heard. ``messages`` is Twilio's wire format, ``call`` the per-call logic (no I/O), ``server``
the asyncio service. Not shipped in the Lambda layer's runtime path: it needs ``websockets``.
"""
