"""Starting configs users can create an agent from (`GET /api/v1/agents/templates`)."""

from __future__ import annotations

from typing import Any

_VOICE = {"provider": "elevenlabs", "voice_id": "21m00Tcm4TlvDq8ikWAM"}
_STT = {"provider": "deepgram", "model": "nova-3", "language": "en"}
_LLM = {"provider": "openai", "model": "gpt-4o-mini", "temperature": 0.4, "max_tokens": 250}

_VOICE_STYLE = (
    "You are speaking on a phone call. Keep every reply to one to three short sentences, "
    "never use lists, markdown or emojis, spell out numbers the way people say them, "
    "and ask only one question at a time."
)

TEMPLATES: list[dict[str, Any]] = [
    {
        "id": "receptionist",
        "name": "Front-desk receptionist",
        "description": "Answers inbound calls, gives opening hours and directions, takes messages and routes callers.",
        "config": {
            "name": "Receptionist",
            "agent_type": "inbound",
            "system_prompt": (
                "You are the receptionist of {{business_name}}. Greet callers warmly, find out why they are "
                "calling, answer questions about opening hours, location and services, and take a message "
                "(name, phone number, reason) when a person must call back. Never invent facts you were not "
                "given; offer to take a message instead. " + _VOICE_STYLE
            ),
            "first_message": "Thank you for calling. How can I help you today?",
            "first_message_mode": "assistant_speaks_first",
            "llm": _LLM,
            "voice": _VOICE,
            "transcriber": _STT,
            "end_call_phrases": ["goodbye", "bye bye", "that's all"],
            "max_duration_seconds": 600,
            "silence_timeout_seconds": 20,
        },
    },
    {
        "id": "appointment_booking",
        "name": "Appointment booking",
        "description": "Books, moves and cancels appointments, confirming date, time and contact details.",
        "config": {
            "name": "Appointment booking",
            "agent_type": "inbound",
            "system_prompt": (
                "You book appointments for {{business_name}}. Collect, in order: the service wanted, the "
                "preferred day and time, the caller's full name and a phone number. Read the details back "
                "and ask for confirmation before finishing. If the caller wants to move or cancel, ask for "
                "the name and the current appointment time. " + _VOICE_STYLE
            ),
            "first_message": "Hi! I can help you book, move or cancel an appointment. What would you like to do?",
            "first_message_mode": "assistant_speaks_first",
            "llm": {**_LLM, "temperature": 0.2},
            "voice": _VOICE,
            "transcriber": {**_STT, "keywords": ["appointment", "reschedule", "cancel"]},
            "end_call_phrases": ["goodbye", "bye"],
            "max_duration_seconds": 900,
            "silence_timeout_seconds": 20,
        },
    },
    {
        "id": "support_knowledge_base",
        "name": "Customer support with knowledge base",
        "description": "Answers product questions from the attached knowledge base and escalates what it cannot answer.",
        "config": {
            "name": "Support agent",
            "agent_type": "inbound",
            "system_prompt": (
                "You are a customer support agent. Answer only from the knowledge-base passages you are given "
                "for each question; if they do not contain the answer, say you do not know and offer to "
                "create a ticket for a human colleague. Confirm the caller's problem is solved before ending. "
                + _VOICE_STYLE
            ),
            "first_message": "Hello, you're through to support. What can I help you with?",
            "first_message_mode": "assistant_speaks_first",
            "llm": _LLM,
            "voice": _VOICE,
            "transcriber": _STT,
            "knowledge_base_ids": [],
            "end_call_phrases": ["goodbye", "bye bye"],
            "max_duration_seconds": 1200,
        },
    },
    {
        "id": "lead_qualification",
        "name": "Lead qualification (outbound)",
        "description": "Calls inbound leads back, qualifies them on budget, authority, need and timing, and books a demo.",
        "config": {
            "name": "Lead qualifier",
            "agent_type": "outbound",
            "system_prompt": (
                "You call people who asked about {{product}}. Introduce yourself and the reason for the call, "
                "then learn their need, their timeline, whether they decide on the purchase, and their budget "
                "range. If they are a fit, offer a demo slot; if not, thank them politely. Respect a request "
                "to stop calling immediately. " + _VOICE_STYLE
            ),
            "first_message": "Hi, this is Alex from the sales team, following up on your enquiry. Is now a good time?",
            "first_message_mode": "assistant_waits_for_user",
            "llm": {**_LLM, "temperature": 0.5},
            "voice": {"provider": "elevenlabs", "voice_id": "pNInz6obpgDQGcFmaJgB"},
            "transcriber": _STT,
            "end_call_phrases": ["goodbye", "not interested", "stop calling"],
            "max_duration_seconds": 600,
            "silence_timeout_seconds": 15,
        },
    },
    {
        "id": "customer_survey",
        "name": "Customer satisfaction survey",
        "description": "Runs a short post-service survey: a 1-to-10 rating, what went well and what to improve.",
        "config": {
            "name": "Survey",
            "agent_type": "outbound",
            "system_prompt": (
                "You run a three-question survey about the caller's recent experience with {{business_name}}: "
                "first a rating from one to ten, then what went well, then what could be better. Accept short "
                "answers, do not argue, thank the caller and end the call after the third answer. " + _VOICE_STYLE
            ),
            "first_message": "Hello! Do you have one minute for three quick questions about your recent visit?",
            "first_message_mode": "assistant_speaks_first",
            "llm": {**_LLM, "temperature": 0.3},
            "voice": {"provider": "elevenlabs", "voice_id": "EXAVITQu4vr4xnSDxMaL"},
            "transcriber": _STT,
            "end_call_phrases": ["goodbye", "no thanks"],
            "max_duration_seconds": 300,
            "silence_timeout_seconds": 10,
        },
    },
    {
        "id": "offline_demo",
        "name": "Offline demo (no provider keys)",
        "description": "Runs entirely on the local engines (offline responder, PocketSphinx, eSpeak NG) for laptops and tests.",
        "config": {
            "name": "Offline demo",
            "agent_type": "web",
            "system_prompt": "You are a demo agent running on the local offline engines.",
            "first_message": "Hello, this is the Airies offline demo. How can I help?",
            "first_message_mode": "assistant_speaks_first",
            "llm": {"provider": "offline", "model": "offline-responder", "temperature": 0.0, "max_tokens": 200},
            "voice": {"provider": "espeak", "voice_id": "en-us"},
            "transcriber": {"provider": "pocketsphinx", "model": "en-us", "language": "en"},
            "end_call_phrases": ["goodbye"],
        },
    },
]
