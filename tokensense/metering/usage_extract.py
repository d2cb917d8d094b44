"""Reading the usage object out of a (possibly large) JSON answer without parsing all of it."""

from __future__ import annotations

import json
from typing import Any

_DECODER = json.JSONDecoder()
# Fields of which at least one must be in a real usage object, per provider format.
_USAGE_FIELDS = ("prompt_tokens", "input_tokens", "promptTokenCount", "total_tokens", "totalTokenCount")


def find_usage_object(body: bytes, key: bytes) -> dict[str, Any] | None:
    """The JSON object under the last `"<key>":` in `body`, or None.

    Embedding and image answers can be megabytes; their usage sits at the end.
    A quoted key can only occur unescaped where it is a real key (inside a JSON
    string quotes are escaped), and the object found must look like usage, so a
    mismatch falls back to None and the caller parses the whole body.
    """
    pos = body.rfind(b'"' + key + b'"')
    if pos < 0:
        return None
    colon = body.find(b":", pos + len(key) + 2)
    if colon < 0:
        return None
    text = body[colon + 1 :].lstrip()
    if not text.startswith(b"{"):
        return None
    try:
        obj, _ = _DECODER.raw_decode(text.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return None
    if isinstance(obj, dict) and any(f in obj for f in _USAGE_FIELDS):
        return obj
    return None


_TIER_KEY = b'"service_tier"'


def find_service_tier(body: bytes) -> str | None:
    """The string under the last `"service_tier":` in `body` (OpenAI puts it beside `usage`), or None."""
    pos = body.rfind(_TIER_KEY)
    if pos < 0:
        return None
    rest = body[pos + len(_TIER_KEY):pos + len(_TIER_KEY) + 64].lstrip()
    if not rest.startswith(b":"):
        return None
    rest = rest[1:].lstrip()
    if not rest.startswith(b'"'):
        return None
    end = rest.find(b'"', 1)
    if end < 0:
        return None
    tier = rest[1:end].decode("ascii", "replace")
    return tier if tier.replace("_", "").isalnum() else None


def usage_from_answer(adapter: Any, content: bytes) -> Any:
    """The usage (`TokenUsage`) in an unstreamed JSON answer of `adapter`'s provider, or None.

    Live metering and `tokensense reprice` both read answers with this, so that
    they price the same counters. The usage object is found without parsing a
    large body when possible; the answer's `service_tier` (beside `usage` in
    OpenAI answers) is read the same way.
    """
    if not content:
        return None
    if adapter.usage_key:
        obj = find_usage_object(content, adapter.usage_key)
        if obj is not None:
            usage = adapter.usage_from_object(obj)
            if usage is not None and usage.service_tier is None and (tier := find_service_tier(content)):
                usage = usage.model_copy(update={"service_tier": tier})
            return usage
    try:
        return adapter.usage_from_body(json.loads(content))
    except (ValueError, UnicodeDecodeError):
        return None


def with_request_tier(usage: Any, request: Any) -> Any:
    """`usage` with the request's `service_tier` when the answer named none (`auto` names no tier)."""
    if usage is None or usage.service_tier is not None or not isinstance(request, dict):
        return usage
    tier = request.get("service_tier")
    if isinstance(tier, str) and tier and tier != "auto":
        return usage.model_copy(update={"service_tier": tier})
    return usage
