"""The voice vendor tables: one line per vendor, nothing registered on import, no numpy or SDK on import."""

from __future__ import annotations

import subprocess
import sys

from airies.core.config import Settings
from airies.voice import catalog
from airies.voice.catalog import OFFLINE_STT, OFFLINE_TTS
from airies.voice.vendors import CLOUD_VENDORS, STT_VENDORS, TTS_VENDORS


def test_every_vendor_is_in_its_table_under_its_own_name() -> None:
    for name, vendor in CLOUD_VENDORS.items():
        assert vendor.cls.name == name  # type: ignore[attr-defined]
        assert vendor.settings_keys and all(key in Settings.model_fields for key in vendor.settings_keys)
    assert set(STT_VENDORS) | {OFFLINE_STT} == set(catalog.stt_providers())
    assert set(TTS_VENDORS) | {OFFLINE_TTS} == set(catalog.tts_providers())


def test_a_vendor_is_built_from_its_key_and_settings() -> None:
    settings = Settings(azure_speech_region="westeurope")
    azure = TTS_VENDORS["azure"].build("k", settings, {})
    assert azure.base_url == "https://westeurope.tts.speech.microsoft.com"  # type: ignore[attr-defined]
    own_region = TTS_VENDORS["azure"].build("k", settings, {"region": "eastus2"})
    assert own_region.base_url == "https://eastus2.tts.speech.microsoft.com"  # type: ignore[attr-defined]


def test_the_tables_load_without_numpy_or_vendor_sdks() -> None:
    code = (
        "import sys, airies.voice.vendors, airies.voice.service\n"
        "heavy = ('numpy', 'deepgram', 'elevenlabs', 'openai', 'pocketsphinx')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_importing_the_capabilities_registers_nothing() -> None:
    """Key probes and status rows reach the provider-key registry only when the API edge installs them."""
    code = (
        "import airies.voice.factory, airies.llm.service\n"
        "from airies.accounts import provider_keys\n"
        "print(sorted(provider_keys.KEY_VALIDATORS), sorted(provider_keys.STATUS_REPORTERS))\n"
        "from airies.api.provider_keys import install_provider_key_vendors\n"
        "install_provider_key_vendors()\n"
        "print(sorted(provider_keys.KEY_VALIDATORS), sorted(provider_keys.STATUS_REPORTERS))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[] []"
    assert out[1] == (
        "['azure', 'deepgram', 'deepinfra', 'elevenlabs', 'groq', 'openai', 'pinecone', 'stripe']"
        " ['llm', 'payments', 'vectors', 'voice']"
    )
