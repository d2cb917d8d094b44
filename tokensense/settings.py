"""Settings read from the environment (`TOKENSENSE_*`), with the embedded defaults."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".tokensense"


class Settings(BaseSettings):
    """Everything configurable from the environment; each field is `TOKENSENSE_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="TOKENSENSE_", extra="ignore")

    home: Path = Field(default_factory=_default_home)  # SQLite database, secret key file, config.toml, spool
    database_url: str | None = None  # e.g. postgresql://user@host/db (default: SQLite in the home)
    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0: limits and budgets shared by several instances
    secret: str | None = None  # the secret provider keys are encrypted with (default: a generated secret.key file)
    upstream_timeout: float = 600.0  # seconds to wait for a provider's response headers before answering 504
    max_body_mb: float = Field(default=32.0, gt=0)  # largest JSON request body accepted (413 beyond)
    max_upload_mb: float = Field(default=25.0, gt=0)  # largest multipart upload (audio transcriptions)
    flush_interval: float = 0.25  # seconds the recorder gathers usage records into one write
    # Nothing lost (docs/operations.md, "Nothing lost"): shutdown drain, spool, Redis outages, slow clients.
    shutdown_grace: float = 10.0  # seconds in-flight calls get to finish on SIGTERM/SIGINT, then the flush
    spool_max_mb: int = 512  # bound of the usage spool (records waiting for the database)
    record_queue_max: int = 10_000  # records held in memory for the writer; past it they go to the spool
    limits_on_outage: Literal["local", "closed"] = "local"  # Redis unreachable: per-instance counters, or 503
    redis_timeout: float = 0.15  # seconds: connect and socket timeout of Redis calls
    client_idle_timeout: float = 60.0  # seconds a client connection may sit idle or half-sent
    # Days a Responses API response id stays owned by its key (and a translated conversation kept): OpenAI's 30.
    responses_ttl_days: float = Field(default=30.0, gt=0)
    # Seconds between two polls of the batch and video jobs the gateway follows (one process of a deployment polls).
    batch_poll_seconds: float = Field(default=30.0, gt=0)
    # The Responses API over WebSocket (Codex CLI); off: the handshake gets a 426 and Codex uses HTTP.
    responses_websocket: bool = True
    # Seconds a realtime session (OpenAI Realtime, Gemini Live over WebSocket) may pass without a frame either way;
    # then both sides get a close frame.
    realtime_idle_timeout: float = Field(default=300.0, gt=0)
    config_file: Path | None = None  # the config.toml to read (default: config.toml in the home)
    # Prometheus: distinct values a client-chosen label (workflow, project, model) may take before folding into `other`.
    metrics_max_label_values: int = 100
    # Opens `tokensense dashboard --web` (as do admin keys); at least 16 characters. Not passed to the dashboard's processes.
    dashboard_token: str | None = None
    # Dashboard processes `tokensense dashboard --web` runs at once (one a browser tab); a tab beyond it gets a 503 page.
    dashboard_max_processes: int = Field(default=8, ge=1)
    # Use only environment provider keys (the demo points them at its fake providers).
    ignore_stored_providers: bool = False

    # The provider's API origin plus optional path prefix (a test server, a regional endpoint); any other
    # provider's, declared in config.toml or a cloud platform, is read from TOKENSENSE_<NAME>_BASE_URL the same way.
    openai_base_url: str | None = None
    anthropic_base_url: str | None = None
    gemini_base_url: str | None = None
    xai_base_url: str | None = None
    mistral_base_url: str | None = None
    fal_base_url: str | None = None

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'tokensense.db'}"

    def base_url_override(self, provider: str) -> str | None:
        """`TOKENSENSE_<PROVIDER>_BASE_URL`: a field for the built-in ones, the environment for any other
        (providers declared in config.toml, azure, bedrock, vertex); `-` in a name is `_` in the variable."""
        value = getattr(self, f"{provider}_base_url", None)
        if value:
            return value
        return os.environ.get(f"TOKENSENSE_{provider.upper().replace('-', '_')}_BASE_URL") or None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings (read once; `reset_settings` re-reads the environment)."""
    settings = Settings()
    settings.home = Path(os.path.expanduser(settings.home))
    return settings


def reset_settings() -> None:
    get_settings.cache_clear()
