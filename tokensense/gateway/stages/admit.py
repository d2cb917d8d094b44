"""Admit stage: what the request headers alone decide (the key, the body limit), as pure functions and a value.

The addon side (answering, having a refused body dropped) is `addons/admit.py`'s
`admit`, which the gateway's Admit addon and intercept mode both call.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokensense.core.endpoints import UPLOAD_ENDPOINTS, Endpoint
from tokensense.core.errors import GatewayError
from tokensense.gateway.keys import KeyInfo

_MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Admitted:
    """The admit stage's value: the key the call is made with (None: intercept mode without a required key),
    and how many bytes its body may have (checked while it arrives)."""

    key: KeyInfo | None
    body_limit: int


def body_limit(endpoint: Endpoint, *, max_body_mb: float, max_upload_mb: float, upload: bool = False) -> int:
    """Bytes a request body of `endpoint` may have (audio and image uploads, and `upload`s such as a passthrough's
    multipart body, have their own limit)."""
    return int((max_upload_mb if upload or endpoint in UPLOAD_ENDPOINTS else max_body_mb) * _MB)


def oversize_refusal(content_length: str, limit: int, endpoint: Endpoint, *, upload: bool = False) -> GatewayError | None:
    """A 413 when the declared Content-Length is over `limit`, before any body byte is read; None otherwise."""
    if not content_length.isdigit() or int(content_length) <= limit:
        return None
    setting = "TOKENSENSE_MAX_UPLOAD_MB" if upload or endpoint in UPLOAD_ENDPOINTS else "TOKENSENSE_MAX_BODY_MB"
    return GatewayError(413, f"The request body is {int(content_length) / _MB:.1f} MB; TokenSense accepts at most "
                        f"{limit / _MB:g} MB here ({setting}).", code="request_too_large")
