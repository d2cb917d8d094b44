"""Reading counters out of a provider's usage object: wrong types and negative values are ignored, logged once."""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(provider: str, field: str, value: Any) -> None:
    key = (provider, field)
    if key in _warned:
        return
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    # The value's type and sign only: a usage object carries no prompt text, but keep the line short.
    what = "negative" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__
    log.warning("%s reported usage field %s with a %s value; ignored (counted as 0). Logged once per field.",
                provider, field, what)


class UsageReader:
    """Reads counters from one provider's usage objects; `where` names the provider in log lines."""

    __slots__ = ("provider",)

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def count(self, obj: Any, key: str, path: str = "") -> int:
        """`obj[key]` if it is a non-negative integer; 0 if absent or null; 0 and one log line if malformed."""
        if not isinstance(obj, dict):
            return 0
        value = obj.get(key)
        if value is None:
            return 0
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, float) and value.is_integer() and value >= 0:
            return int(value)  # 12.0: a count written as a float by some serializers
        _warn_once(self.provider, f"{path}{key}", value)
        return 0

    def obj(self, parent: Any, key: str, path: str = "") -> dict[str, Any]:
        """`parent[key]` if it is an object; {} if absent or null; {} and one log line if malformed."""
        if not isinstance(parent, dict):
            return {}
        value = parent.get(key)
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
        _warn_once(self.provider, f"{path}{key}", value)
        return {}

    def items(self, parent: Any, key: str, path: str = "") -> list[dict[str, Any]]:
        """`parent[key]` if it is a list (its object items); [] otherwise, logged once if malformed."""
        if not isinstance(parent, dict):
            return []
        value = parent.get(key)
        if value is None:
            return []
        if isinstance(value, list):
            return [item for item in value if isinstance(item, dict)]
        _warn_once(self.provider, f"{path}{key}", value)
        return []

    @staticmethod
    def text(obj: Any, key: str) -> str | None:
        value = obj.get(key) if isinstance(obj, dict) else None
        return value if isinstance(value, str) and value else None


def reset_warnings() -> None:
    """Forget which fields were logged (tests)."""
    with _warned_lock:
        _warned.clear()
