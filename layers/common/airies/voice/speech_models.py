"""Domain language models of the offline recogniser, cached by content hash.

A model (``airies.voice.stt.pocketsphinx.DomainModel``) is built from the phrases of an agent when one of its
versions is deployed (and, under ``make run``, at start-up for the agents already deployed), never during a turn.
It is kept under its digest (a hash of the phrases' normalised words and the model format):

- on disk, ``<data_dir>/speech-models/pocketsphinx/<digest>.json`` (what a warm container or the local stack reads);
- in the storage bucket, ``accounts/<account>/speech-models/pocketsphinx/<digest>.json`` (through
  :class:`~airies.core.storage.StorageService`), for containers whose disk does not have it yet;
- in memory, per digest, once read.

:meth:`SpeechModelCache.get` reads those (never builds): a turn whose model is missing decodes with the general
model instead of waiting for a build. :meth:`SpeechModelCache.ensure` builds what is missing and stores it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from airies.core.errors import AiriesError
from airies.core.text import split_sentences
from airies.voice.configs import config_field
from airies.voice.stt.pocketsphinx import DomainModel, domain_digest

log = logging.getLogger(__name__)

ENGINE = "pocketsphinx"
MAX_MODELS_IN_MEMORY = 64
# (phrases) -> the model of those phrases, or None when none of their words can be recognised.
ModelBuilder = Callable[[Sequence[str]], DomainModel | None]

_memory: OrderedDict[str, DomainModel] = OrderedDict()  # per container: models are content-addressed
_memory_lock = threading.Lock()


def _remember(model: DomainModel) -> DomainModel:
    with _memory_lock:
        _memory[model.digest] = model
        _memory.move_to_end(model.digest)
        while len(_memory) > MAX_MODELS_IN_MEMORY:
            _memory.popitem(last=False)
    return model


def forget_models_in_memory() -> None:
    with _memory_lock:
        _memory.clear()


class SpeechModelCache:
    """Domain models by digest: memory, then ``directory``, then the account's objects in ``storage``."""

    def __init__(self, directory: Path, storage: Any = None, builder: ModelBuilder | None = None) -> None:
        self.directory = Path(directory) / ENGINE
        self.storage = storage  # a StorageService, or None (disk only)
        self.builder = builder

    @staticmethod
    def storage_key(digest: str) -> str:
        return f"speech-models/{ENGINE}/{digest}.json"

    def _path(self, digest: str) -> Path:
        return self.directory / f"{digest}.json"

    def get(self, account_id: str | None, phrases: Sequence[str]) -> DomainModel | None:
        """The stored model of these phrases, or None (no phrases, or nobody built it). Never builds."""
        digest = domain_digest(phrases)
        if digest is None:
            return None
        with _memory_lock:
            model = _memory.get(digest)
        if model is not None:
            return model
        path = self._path(digest)
        if path.exists():
            model = DomainModel.from_json(path.read_bytes())
            if model is not None and model.digest == digest:
                return _remember(model)
        if self.storage is None or account_id is None:
            return None
        try:
            data = self.storage.download(account_id, self.storage_key(digest))
        except AiriesError:  # not in the bucket (404)
            return None
        except Exception:  # the bucket is unreachable: decode with the general model rather than fail the turn
            log.exception("reading speech model %s from the storage bucket failed", digest)
            return None
        model = DomainModel.from_json(data)
        if model is None or model.digest != digest:
            return None
        self._write(model)
        return _remember(model)

    def ensure(self, account_id: str | None, phrases: Sequence[str]) -> DomainModel | None:
        """The model of these phrases, built and stored (disk and bucket) when it is missing."""
        model = self.get(account_id, phrases)
        if model is not None or self.builder is None or domain_digest(phrases) is None:
            return model
        model = self.builder(phrases)
        if model is None:
            return None
        self._write(model)
        if self.storage is not None and account_id is not None:
            try:
                self.storage.upload_bytes(
                    account_id, self.storage_key(model.digest), model.to_json(), content_type="application/json"
                )
            except Exception:  # the disk copy serves this container; others fall back to the general model
                log.exception("storing speech model %s in the storage bucket failed", model.digest)
        return _remember(model)

    def _write(self, model: DomainModel) -> None:
        """Write through a temporary file: a concurrent reader never sees half a model. A disk that cannot be
        written (a read-only file system) leaves the model in memory only."""
        path = self._path(model.digest)
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(model.to_json())
            partial.replace(path)
        except OSError:
            log.warning("could not write speech model %s to %s", model.digest, self.directory, exc_info=True)


def domain_phrases(expected_phrases: Sequence[str], keywords: Sequence[str]) -> list[str]:
    """What the offline recogniser's domain model is built from: the expected phrases and the keywords."""
    return [*expected_phrases, *keywords]


def prepare_speech_model(cache: SpeechModelCache, account_id: str, config: Any) -> bool:
    """Build (or find) the offline recogniser's model of an agent config, as its turns will ask for it. Never
    raises: without a model the agent's turns decode with the general model. True when a model is ready."""
    if not offline_stt_available():  # the Lambda layer ships no PocketSphinx: its calls use a cloud recogniser
        return False
    phrases = domain_phrases(
        expected_phrases_for_agent(config),
        tuple(config_field(config_field(config, "transcriber"), "keywords", None) or ()),
    )
    try:
        return cache.ensure(account_id, phrases) is not None
    except Exception:
        log.exception("building the speech model of an agent of %s failed", account_id)
        return False


def expected_phrases_for_agent(config: Any) -> tuple[str, ...]:
    """Domain text for the offline recogniser from an agent config: what the caller is likely to say
    (keywords, end-call and interruption phrases) and the words of the conversation (first message, prompt)."""
    phrases: list[str] = []
    phrases += list(config_field(config_field(config, "metadata"), "expected_phrases", None) or [])
    phrases += list(config_field(config_field(config, "transcriber"), "keywords", None) or [])
    phrases += list(config_field(config, "end_call_phrases", None) or [])
    interruption = config_field(config, "interruption")
    phrases += list(config_field(interruption, "acknowledgement_phrases", None) or [])
    phrases += list(config_field(interruption, "interruption_phrases", None) or [])
    for text in (config_field(config, "first_message"), config_field(config, "system_prompt")):
        if text:
            phrases += split_sentences(str(text))[:200]
    seen: set[str] = set()
    return tuple(p for p in phrases if p and not (p in seen or seen.add(p)))


def offline_stt_available() -> bool:
    """PocketSphinx is importable (checked without importing it: it loads a 40 MB model on first use)."""
    return importlib.util.find_spec("pocketsphinx") is not None
