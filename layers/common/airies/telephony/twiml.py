"""TwiML answers, built with the SDK's TwiML classes: the ConversationRelay connection of an agent's call, and the
polite refusal of a call that cannot be answered."""

from __future__ import annotations

from twilio.twiml.voice_response import Connect, Dial, VoiceResponse

from airies.agents.config import AgentConfig, welcome_greeting
from airies.telephony import media_streams

# Agent config provider -> ConversationRelay's name for it. Others (eSpeak, Azure) have no relay equivalent:
# the relay then speaks with Twilio's default voice and transcriber.
TTS_PROVIDERS = {"elevenlabs": "ElevenLabs", "google": "Google", "amazon": "Amazon"}
STT_PROVIDERS = {"deepgram": "Deepgram", "google": "Google"}
# ConversationRelay takes a BCP-47 tag with a region: a bare language gets its most common one.
DEFAULT_REGIONS = {
    "en": "en-US",
    "es": "es-ES",
    "fr": "fr-FR",
    "de": "de-DE",
    "it": "it-IT",
    "pt": "pt-BR",
    "nl": "nl-NL",
    "ja": "ja-JP",
}
MAX_HINTS = 100
UNAVAILABLE = "Sorry, this number cannot take your call right now. Please try again later. Goodbye."


def relay_language(language: str) -> str:
    return language if "-" in language else DEFAULT_REGIONS.get(language.lower(), language)


def hints(config: AgentConfig) -> str | None:
    """The phrases the agent expects (transcriber keywords) and its end-call phrases, comma-separated."""
    phrases = [p.strip() for p in (*config.transcriber.keywords, *config.end_call_phrases) if p.strip()]
    unique = list(dict.fromkeys(p.replace(",", " ") for p in phrases))[:MAX_HINTS]
    return ",".join(unique) or None


def relay_twiml(config: AgentConfig, url: str, *, first_message: str | None = None, action: str | None = None) -> str:
    """``<Connect><ConversationRelay .../></Connect>`` with the agent's greeting, language, voice, transcriber,
    hints, interruption and DTMF settings; ``action``: what the carrier requests when the relay ends (a transfer
    is dialled there)."""
    response = VoiceResponse()
    connect = Connect(action=action) if action else Connect()
    tts = TTS_PROVIDERS.get(config.voice.provider)
    connect.conversation_relay(
        url=url,
        welcome_greeting=welcome_greeting(config, first_message),
        language=relay_language(config.transcriber.language),
        tts_provider=tts,
        voice=config.voice.voice_id if tts else None,
        transcription_provider=STT_PROVIDERS.get(config.transcriber.provider),
        hints=hints(config),
        interruptible="any" if config.interruption.enabled else "none",
        dtmf_detection=True,
    )
    response.append(connect)
    return str(response.to_xml())


def dial_twiml(destination: str) -> str:
    """``<Dial>`` the destination of a transfer: a phone number, or ``<Sip>`` for a SIP URI."""
    response = VoiceResponse()
    dial = Dial()
    if destination.startswith(("sip:", "sips:")):
        dial.sip(destination)
    else:
        dial.number(destination)
    response.append(dial)
    return str(response.to_xml())


def hangup_twiml() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response.to_xml())


def unavailable_twiml(message: str = UNAVAILABLE) -> str:
    """A polite ``<Say>`` and ``<Hangup/>``: an unknown number, an unassigned one, or an account without credit."""
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response.to_xml())


def stream_twiml(config: AgentConfig, bridge_url: str, conversation_id: str, token: str) -> str:
    """``<Connect><Stream>`` to the media bridge: the conversation and its token, and the agent's barge-in settings,
    as ``<Parameter>``s (Twilio hands them to the bridge in ``start``, never in a URL). The agent speaks its first
    message itself once the bridge connects."""
    interruption = config.interruption
    # at least one of the bridge's 20 ms frames; 0: the agent cannot be interrupted
    barge_in_ms = max(round(interruption.speech_needed_ms()), 20) if interruption.enabled else 0
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=bridge_url)
    parameters = {
        media_streams.CONVERSATION_PARAMETER: conversation_id,
        media_streams.TOKEN_PARAMETER: token,
        media_streams.BARGE_IN_PARAMETER: str(barge_in_ms),
        media_streams.BACKOFF_PARAMETER: str(round(interruption.backoff_seconds * 1000)),
    }
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response.to_xml())
