"""Request bodies parsed once, with limits: nothing a client sends can make a gate raise.

JSON is parsed with bounded integers (Python's own limit would raise deep in a
gate), no NaN/Infinity, and a bounded nesting depth. Numbers the gates read
(`max_tokens`, ...) are checked where they are read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from tokensense.core.errors import GatewayError

MAX_DEPTH = 64  # real requests nest about 10 deep (tool schemas a little more)
MAX_INT_DIGITS = 40


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise GatewayError(400, f"The request body has an integer of {len(text)} digits; TokenSense accepts at most "
                           f"{MAX_INT_DIGITS}.", code="invalid_json")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise GatewayError(400, f"The request body has a number out of range ({text[:40]}).", code="invalid_json")
    return value


def _no_constant(name: str) -> float:
    raise GatewayError(400, f"The request body has `{name}`, which is not JSON.", code="invalid_json")


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_no_constant)


def depth_of(value: Any, limit: int = MAX_DEPTH) -> int:
    """The nesting depth of a parsed JSON value (iterative: a deep value cannot exhaust the stack), capped at limit+1."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def parse_json_body(raw: bytes | None, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    if not raw:
        raise GatewayError(400, "The request body is empty; send a JSON object.", code="invalid_json")
    try:
        text = raw.decode("utf-8")
        body = _DECODER.decode(text)
    except UnicodeDecodeError:
        raise GatewayError(400, "The request body is not valid UTF-8 JSON.", code="invalid_json") from None
    except RecursionError:
        raise GatewayError(400, f"The request body is nested too deeply (at most {max_depth} levels).",
                           code="invalid_json") from None
    except json.JSONDecodeError as e:
        raise GatewayError(400, f"The request body is not valid JSON: {e}", code="invalid_json") from None
    except ValueError as e:  # numbers Python refuses to convert
        raise GatewayError(400, f"The request body has a number TokenSense cannot read: {str(e)[:120]}",
                           code="invalid_json") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.", code="invalid_json")
    if depth_of(body, max_depth) > max_depth:
        raise GatewayError(400, f"The request body is nested too deeply (at most {max_depth} levels).",
                           code="invalid_json")
    return body


def optional_token_count(body: dict[str, Any], *names: str) -> int | None:
    """The first of `names` present as a token count, validated: a whole number from 1 to 10 million, else a 400."""
    for name in names:
        if name in body and body[name] is not None:
            value = body[name]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 10_000_000:
                raise GatewayError(400, f"`{name}` must be a whole number of tokens from 1 to 10000000.",
                                   code="invalid_value", param=name)
            return value
    return None


class UploadLimit:
    """`flow.request.stream` of a streamed upload: chunks pass on untouched up to `limit` bytes; past it nothing
    more is sent and `too_large` is set (the call is answered `too_large_refusal`, 413)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.size = 0
        self.too_large = False

    def __call__(self, chunk: bytes) -> bytes:
        if self.too_large:
            return b""
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            self.too_large = True
            return b""
        return chunk

    def too_large_refusal(self) -> GatewayError:
        """The 413 of a streamed upload that went over its limit (its Content-Length did not say so in advance)."""
        return GatewayError(
            413,
            f"The upload is larger than {(self.limit or 0) / (1024 * 1024):g} MB, the most TokenSense accepts here "
            "(TOKENSENSE_MAX_UPLOAD_MB).",
            code="request_too_large",
        )
