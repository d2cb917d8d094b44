"""No key in any log line: every log record's message is redacted as it is formatted, whoever logged it.

mitmproxy logs request lines (a malformed one whole, with its query) and the
libraries log what they log; redacting at the record, not at each call site,
covers all of them. Keys are recognised by where they stand (`key=`, a Bearer
token, a key header) and by TokenSense's own prefix.
"""

from __future__ import annotations

import logging
import re

_PATTERNS = [
    (re.compile(r"(?i)([?&;]key=)[^&\s'\"#]+"), r"\1[redacted]"),
    (re.compile(r"(?i)(bearer\s+)[^\s'\",;]+"), r"\1[redacted]"),
    (re.compile(r"(?i)((?:x-api-key|x-goog-api-key|x-tokensense-key|api-key|authorization)['\"]?\s*[:=,]\s*['\"]?)"
                r"(?!bearer\s)[^\s'\",;]+"), r"\1[redacted]"),
    (re.compile(r"tsk_[A-Za-z0-9_\-]{6,}"), "tsk_[redacted]"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "sk-[redacted]"),
]


def redact(text: str) -> str:
    """`text` with anything that looks like a key replaced."""
    if "key" not in text.lower() and "bearer" not in text.lower() and "tsk_" not in text \
            and "sk-" not in text and "authorization" not in text.lower():
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingLogRecord(logging.LogRecord):
    def getMessage(self) -> str:
        return redact(super().getMessage())


def install() -> None:
    """Make every log record of the process redact its message (idempotent)."""
    if logging.getLogRecordFactory() is not RedactingLogRecord:
        logging.setLogRecordFactory(RedactingLogRecord)
