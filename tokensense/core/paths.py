"""Upstream paths from validated parts only: a client-named model can never steer the provider URL."""

from __future__ import annotations

import re

from tokensense.core.errors import GatewayError

# One path segment of a model name: no `/`, `?`, `#`, `%` (so no percent-encodings of them either), `\`,
# `:` (Gemini's action separator), whitespace or control characters, and not `.` or `..`.
_SEGMENT = re.compile(r"[A-Za-z0-9._@+=~-]+\Z")


def path_segment(value: str, *, what: str = "model") -> str:
    """`value` if it is one safe URL path segment, else a 400 naming it."""
    if not _SEGMENT.match(value) or value in (".", "..") or len(value) > 256:
        raise GatewayError(400, f"The {what} `{_printable(value)}` is not a valid {what} name: it may contain "
                           "letters, digits and . _ - @ + = ~ only.", code="invalid_model", param="model")
    return value


def path_segments(value: str, *, what: str = "model") -> str:
    """A `/`-separated model name (fal apps: `fal-ai/flux/dev`), each segment validated."""
    return "/".join(path_segment(part, what=what) for part in value.split("/"))


def _printable(value: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in value[:80])
    return text + ("..." if len(value) > 80 else "")
