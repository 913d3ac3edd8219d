"""One settings model, read once per container.

Locally everything comes from the environment (``AIRIES_*`` variables, ``DATABASE_URL``).
On AWS, secrets are referenced by ARN/name and resolved through Powertools Parameters
(cached), so no secret value ever sits in a Lambda environment variable.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA_DIR = Path.cwd() / ".data"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIRIES_", extra="ignore", populate_by_name=True)

    stage: str = "local"
    service_name: str = Field("airies", validation_alias=AliasChoices("POWERTOOLS_SERVICE_NAME", "AIRIES_SERVICE_NAME"))
    data_dir: Path = DEFAULT_DATA_DIR

    # Database: one URL picks the backend. SQLite is the embedded default.
    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL", "AIRIES_DATABASE_URL"))
    database_secret_arn: str | None = None  # Secrets Manager secret {host, port, username, password, dbname}
    db_pool_size: int = 1  # one connection per Lambda container; the local server raises it
    db_max_overflow: int = 2

    # Accounts and API
    allow_public_signup: bool = True
    max_request_bytes: int = 1_048_576
    api_base_path: str = "/api/v1"
    public_api_url: str = "http://127.0.0.1:8000"
    public_ws_url: str = "ws://127.0.0.1:8000/ws"
    dev_api_key: str | None = None

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


def database_url_from_secret(secret_id: str) -> str:
    # Imported here: Powertools Parameters pulls in boto3, which the local path never needs.
    from aws_lambda_powertools.utilities import parameters

    secret = parameters.get_secret(secret_id, transform="json", max_age=300)
    if isinstance(secret, str):
        secret = json.loads(secret)
    user = quote(secret["username"], safe="")
    password = quote(secret.get("password", ""), safe="")
    host = secret["host"]
    port = secret.get("port", 5432)
    name = secret.get("dbname", "airies")
    return f"postgresql+pg8000://{user}:{password}@{host}:{port}/{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
