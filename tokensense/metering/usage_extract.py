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
