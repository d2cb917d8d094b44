"""The typed state of one call through the gateway, from request to record."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tokensense.gateway.errors import ErrorFormat
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.routing import Endpoint
from tokensense.metering.usage import TokenUsage
from tokensense.providers import OPENAI_COMPATIBLE, ProviderAdapter, StreamUsage
from tokensense.storage.models import UsageCreate


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
    media_cost: float | None = None  # images, speech, transcription: priced by the media addon
    timeout: float | None = None  # seconds the provider has to answer (upstream watchdog)
    watchdog: asyncio.TimerHandle | None = None

    @property
    def usage_chunk_added(self) -> bool:
        """Whether TokenSense asked upstream for the usage chunk the client did not ask for."""
        return (self.stream and not self.client_wants_usage and self.provider is not None
                and self.provider.name in OPENAI_COMPATIBLE)

    def mark_first_token(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()


