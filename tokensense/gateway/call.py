"""The typed state of one call through the gateway, from request to record."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape
from tokensense.core.usage import TokenUsage
from tokensense.gateway.forward import PendingUpstream
from tokensense.gateway.keys import KeyInfo
from tokensense.providers import ProviderAdapter, Route, StreamUsage, Translator
from tokensense.storage.models import UsageCreate

if TYPE_CHECKING:
    from tokensense.gateway.stages.parse import Parsed
    from tokensense.gateway.stages.police import Policed


def _request_id() -> str:
    # 16 hex digits like `new_id`, from the interpreter's generator (seeded from the
    # system's at start, reseeded in a forked child): a request id needs to be
    # unique, not unguessable, and os.urandom would be a system call per request.
    return f"{random.getrandbits(64):016x}"


class Record(Enum):
    """Where the call's own usage record stands; only the settle stage (gateway/stages/settle.py) writes it."""

    DUE = "due"  # to be written when the call ends
    NONE = "none"  # not a provider call (health, model list, a WebSocket handshake, nobody to attribute it to)
    DEFERRED = "deferred"  # written by the settle stage once the provider has counted the input
    WRITTEN = "written"


@dataclass(slots=True)
class CallContext:
    """Everything TokenSense knows about one call, from request to record."""

    route_endpoint: Endpoint
    fmt: ErrorShape  # the error shape of the route's clients
    path_model: str | None = None  # the model the path names (`models/{model}:{action}`, `/model/{id}/...`)
    action: str | None = None  # the path's action (`generateContent`, `converse-stream`, ...)
    version: str | None = None  # the API version in the path
    resource: str | None = None  # the response id or model id the path names (`/v1/responses/{id}`)
    path_provider: str | None = None  # the provider the path names (the cloud platforms' own paths)
    path_params: tuple[tuple[str, str], ...] | None = None  # other path parts that provider needs upstream
    method: str = "POST"
    route: Route | None = None  # the route the path matched: the properties the pipeline branches on
    started: float = field(default_factory=time.perf_counter)
    request_id: str = field(default_factory=_request_id)
    key: KeyInfo | None = None
    provider: ProviderAdapter | None = None
    model: str | None = None
    stream: bool = False
    client_wants_usage: bool = True
    attribution: dict[str, str | None] = field(default_factory=dict)
    first_byte: float | None = None
    first_token: float | None = None
    stream_usage: StreamUsage | None = None
    usage: TokenUsage | None = None
    error: str | None = None
    status: int | None = None
    timed_out: bool = False
    record_state: Record = Record.DUE
    translator: Translator | None = None  # OpenAI-format chat translated to the provider's format
    sent_body: dict[str, Any] | None = None  # the JSON body as it goes upstream (the policy reserves from it)
    pending: PendingUpstream | None = None  # the upstream request, applied by the forward stage
    parsed: Parsed | None = None  # the parse stage's value of the first attempt (routed calls; fallbacks start from it)
    policed: Policed | None = None  # the police stage's value (`passed`: the call may go; else what it holds)
    forwarded: bool = False  # the forward stage pointed the flow at the provider
    intercepted: bool = False  # made through the intercept proxy: the client's own destination and key
    requested_model: str | None = None  # the model as the client named it (`provider/model` included)
    on_record: list[Callable[[UsageCreate], None]] = field(default_factory=list)  # run once the call is recorded
    media_cost: float | None = None  # images, speech, transcription: priced by the media addon
    media_priced: bool = False  # priced by the media table, not the catalog (owned resources: videos, caches)
    reserve_usd: float | None = None  # a job's expected cost (a video): its budget reservation and cost cap
    free: bool = False  # the provider charges nothing for this call (count_tokens): recorded at cost 0, not policed by budget
    usage_unknown: bool = False  # tokens were used but could not be counted: recorded unpriced (cost NULL)
    timeout: float | None = None  # seconds the provider has to answer (upstream watchdog)
    watchdog: asyncio.TimerHandle | None = None
    # Retries and fallbacks (tokensense/gateway/reliability.py):
    transport: str | None = None  # "websocket": a response of the Responses WebSocket (addons/responses_ws.py)
    details: dict[str, Any] | None = None  # added to its record's details (why a cut realtime response cost what)
    attempt: int = 1  # the upstream attempt this call's own record is (retries and fallbacks record the others)
    provider_key: str | None = None  # the name of the provider key (of the provider's pool) the attempt used
    fallbacks: tuple[str, ...] | None = None  # the x-tokensense-fallbacks header's models (None: no header)
    max_cost_usd: float | None = None  # the x-tokensense-max-cost-usd header: the largest cost an attempt may have
    # Run with the record of each failed attempt a retry or fallback followed (observers: metrics, spans);
    # `on_record` runs once, with the call's own record (the last attempt's).
    on_attempt_record: list[Callable[[UsageCreate], None]] = field(default_factory=list)

    @classmethod
    def of_route(cls, route: Route, *, method: str = "POST", fmt: ErrorShape | None = None) -> CallContext:
        """The context of a call on `route` (the parts its path named, its error shape unless `fmt`)."""
        return cls(route.endpoint, fmt or route.fmt, path_model=route.model, action=route.action,
                   version=route.version, resource=route.resource, path_provider=route.provider,
                   path_params=route.params, method=method, route=route, free=route.free)

    @property
    def recorded(self) -> bool:
        """The call's own record is written, deferred, or not due at all: no hook may write it."""
        return self.record_state is not Record.DUE

    @property
    def may_send(self) -> bool:
        """The police stage passed this call: the send stage may point it upstream."""
        return self.policed is not None and self.policed.passed

    @property
    def usage_chunk_added(self) -> bool:
        """Whether TokenSense asked upstream for the usage chunk the client did not ask for."""
        return (self.stream and not self.client_wants_usage and self.provider is not None
                and self.provider.usage_chunk_on_request)

    def protocol_error(self, status: int, message: str) -> tuple[int, str, str]:
        """(status, message, code) for an error mitmproxy met on this call (its HTML page is replaced by JSON)."""
        if self.timed_out:
            status, text = 504, f"The provider did not answer within {self.timeout or 0:g} seconds."
        elif status == 413 and self.error:
            text = self.error
        elif self.forwarded:
            provider = self.provider.display_name if self.provider else "the provider"
            text = f"TokenSense could not get an answer from {provider}: {message}"
        else:
            text = "TokenSense could not read the request."
        self.status, self.error = status, text
        code = {504: "upstream_timeout", 413: "request_too_large"}.get(status, "upstream_error" if status >= 500
                                                                          else "bad_request")
        return status, text, code

    def mark_first_token(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()


