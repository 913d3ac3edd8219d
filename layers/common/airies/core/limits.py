"""Limits set by the platform's AWS services, shared by the settings that may not exceed them and the code that
works within them. Constants only: the media bridge's image imports them without the settings' dependencies."""

# The largest agent audio frame on the voice protocol: 3,000 ms of PCM16 is 96,000 bytes, 128,000 in base64, so a
# frame with its other fields is still one API Gateway message (128 KB). It is metered as four 32 KB units, what
# four 750 ms frames cost, and a long reply needs a quarter of their posts and barge-in reads.
AGENT_FRAME_MAX_MS = 3000
