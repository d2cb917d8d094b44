"""Per-call state, stream metering and turning a finished call into a usage record."""

from __future__ import annotations

import functools
import json
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokensense.gateway.errors import ErrorFormat
from tokensense.gateway.keys import KeyInfo
from tokensense.metering.pricing import PriceBook
from tokensense.providers import OPENAI_COMPATIBLE, ProviderAdapter, StreamUsage
from tokensense.gateway.routing import Endpoint
from tokensense.metering.sse import EventSplitter, parse_event
from tokensense.storage.models import UsageCreate
from tokensense.metering.usage import TokenUsage

ATTRIBUTION_HEADERS = {
    "x-workflow-tag": "workflow",
    "x-step": "step",
    "x-execution-id": "execution_id",
    "x-source": "source",
    "x-project": "project",
}
_MAX_ATTRIBUTE = 200


_ATTRIBUTION_FIELDS = {header.encode(): name for header, name in ATTRIBUTION_HEADERS.items()}


def attribution(headers: Mapping[str, str], key: KeyInfo | None) -> dict[str, str | None]:
    """The attribution fields from the request headers (`x-project` else the key's project)."""
    fields: dict[str, str | None] = dict.fromkeys(ATTRIBUTION_HEADERS.values())
    raw = getattr(headers, "fields", None)
    if raw is not None:
        # mitmproxy's Headers: one pass over the raw fields costs less than five
        # lookups; repeated headers are joined with ", " as `Headers.get` does.
        for header, value in raw:
            name = _ATTRIBUTION_FIELDS.get(header.lower())
            if name is not None:
                text = value.decode("utf-8", "surrogateescape")
                fields[name] = text if fields[name] is None else f"{fields[name]}, {text}"
    else:
        for header, name in ATTRIBUTION_HEADERS.items():
            fields[name] = headers.get(header)
    for name, value in fields.items():
        if value is not None:
            fields[name] = value.strip()[:_MAX_ATTRIBUTE] or None
    if not fields["project"] and key is not None:
        fields["project"] = key.project
    return fields


def _request_id() -> str:
    # 16 hex digits like `new_id`, from the interpreter's generator (seeded from the
    # system's at start, reseeded in a forked child): a request id needs to be
    # unique, not unguessable, and os.urandom would be a system call per request.
    return f"{random.getrandbits(64):016x}"


@dataclass(slots=True)
class CallContext:
    """Everything TokenSense knows about one call, from request to record."""

    route_endpoint: Endpoint
    fmt: ErrorFormat
    path_model: str | None = None  # Gemini names the model in the path
    action: str | None = None  # Gemini `generateContent`, `streamGenerateContent`, ...
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
    recorded: bool = False
    translator: Any = None  # set by the translation addon for Anthropic/Gemini chat
    intercepted: bool = False  # made through the intercept proxy: the client's own destination and key
    requested_model: str | None = None  # the model as the client named it (`provider/model` included)
    on_record: list[Callable[[UsageCreate], None]] = field(default_factory=list)  # run once the call is recorded
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def usage_chunk_added(self) -> bool:
        """Whether TokenSense asked upstream for the usage chunk the client did not ask for."""
        return (self.stream and not self.client_wants_usage and self.provider is not None
                and self.provider.name in OPENAI_COMPATIBLE)

    def mark_first_token(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()


def with_stream_usage(call: CallContext, body: Any) -> tuple[dict[str, Any] | None, bool]:
    """(the body to send instead, or None to keep it; whether the client asked for usage itself).

    OpenAI-format chat streams report usage only with `stream_options.include_usage`:
    TokenSense asks for it (gateway and intercept mode alike), and the metering
    addon removes that extra chunk again when the client had not asked.
    """
    if not (call.stream and call.route_endpoint is Endpoint.CHAT and call.provider is not None
            and call.provider.name in OPENAI_COMPATIBLE and isinstance(body, dict)):
        return None, True
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None, True
    return {**body, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}, False


_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


@functools.lru_cache(maxsize=32)
def _usage_pattern(markers: tuple[bytes, ...]) -> re.Pattern[bytes]:
    """A marker used as a key whose value is not `null`.

    OpenAI streams with `include_usage` carry `"usage":null` in every chunk but
    the last; this finds the events worth parsing without parsing the others. A
    false match only costs a JSON parse.
    """
    return re.compile(b"(?:" + b"|".join(re.escape(m) for m in markers) + rb')[^"\s:]*+"?+\s*+:\s*+(?!null\b)')


class PassthroughStream:
    """The `flow.response.stream` callable for a passthrough SSE answer.

    Hands every complete event on as soon as it is complete, feeds the events
    that can carry usage to the provider's collector, and drops OpenAI's
    usage-only chunk when TokenSense (not the client) asked for it.
    """

    def __init__(self, call: CallContext, usage: StreamUsage, markers: tuple[bytes, ...], *,
                 drop_usage_chunk: bool, on_end: Callable[[], None] | None = None) -> None:
        self.call = call
        self.usage = usage
        self.markers = markers
        self._carries_usage = _usage_pattern(markers).search
        self.drop_usage_chunk = drop_usage_chunk
        self.splitter = EventSplitter()
        self.on_end = on_end

    def __call__(self, data: bytes) -> bytes:
        if not data:
            rest = self.splitter.rest()
            out = self._process([rest]) if rest.strip() else rest
            if self.on_end:
                self.on_end()
            return out
        self.call.mark_first_token()
        events = self.splitter.feed(data)
        if not events:
            return b""
        return self._process(events)

    def _process(self, events: list[bytes]) -> bytes:
        keep: list[bytes] = []
        carries_usage = self._carries_usage
        for raw in events:
            if carries_usage(raw):
                name, payload = parse_event(raw)
                if payload and payload[0] == "{":
                    try:
                        data = json.loads(payload)
                    except json.JSONDecodeError:
                        data = None
                    if isinstance(data, dict):
                        self.usage.feed(name, data)
                        if (self.drop_usage_chunk and not data.get("choices")
                                and _USAGE_OBJECT.search(raw)):
                            continue
            keep.append(raw)
        return b"".join(keep) if len(keep) != 1 else keep[0]


def build_record(call: CallContext, *, status: int, prices: PriceBook, media_cost: float | None = None) -> UsageCreate:
    """The usage record for a finished call, priced."""
    usage = call.usage or (call.stream_usage.result() if call.stream_usage else TokenUsage())
    cost = 0.0
    if call.provider is not None and call.model:
        cost = prices.token_cost(call.provider.prices_id, call.model, usage)
    if media_cost:
        cost += media_cost
    end = time.perf_counter()
    first = call.first_token if call.stream else call.first_byte
    return UsageCreate(
        request_id=call.request_id,
        key_id=call.key.id if call.key else None,
        key_name=call.key.name if call.key else None,
        provider=call.provider.name if call.provider else None,
        model=call.model,
        endpoint=call.route_endpoint.value,
        status=status,
        error=call.error,
        stream=call.stream,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        images=usage.images,
        characters=usage.characters,
        seconds=usage.seconds,
        cost_usd=round(cost, 10),
        latency_ms=round((end - call.started) * 1000, 3),
        ttft_ms=round((first - call.started) * 1000, 3) if first else None,
        **call.attribution,
    )
