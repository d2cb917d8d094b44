"""Optional configuration file: models, prices, retries, fallbacks, timeouts, budget alerts, providers (`config.toml`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tokensense.core.model_price import ModelPrice
from tokensense.settings import Settings


class Timeouts(BaseModel):
    """Seconds an upstream attempt may take: until the answer's first byte (headers), and in all."""

    model_config = ConfigDict(extra="forbid")

    first_byte: float | None = Field(default=None, gt=0)
    total: float | None = Field(default=None, gt=0)


class RoutingConfig(BaseModel):
    """`[routing]`: retries before the first byte, and the provider-key pools' cool-downs.

    `[routing.timeouts]` maps a provider name, a model name or a model pattern
    (`gpt-4o*`) to its `Timeouts`; a model's entry wins over its provider's, field by field.
    """

    model_config = ConfigDict(extra="forbid")

    retries: int = Field(default=1, ge=0, le=10)  # retries of one model after its first attempt
    max_retry_wait: float = Field(default=30.0, ge=0)  # a longer Retry-After moves on to the next fallback
    backoff: float = Field(default=0.5, gt=0)  # the first retry's wait (doubled for each next one, with jitter)
    max_backoff: float = Field(default=8.0, gt=0)
    key_cooldown: float = Field(default=60.0, gt=0)  # a key answered 429 without Retry-After rests this long
    breaker_failures: int = Field(default=5, ge=1)  # 5xx or connection failures in a row that open a key's circuit
    breaker_cooldown: float = Field(default=30.0, gt=0)  # seconds before the half-open probe
    timeouts: dict[str, Timeouts] = Field(default_factory=dict)


class AlertsConfig(BaseModel):
    """`[alerts]`: a webhook POSTed when a key's spend crosses a fraction of its budget (once per period)."""

    webhook_url: str | None = None
    thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.8, 1.0])
    format: Literal["json", "slack"] = "json"

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("webhook_url must start with http:// or https://")
        return value or None

    @field_validator("thresholds")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < t <= 10 for t in value):
            raise ValueError("thresholds are fractions of the budget, e.g. [0.5, 0.8, 1.0] (each above 0)")
        return sorted(set(value))


class GuardsConfig(BaseModel):
    """`[guards]`: the runaway guard (docs/budgets-and-limits.md), counted in Redis when
    `TOKENSENSE_REDIS_URL` is set (every instance and worker alike), else per gateway process.

    Calls of one execution (`x-execution-id`, else the coding agent's session) are
    refused 429 `loop_detected` past `repeat_limit` identical bodies in
    `repeat_window_s` seconds, or past `max_calls_per_execution` calls.
    """

    model_config = ConfigDict(extra="forbid")

    repeat_limit: int | None = Field(default=None, ge=1)  # identical bodies an execution may send in the window
    repeat_window_s: float = Field(default=60.0, gt=0)  # the window of repeat_limit, in seconds
    max_calls_per_execution: int | None = Field(default=None, ge=1)  # calls one execution may make


class BudgetRule(BaseModel):
    """One budget on attribution (`[[budgets]]`, or `[[budgets.limits]]` beside `[budgets] reserve`).

    Exactly one of `project`, `workflow`, `source` names what it limits, or `each_execution = true`
    (every `x-execution-id` may spend at most `usd`, optionally only the runs of one `workflow`).
    """

    model_config = ConfigDict(extra="forbid")

    usd: float = Field(gt=0)  # the limit, in US dollars
    period: Literal["day", "week", "month", "total"] = "total"  # UTC calendar periods, or never reset
    project: str | None = None
    workflow: str | None = None
    source: str | None = None
    each_execution: bool = False  # a limit for every execution (run), with `workflow` for one workflow's runs

    @model_validator(mode="after")
    def _one_level(self) -> BudgetRule:
        named = [n for n in ("project", "workflow", "source") if getattr(self, n)]
        if self.each_execution:
            if set(named) - {"workflow"}:
                raise ValueError("each_execution budgets may name a workflow, not a project or source")
        elif len(named) != 1:
            raise ValueError("a budget names exactly one of project, workflow or source (or each_execution = true)")
        return self


class BudgetsConfig(BaseModel):
    """`[budgets]`: how calls reserve budget, and budgets on attribution (docs/budgets-and-limits.md).

    `reserve = "cap"` (the default) reserves each call's largest cost: a budget is never overspent.
    `reserve = "typical"` admits a call when the smaller of its own output cap and the 99th
    percentile of the model's recent outputs fits; the budget is exceeded by at most one call's excess.
    Budgets are `[[budgets]]` tables, or `[[budgets.limits]]` when `[budgets]` sets `reserve`.
    """

    model_config = ConfigDict(extra="forbid")

    reserve: Literal["cap", "typical"] = "cap"  # what a call reserves against its budgets
    limits: list[BudgetRule] = Field(default_factory=list)  # budgets on project, workflow, source, executions

    @model_validator(mode="before")
    @classmethod
    def _array_of_tables(cls, value: object) -> object:
        # `[[budgets]]` (an array of tables) is the short form of `[[budgets.limits]]`.
        if isinstance(value, list):
            return {"limits": value}
        return value


class RetentionConfig(BaseModel):
    """`[retention]`: how long raw usage records are kept (docs/analytics.md).

    `raw_days = 90`: records (and minute rollups) older than 90 days are deleted by the
    gateway, in small batches, every hour; hour rollups are kept, so reports stay exact.
    Unset (the default): records are kept for ever. `tokensense usage prune --older-than 90d`
    does the same once, by hand.
    """

    model_config = ConfigDict(extra="forbid")

    raw_days: float | None = Field(default=None, gt=0)


class PassthroughConfig(BaseModel):
    """`[passthrough]`: how passed-through paths (docs/providers.md) are paid for, by family (`vector_stores`).

    A call on a family listed in `free` is recorded at cost 0 and a key with a budget may make it; one listed
    in `priced` is priced from the `usage` its answer reports (a key with a budget may make it too). Any other
    family's calls are recorded unpriced (cost NULL) and refused to a key with a budget, except `GET` listings
    and `DELETE`s, which are free.
    """

    model_config = ConfigDict(extra="forbid")

    free: list[str] = Field(default_factory=list)
    priced: list[str] = Field(default_factory=list)

    @field_validator("free", "priced")
    @classmethod
    def _families(cls, value: list[str]) -> list[str]:
        for family in value:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", family):
                raise ValueError(f"a passthrough family is a path segment such as \"vector_stores\", got {family!r}")
        return value


"""Names a `[providers.NAME]` table may not take: they are built in and configured by their own settings."""

_PROVIDER_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,31}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_HOST = re.compile(r"^[A-Za-z0-9.\-]{1,253}(?::\d{1,5})?$")


class ProviderConfig(BaseModel):
    """One `[providers.NAME]` table.

    For any name but azure, bedrock and vertex it declares an OpenAI-compatible
    provider: `format = "openai"`, `base_url` (origin plus optional prefix, to
    which `/v1/chat/completions` etc. are appended), `api_key_env` (the variable
    holding its key; none for local servers), `model_prefixes`, `prices` (the
    genai-prices provider id, default the name), `free` (cost 0, e.g. Ollama),
    `intercept_hosts`, `responses` (it serves /v1/responses). For azure: `base_url`, `api_key_env`, `api_version`,
    `deployments`; bedrock: `region`; vertex: `project`, `location`.
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal["openai"] = "openai"
    display_name: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    model_prefixes: list[str] = Field(default_factory=list)
    prices: str | None = None
    free: bool = False
    intercept_hosts: list[str] = Field(default_factory=list)
    responses: bool = False  # it serves OpenAI's Responses API (/v1/responses and its companion routes)
    # Azure OpenAI
    api_version: str | None = None
    deployments: dict[str, str] = Field(default_factory=dict)
    # AWS Bedrock
    region: str | None = None
    # Google Vertex AI
    project: str | None = None
    location: str | None = None

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"base_url must be an http(s) origin plus an optional path prefix, got {value!r}")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _check_env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(f"api_key_env must be an environment variable name, got {value!r}")
        return value

    @field_validator("model_prefixes")
    @classmethod
    def _check_prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            if not prefix or "/" in prefix or any(c.isspace() for c in prefix):
                raise ValueError(f"a model prefix is a non-empty name start without '/' or spaces, got {prefix!r}")
        return value

    @field_validator("intercept_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not _HOST.match(host):
                raise ValueError(f"intercept_hosts entries are host names, got {host!r}")
        return [host.lower() for host in value]


def _validate_providers(providers: dict[str, ProviderConfig]) -> dict[str, ProviderConfig]:
    from tokensense.providers import builtin_provider_names, table_configured_names

    builtin, from_tables = builtin_provider_names(), table_configured_names()
    prefixes: dict[str, str] = {}
    for name, table in providers.items():
        if not _PROVIDER_NAME.match(name):
            raise ValueError(f"[providers.{name}]: a provider name is lower-case letters, digits, '-' or '_' "
                             "(at most 32), starting with a letter")
        if name in builtin and name not in from_tables:
            raise ValueError(f"[providers.{name}]: {name} is built in; set its key with `tokensense providers set "
                             f"{name}` and its URL with TOKENSENSE_{name.upper()}_BASE_URL")
        if name not in from_tables and table.base_url is None:
            raise ValueError(f"[providers.{name}]: base_url is required (e.g. https://api.example.com)")
        for prefix in table.model_prefixes:
            if prefix in prefixes:
                raise ValueError(f"[providers.{name}]: model prefix {prefix!r} is already declared by "
                                 f"[providers.{prefixes[prefix]}]")
            prefixes[prefix] = name
    return providers


class FileConfig(BaseModel):
    models: dict[str, ModelPrice] = Field(default_factory=dict)
    media_prices: dict[str, dict[str, float]] = Field(default_factory=dict)
    intercept_hosts: dict[str, str] = Field(default_factory=dict)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    # `"gpt-4o-mini" = ["claude-haiku-4-5", "gemini-2.5-flash"]`: tried in order once a model's retries are used up.
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    guards: GuardsConfig = Field(default_factory=GuardsConfig)  # the runaway guard: repeats and calls per execution
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)  # reservation mode and budgets on attribution
    passthrough: PassthroughConfig = Field(default_factory=PassthroughConfig)  # passed-through families: free, priced

    @model_validator(mode="after")
    def _check_providers(self) -> FileConfig:
        _validate_providers(self.providers)
        return self

    @field_validator("fallbacks")
    @classmethod
    def _fallbacks_are_model_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        cleaned: dict[str, list[str]] = {}
        for model, chain in value.items():
            names = [name.strip() for name in chain]
            if not model.strip() or any(not name for name in names):
                raise ValueError(f"[fallbacks] {model!r}: model names cannot be empty")
            cleaned[model.strip()] = [n for n in dict.fromkeys(names) if n != model.strip()]
        return cleaned


class ConfigError(ValueError):
    pass


def config_path(settings: Settings) -> Path:
    return settings.config_file or settings.home / "config.toml"


def load_config(settings: Settings) -> FileConfig:
    """Read `config.toml` (missing file: defaults). A bad file is a clear error."""
    path = config_path(settings)
    if not path.exists():
        return FileConfig()
    try:
        data = tomllib.loads(path.read_text())
        return FileConfig.model_validate(data)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from e
    except ValidationError as e:
        raise ConfigError(f"{path}: {describe_errors(e)}") from e


def describe_errors(error: ValidationError) -> str:
    """A validation error as one line: `where: what` for each problem, `; `-separated."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(p) for p in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)

