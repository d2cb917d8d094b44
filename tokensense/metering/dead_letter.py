"""Where quarantined usage records go, and how many there are: no imports of the writer's (pydantic, SQLModel), so
that `tokensense usage` can warn about them and still start quickly. The writer is `spool.DeadLetters`."""

from __future__ import annotations

from pathlib import Path

DEAD_LETTER_FILE = "usage-dead-letter.jsonl"


def quarantined_count(home: Path) -> int:
    """How many records the dead-letter file under `home` holds (0 if there is none)."""
    path = home / DEAD_LETTER_FILE
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0
