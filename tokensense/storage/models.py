"""SQLModel tables: TokenSense keys, provider credentials and usage records."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import JSON, BigInteger, Column, Float, Index, Integer, LargeBinary, SmallInteger, String, false
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Now, timezone-aware in UTC (SQLModel stores aware datetimes)."""
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex[:16]


class ApiKeyBase(SQLModel):
    name: str = Field(index=True, unique=True)
    budget_usd: float | None = None
    budget_period: str = "total"  # total | monthly | daily
    max_call_usd: float | None = None  # the largest cost one call may have (its reservation), refused 402 above
    rpm: int | None = None
    tpm: int | None = None
    plan: str | None = None  # free | pro | enterprise
    allowed_models: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list))
    allowed_providers: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list))
    # The endpoints it may call (patterns: `chat.completions`, `vector_stores`, `responses*`); empty: any.
    allowed_endpoints: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list,
                                                                                server_default="[]"))
    project: str | None = None
    # May read every record: opens `tokensense dashboard --web` (the browser dashboard).
    admin: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class ApiKey(ApiKeyBase, table=True):
    """A TokenSense key (`tsk_...`). Only the SHA-256 of the key is stored."""

    __tablename__ = "api_keys"

    id: str = Field(default_factory=new_id, primary_key=True)
    key_hash: str = Field(index=True, unique=True)
    key_prefix: str  # first characters, for display only
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None
    updated_at: datetime | None = None  # when its limits were last changed; None if never


DEFAULT_KEY_NAME = "default"


class ProviderCredential(SQLModel, table=True):
    """A provider API key, encrypted at rest (Fernet), and an optional base URL.

    A provider has a pool of keys told apart by `name`. A key the provider refused
    (401/403) is taken out (`disabled_at`, `disabled_reason`) until an operator
    restores it (`tokensense providers restore`) or stores a new value under its name.
    """

    __tablename__ = "provider_credentials"

    provider: str = Field(primary_key=True)
    name: str = Field(default=DEFAULT_KEY_NAME, primary_key=True, sa_column_kwargs={"server_default": DEFAULT_KEY_NAME})
    encrypted_key: str
    base_url: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    disabled_at: datetime | None = None
    disabled_reason: str | None = None


class UsageBase(SQLModel):
    request_id: str = Field(default_factory=new_id)
    attempt: int = Field(default=1, sa_column_kwargs={"server_default": "1"})  # upstream attempt of the call (retries and fallbacks each write one record)
    key_id: str | None = Field(default=None, index=True)
    key_name: str | None = None
    provider: str | None = Field(default=None, index=True)
    model: str | None = Field(default=None, index=True)
    endpoint: str = ""
    status: int = 0
    error: str | None = None
    stream: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    images: int = 0
    characters: int = 0
    seconds: float = 0.0
    # None: the catalog could not price the call (unpriced, not free). The column has no default of its
    # own: SQLAlchemy replaces an explicit None by a column default, which would record unpriced as $0.
    cost_usd: float | None = Field(default=0.0, sa_column=Column(Float, nullable=True))
    latency_ms: float | None = None
    ttft_ms: float | None = None
    workflow: str | None = Field(default=None, index=True)
    step: str | None = None
    execution_id: str | None = None
    source: str | None = None
    project: str | None = Field(default=None, index=True)
    details: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))  # every billable counter reported


class UsageCreate(UsageBase):
    created_at: datetime = Field(default_factory=utcnow)


class Usage(UsageBase, table=True):
    """One call through TokenSense: who made it, what it used, what it cost."""

    __tablename__ = "usage"
    # Each schema change here needs a migration in tokensense/storage/migrations/versions (docs/migrations.md).
    __table_args__ = (
        Index("ix_usage_key_id_created_at", "key_id", "created_at"),  # a key's spend in its budget period
        # The dashboard's drill-down from a step to its executions reads records (no rollup has execution ids).
        Index("ix_usage_workflow_step_created_at", "workflow", "step", "created_at"),
        Index("ux_usage_request_id_attempt", "request_id", "attempt", unique=True),  # one record per attempt
        # An execution's spend (each-execution budgets): no rollup has execution ids.
        Index("ix_usage_execution_id_created_at", "execution_id", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)


class UsageRollup(SQLModel, table=True):
    """Sums of the usage records of one time bucket and one combination of attribution values (docs/analytics.md).

    `cut` says which fields the row is grouped by (`tokensense.storage.rollups.CUTS`); the other
    attribution columns are NULL. `dims_key` spells the cut's values, NULL told apart from any
    string, so that the primary key finds the row to add to (a plain unique index treats NULLs as
    distinct). Sums are integers: cost in 1e-10 USD, latencies and media seconds in microseconds,
    so that adding batches in any order, from any instance, gives the same totals as the records.
    """

    __tablename__ = "usage_rollup"
    __table_args__ = {"sqlite_with_rowid": False}  # rows stored in key order: a window is one range read

    cut: int = Field(sa_column=Column(SmallInteger, primary_key=True, autoincrement=False))
    grain: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))  # seconds: 60 or 3600
    bucket: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))  # UTC epoch seconds
    dims_key: str = Field(sa_column=Column(String, primary_key=True))
    key_id: str | None = None
    key_name: str | None = None
    project: str | None = None
    workflow: str | None = None
    step: str | None = None
    source: str | None = None
    provider: str | None = None
    model: str | None = None
    endpoint: str | None = None
    status: int | None = None
    requests: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    errors: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    unpriced: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    output_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cached_input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cache_write_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    reasoning_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    images: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    characters: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    seconds_us: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cost_units: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))  # 1e-10 USD
    latency_count: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    latency_us: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    ttft_count: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    ttft_us: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class UsageRetention(SQLModel, table=True):
    """How far raw usage records (and minute rollups) were pruned: one row, id 1 (docs/analytics.md)."""

    __tablename__ = "usage_retention"

    id: int = Field(default=1, primary_key=True)
    raw_before: int = Field(sa_column=Column(BigInteger, nullable=False))  # UTC epoch seconds, a whole hour
    pruned_at: datetime = Field(default_factory=utcnow)


BUDGET_LEVELS: tuple[str, ...] = ("project", "workflow", "source", "execution")
"""What a budget on attribution limits (a key's own budget is on its row in `api_keys`)."""
BUDGET_PERIODS: tuple[str, ...] = ("day", "week", "month", "total")
"""UTC calendar periods (weeks start on Monday), or `total`: never resets."""


class Budget(SQLModel, table=True):
    """A budget on attribution, set with `tokensense budgets set` (docs/budgets-and-limits.md).

    `level` is project, workflow or source with `name` the value it limits; or `execution`: every
    execution (`x-execution-id`) may spend at most `usd` in the period, `name` NULL for every run, or a
    workflow's name for that workflow's runs only. One row per (level, name, period).
    """

    __tablename__ = "budgets"

    id: str = Field(default_factory=new_id, primary_key=True)
    level: str = Field(index=True)
    name: str | None = None
    usd: float
    period: str = "total"
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class StoredResponse(SQLModel, table=True):
    """A Responses API response made through TokenSense: which key owns it, and what a translated one said.

    Every response id a provider hands out through the gateway is recorded, so that only the key that
    made it can read, delete, cancel or continue it (`previous_response_id`). For responses TokenSense
    translated (Claude, Gemini) `items` keeps the turn's input items and output items, from which the
    conversation behind a `previous_response_id` is rebuilt, and `response` the answer itself (served again
    by `GET /v1/responses/{id}`); passthrough responses leave both NULL (the provider stores them).
    """

    __tablename__ = "stored_responses"

    id: str = Field(primary_key=True)  # the response id (`resp_...`)
    key_id: str | None = Field(default=None, index=True)
    provider: str
    model: str | None = None
    previous_response_id: str | None = None
    items: list | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    response: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))  # a translated answer, for GET
    created_at: datetime = Field(default_factory=utcnow, index=True)


class BatchFile(SQLModel, table=True):
    """A file uploaded through TokenSense (`POST /v1/files`): the key that owns it, and what its lines ask for.

    `lines` sums the requests of a batch input file as it streamed past, by model
    (`{"models": {model: {"lines", "input_tokens", "output_tokens"}}, "lines": n}`): the
    reservation of a job made from it, without reading the file back.
    """

    __tablename__ = "batch_files"

    id: str = Field(primary_key=True)  # the provider's file id
    provider: str
    key_id: str | None = Field(default=None, index=True)
    purpose: str | None = None
    lines: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow)


class BatchJob(SQLModel, table=True):
    """A batch job created through TokenSense, followed until each of its result lines is booked once.

    The create call's key and attribution go to every line's record; `reserved_usd` is the job's largest
    cost, held against the key's budget (`budget_window`) until `booked_at`, when the lines' records replace it.
    """

    __tablename__ = "batch_jobs"

    id: str = Field(primary_key=True)  # the provider's job id
    provider: str
    key_id: str | None = Field(default=None, index=True)
    key_name: str | None = None
    endpoint: str | None = None  # what the lines call (`/v1/chat/completions`, `messages`, ...)
    models: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list))
    state: str = "created"  # the provider's last word on it
    files: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list))
    input_file_id: str | None = None
    workflow: str | None = None
    step: str | None = None
    execution_id: str | None = None
    source: str | None = None
    project: str | None = None
    reserved_usd: float = 0.0
    budget_window: str | None = None
    lines_booked: int = 0
    booked_usd: float | None = None
    error: str | None = None  # why the follower could not book it yet (last failure)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    polled_at: datetime | None = None
    booked_at: datetime | None = Field(default=None, index=True)  # None: still followed


class Lease(SQLModel, table=True):
    """A task only one process of a deployment runs (the batch follower): who holds it, until when."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True)
    holder: str
    expires_at: float  # UTC epoch seconds


class UploadSession(SQLModel, table=True):
    """A resumable upload started through TokenSense: its token (in the session URL handed to the client) stands
    for the key that started it. The input scanner's state is saved after each of its requests, so the next one may
    land on any worker or instance of the deployment."""

    __tablename__ = "upload_sessions"

    token: str = Field(primary_key=True)
    provider: str
    key_id: str
    upload_id: str  # the provider's
    attribution: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    size_limit: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    scanner: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))  # summary, size, unreadable
    partial: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))  # an unfinished line
    expires_at: float = Field(index=True)  # UTC epoch seconds


class OwnedResource(SQLModel, table=True):
    """A provider object made through TokenSense whose cost is booked apart from the call that made it: an
    OpenAI video job (booked once, when it is seen completed), a Gemini context cache (its storage, booked by
    the create and by each update that extends it).

    Only the key that made it may read, update or delete it (another key gets 404, as if it did not exist).
    `booked_at` is set once, by the one gateway instance whose update finds it NULL: a job is booked exactly
    once, whoever sees it completed, across retrieves, restarts and instances.
    """

    __tablename__ = "owned_resources"

    id: str = Field(primary_key=True)  # the provider's id (`video_...`, `cachedContents/...`)
    kind: str  # the endpoint id of the call that made it (`videos`, `cached_contents`): its booked record's endpoint
    key_id: str | None = Field(default=None, index=True)
    provider: str
    model: str | None = None
    attribution: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))  # of the creating call
    state: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))  # seconds and size, expire time
    created_at: datetime = Field(default_factory=utcnow, index=True)
    booked_at: datetime | None = None
