"""The LLM vendors, one explicit table: ``LLM_VENDORS`` (name -> provider class).

To add a vendor: one module under ``llm/vendors/`` with an ``LLMProvider`` (none for an OpenAI-compatible API: it
uses ``OpenAICompatibleProvider``) and one line here. Its platform key and endpoint are the Settings fields
``<name>_api_key`` and ``<name>_base_url``. Nothing registers itself on import. The offline responder
(``offline.py``) answers only when no vendor is configured at all.
"""

from __future__ import annotations

from airies.llm.vendors.openai_compat import OpenAICompatibleProvider

LLM_VENDORS: dict[str, type[OpenAICompatibleProvider]] = {
    "openai": OpenAICompatibleProvider,
    "groq": OpenAICompatibleProvider,
    "deepinfra": OpenAICompatibleProvider,
}
