"""One settings model, read once per container.

Locally everything comes from the environment (``AIRIES_*`` variables, ``DATABASE_URL``).
On AWS, secrets are referenced by ARN/name and resolved through Powertools Parameters
(cached), so no secret value ever sits in a Lambda environment variable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from airies.core import aws
from airies.core.limits import AGENT_FRAME_MAX_MS

PROJECT_ROOT = Path(__file__).resolve().parents[4]
# The data files shipped inside the package (catalogs, prices): airies/data. Not the runtime Settings.data_dir.
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DEFAULT_DATA_DIR = Path.cwd() / ".data"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIRIES_", extra="ignore", populate_by_name=True)

    stage: str = "local"
    service_name: str = Field("airies", validation_alias=AliasChoices("POWERTOOLS_SERVICE_NAME", "AIRIES_SERVICE_NAME"))
    data_dir: Path = DEFAULT_DATA_DIR

    # Database: one URL picks the backend. SQLite is the embedded default.
    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL", "AIRIES_DATABASE_URL"))
    database_secret_arn: str | None = None  # Secrets Manager secret {host, port, username, password, dbname}
    # TLS to PostgreSQL (airies.core.database): verify | require | disable; unset: verify on AWS, disable locally.
    database_ssl: Literal["verify", "require", "disable"] | None = None
    database_ssl_ca_file: Path | None = None  # a CA bundle for "verify" (default: the system's CAs)
    db_pool_size: int = 1  # one connection per Lambda container; the local server raises it
    db_max_overflow: int = 2

    # Accounts and API
    allow_public_signup: bool = True
    max_request_bytes: int = 1_048_576
    api_base_path: str = "/api/v1"
    public_api_url: str = "http://127.0.0.1:8000"
    public_ws_url: str = "ws://127.0.0.1:8000/ws"
    dev_api_key: str | None = None
    # Tenant-supplied URLs (airies.core.url_guard): hosts exempt from the private-address check, comma-separated
    # host or host:port (local testing against 127.0.0.1). Never needed in production.
    url_guard_allowed_hosts: str = ""
    # The built web app (web/ -> airies/webapp/dist); unset: the files shipped inside the package.
    web_dist_dir: Path | None = None

    # AWS resources (names come from the template; moto serves them locally)
    aws_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL", "AIRIES_AWS_ENDPOINT_URL")
    )
    aws_region: str = Field(
        "us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION", "AIRIES_AWS_REGION")
    )
    storage_bucket: str = "airies-local-storage"

    # Secrets for provider keys: an SSM parameter path / Secrets Manager name on AWS
    provider_keys_secret_name: str | None = None

    # LLM providers. Keys are read as AIRIES_OPENAI_API_KEY etc. locally; on AWS, when unset,
    # from the platform secret (airies.core.secrets.get_platform_secret("openai_api_key")).
    openai_api_key: str | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    groq_api_key: str | None = None
    groq_base_url: str = "https://api.groq.com/openai/v1"
    deepinfra_api_key: str | None = None
    deepinfra_base_url: str = "https://api.deepinfra.com/v1/openai"
    # Any OpenAI-compatible endpoint (Ollama, vLLM): base URL + comma-separated models + their routing class.
    llm_custom_base_url: str | None = None
    llm_custom_api_key: str | None = None
    llm_custom_models: str = ""
    llm_custom_model_class: str = "fast"
    llm_custom_name: str = "custom"
    llm_custom_stream_usage: bool = True  # false for servers that reject stream_options (usage is then estimated)
    # Router: timeouts in seconds, circuit breaker, cross-container health flush.
    llm_connect_timeout_s: float = 2.0
    llm_first_token_timeout_s: float = 8.0
    llm_stream_idle_timeout_s: float = 15.0
    llm_breaker_failures: int = 3
    llm_breaker_cooldown_s: float = 30.0
    llm_max_retry_after_wait_s: float = 2.0
    llm_health_flush_interval_s: float = 30.0
    # Account provider keys: envelope encryption with this KMS key on AWS; a local key file otherwise.
    provider_keys_kms_key_id: str | None = None

    # Voice. Keys left empty select the offline engines (PocketSphinx STT, eSpeak NG TTS);
    # *_base_url point the official SDKs at another endpoint (the wire-level test doubles).
    deepgram_api_key: str | None = None
    deepgram_base_url: str | None = None
    elevenlabs_api_key: str | None = None
    elevenlabs_base_url: str | None = None
    whisper_api_key: str | None = None  # falls back to the platform OpenAI key
    whisper_base_url: str | None = None
    azure_speech_key: str | None = None
    azure_speech_region: str = "eastus"
    azure_speech_base_url: str | None = None  # default https://{region}.tts.speech.microsoft.com
    voice_offline_fallback: bool = True  # use the offline engine when the configured provider has no key
    voice_cache_ttl_seconds: int = 600
    voice_provider_timeout_seconds: float = 20.0
    max_transcription_seconds: int = 300
    max_tts_chars: int = 5000
    espeak_binary: str = "espeak-ng"
    # The offline fallback voice: eSpeak's Klatt variant decodes far better with PocketSphinx (docs/benchmarks.md).
    espeak_default_voice: str = "en-us+klatt2"

    # Conversations and real-time voice
    ws_state_table: str = "airies-local-ws-state"  # DynamoDB: connections, live sessions, buffered audio (TTL)
    ws_management_url: str | None = None  # post_to_connection endpoint; on AWS built from the request context
    ws_token_secret: str | None = None  # HMAC key of conversation tokens; locally derived from data_dir
    ws_token_ttl_seconds: int = 300
    ws_state_ttl_seconds: int = 7200  # API Gateway's 2-hour connection maximum
    # A call whose last connection dropped may reconnect (resume) this long; after it the call no longer counts
    # against the plan's concurrent conversations and the sweeper ends it (caller_disconnected).
    ws_resume_window_seconds: int = 30
    ws_out_chunk_ms: int = Field(AGENT_FRAME_MAX_MS, ge=100, le=AGENT_FRAME_MAX_MS)  # the largest agent audio frame
    ws_control_frames_per_second: int = 10
    ws_max_utterance_seconds: int = 30
    ws_sessions_index: str = "live-sessions"  # sparse index of live sessions by next deadline: the sweeper's Query
    ws_audio_chunk_ttl_seconds: int = 300  # caller audio chunks expire this long after they were stored
    # A container keeps a turn's engines (LLM router, STT/TTS clients, with the account's provider keys) per agent
    # version and account this long: a provider key changed over REST reaches running calls within it.
    ws_engines_ttl_seconds: int = 60
    # A voice turn stops posting this long before its invocation's deadline, and is stored (cut) and billed.
    turn_deadline_margin_ms: int = 5_000
    # Delete a turn's chunks once it used them: caller audio gone at once, for the write units of a second write
    # (docs/deployment.md, cost); off, the short TTL removes them for free.
    ws_delete_used_chunks: bool = False
    sweeper_max_sessions_per_run: int = 2000
    conversation_recordings_prefix: str = "recordings"

    # Usage, credits and billing. Without a queue URL usage is tracked in-process (direct publisher).
    usage_queue_url: str | None = None
    # Stripe: keys locally from AIRIES_STRIPE_SECRET_KEY / AIRIES_STRIPE_WEBHOOK_SECRET, on AWS through
    # get_platform_secret("stripe_secret_key" / "stripe_webhook_secret"). Without a key Stripe routes answer 501.
    stripe_secret_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None  # a local emulator (localstripe / test double), e.g. http://127.0.0.1:8420
    stripe_webhook_tolerance_s: int = 300
    stripe_max_network_retries: int = 2  # the SDK's own retries (it reuses the idempotency key)
    stripe_plan_pro: str = "airies_pro_monthly"  # Stripe plan/price id per subscription tier
    stripe_plan_enterprise: str = "airies_enterprise_monthly"
    stripe_plan_pay_as_you_go: str | None = None
    billing_event_bus: str | None = None  # EventBridge bus for invoice notifications; unset: not sent

    # Server messages (webhooks). Without a queue URL events are stored but wait for a worker (tests inject a queue).
    webhook_queue_url: str | None = None
    webhook_dead_letter_queue_url: str | None = None  # where an event lands after its last attempt
    webhook_timeout_s: float = 10.0
    webhook_max_age_s: int = 86_400  # retries stop this long after the first attempt (then failed + DLQ)
    webhook_max_client_error_attempts: int = 3  # a 4xx other than 408/410/429 is retried this often only
    webhook_retry_base_s: int = 30  # first backoff; doubles per attempt (with jitter), capped at 4 hours
    webhook_max_response_bytes: int = 65_536  # read at most this much of a receiver's answer
    # Telephony (Twilio). The platform's own Twilio account, for numbers imported without the business's own
    # credentials: the SID here, the auth token locally from AIRIES_TWILIO_AUTH_TOKEN, on AWS through
    # get_platform_secret("twilio_auth_token"). twilio_api_base points the SDK at a local double.
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_api_base: str | None = None
    twilio_timeout_s: float = 10.0
    # The media bridge's public stream URL (wss://bridge.example.com/twilio): numbers in telephony mode
    # media_stream connect their calls there. Unset: no number can use that mode.
    media_bridge_url: str | None = None

    # Knowledge bases. Defaults run offline: hashing embedder + embedded vector store, files under
    # data_dir when no documents bucket is set (moto/AWS set AIRIES_KB_DOCUMENTS_BUCKET).
    kb_documents_bucket: str | None = None
    kb_scrape_queue_url: str | None = None  # unset: scrape jobs run inline in the API process
    kb_ingestion_state_machine_arn: str | None = None  # unset: large documents are processed inline too
    # The post-call analysis (AnalysisStateMachine), started when a conversation ends; unset: a runner registered in
    # the process (the local stack) runs it, else there is none and conversation.ended is sent as the call ends.
    analysis_state_machine_arn: str | None = None
    kb_embedding_provider: str = "hashing"  # hashing (offline, lexical) | openai | minilm
    kb_embedding_model: str | None = None  # default per provider
    kb_embedding_dimensions: int | None = None  # default per model
    kb_embeddings_base_url: str | None = None  # default: openai_base_url
    kb_embeddings_max_retries: int = 3
    kb_vector_store: str = "embedded"  # embedded | pgvector | pinecone
    kb_pgvector_database_url: str | None = None  # default: the platform database
    pinecone_api_key: str | None = None
    pinecone_index_host: str | None = None  # the serverless index's host
    kb_chunk_tokens: int = 300
    kb_chunk_overlap_tokens: int = 40
    kb_max_document_bytes: int = 50 * 1024 * 1024
    kb_inline_upload_max_bytes: int = 4_000_000  # inline uploads through the API (Lambda payloads stop at 6 MB)
    kb_max_decompressed_bytes: int = 100 * 1024 * 1024  # DOCX is a zip: cap what it may expand to
    kb_max_pages: int = 2000
    kb_large_document_bytes: int = 2_000_000  # larger uploads go through the Step Functions state machine
    kb_embed_batch_chunks: int = 256  # chunks per embed+upsert step (one Map iteration)
    kb_stream_batch_chunks: int = 128  # inline path: chunks per embed+upsert while extraction goes on
    kb_presign_expires_s: int = 900
    kb_processing_lease_s: int = 900  # a "processing" document older than this may be reclaimed
    # Attempts at one document before a transient fault (or attempts that never finished) ends it failed: one less
    # than IngestionQueue's maxReceiveCount (5), so the last delivery still records the failure.
    kb_max_attempts: int = 4
    kb_scrape_max_pages: int = 50
    kb_scrape_max_depth: int = 3
    kb_scrape_timeout_s: float = 10.0
    # Older allow-list of scrape jobs only, kept as an alias: added to AIRIES_URL_GUARD_ALLOWED_HOSTS for crawling.
    kb_scrape_allowed_private_hosts: str = ""
    kb_scrape_user_agent: str = "AiriesBot/1.0 (+https://airies.ai/bot)"
    kb_agent_min_score: float = 0.1  # retrieve_for_agent drops chunks below this cosine similarity

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        if self.database_secret_arn:
            return database_url_from_secret(self.database_secret_arn)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.data_dir / 'airies.db'}"

    @property
    def on_aws(self) -> bool:
        return self.stage != "local"


SECRET_CACHE_SECONDS = 300


def _read_secret(secret_id: str, refresh: bool) -> dict[str, Any]:
    secret = aws.secrets_provider().get(secret_id, transform="json", max_age=SECRET_CACHE_SECONDS, force_fetch=refresh)
    return json.loads(secret) if isinstance(secret, str) else dict(secret)


class SecretCredentials:
    """The PostgreSQL connection parameters in a Secrets Manager secret ``{host, port, username, password,
    dbname}`` (RDS's shape), read when asked (cached 5 minutes; ``refresh`` bypasses the cache)."""

    def __init__(self, secret_id: str, read: Callable[[str, bool], dict[str, Any]] = _read_secret) -> None:
        self.secret_id = secret_id
        self._read = read

    def connect_params(self, *, refresh: bool = False) -> dict[str, Any]:
        secret = self._read(self.secret_id, refresh)
        return {
            "user": secret["username"],
            "password": secret.get("password", ""),
            "host": secret["host"],
            "port": int(secret.get("port", 5432)),
            "database": secret.get("dbname", "airies"),
        }


def database_url_from_secret(secret_id: str) -> str:
    params = SecretCredentials(secret_id).connect_params()
    user = quote(params["user"], safe="")
    password = quote(params["password"], safe="")
    return f"postgresql+pg8000://{user}:{password}@{params['host']}:{params['port']}/{params['database']}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
