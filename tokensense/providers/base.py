"""The interface every provider adapter implements, and shared usage helpers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from tokensense.metering.usage import TokenUsage


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


class StreamUsage(ABC):
    """Collects usage from the SSE events of one streamed answer, as they pass."""

    @abstractmethod
    def feed(self, event: str | None, data: dict) -> None: ...

    @abstractmethod
    def result(self) -> TokenUsage: ...


class ProviderAdapter(ABC):
    """How to reach one provider and read what its answers cost."""

    name: ClassVar[str]
    display_name: ClassVar[str]
    default_base_url: ClassVar[str]
    env_key: ClassVar[str]
    prices_id: ClassVar[str]  # the provider's id in the genai-prices catalog
    model_prefixes: ClassVar[tuple[str, ...]]
    # Auth headers a client may have sent for this provider; removed before forwarding.
    auth_header: ClassVar[str]

    def owns_model(self, model: str) -> bool:
        return model.startswith(self.model_prefixes)

    @abstractmethod
    def auth_headers(self, api_key: str) -> dict[str, str]:
        """Headers that carry the provider key upstream."""

    # The key of the usage object in an unstreamed JSON answer (None: none).
    usage_key: ClassVar[bytes | None] = None

    def usage_from_object(self, usage: dict) -> TokenUsage | None:
        """Usage from the object found under `usage_key`."""
        return None

    @abstractmethod
    def usage_from_body(self, body: Any) -> TokenUsage | None:
        """Usage from an unstreamed JSON answer, or None if it reports none."""

    @abstractmethod
    def stream_usage(self) -> StreamUsage:
        """A fresh collector for one streamed answer."""

    def usage_markers(self) -> tuple[bytes, ...]:
        """Byte strings of which one occurs in every SSE event that carries usage.

        Lets the stream meter skip JSON-parsing events that cannot carry usage.
        """
        return (b'"usage', b"usageMetadata")
