"""Cleaning strings that clients or upstreams control before they go into a usage record.

A record must be storable whatever a client sends: an attribution header with a
byte that is not UTF-8, a model name with a lone surrogate or a NUL, a megabyte
of text. Each such value is made valid UTF-8 (bad bytes and lone surrogates
become U+FFFD), loses its control characters (tabs and line breaks become a
space) and is cut to a length cap.
"""

from __future__ import annotations

import re

MAX_ATTRIBUTE = 200  # workflow, step, execution id, source, project
MAX_NAME = 200  # model, provider, key name
MAX_ERROR = 300  # the error message kept in a record

_SURROGATES = re.compile("[\ud800-\udfff]")
_LINE_BREAKS = re.compile("[\t\n\r\x0b\x0c\x85\u2028\u2029]+")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def clean_text(value: str | bytes | None, max_length: int) -> str | None:
    """`value` as valid UTF-8 text without control characters, stripped, at most `max_length` long.

    Bytes are decoded as UTF-8 with bad bytes replaced (never `surrogateescape`,
    whose lone surrogates no database driver can encode). None, or nothing left
    after cleaning, gives None.
    """
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    elif not isinstance(value, str):
        value = str(value)
    if not (value.isascii() and value.isprintable()):
        value = _SURROGATES.sub("\ufffd", value)
        value = _LINE_BREAKS.sub(" ", value)
        value = _CONTROLS.sub("", value)
    value = value.strip()[:max_length].strip()
    return value or None
