"""Local files that keep usage records the database could not take: the spool and the dead-letter file.

The spool holds records while the database is unreachable, as JSON lines in an
append-only file under `TOKENSENSE_HOME/spool/`. Each gateway process appends to
its own file and holds an exclusive `flock` on it; a file nobody holds is left
by a process that died (SIGKILL, power loss) and is adopted and replayed by the
next one to start. Replaying is idempotent (the usage table refuses a second
record with the same request_id and attempt), so a file replayed twice, or a
batch spooled after a commit whose answer was lost, still stores each record
once. The spool is bounded by size; past the bound records are dropped and
counted, with one error in the log per outage.

The dead-letter file (`TOKENSENSE_HOME/usage-dead-letter.jsonl`) holds records
the database refused for what they contain: one JSON line each, with the reason.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from tokensense.metering.dead_letter import DEAD_LETTER_FILE, quarantined_count  # noqa: F401 (re-exported)
from tokensense.storage.models import UsageCreate

log = logging.getLogger(__name__)

SPOOL_DIRECTORY = "spool"


def _private_directory(path: Path) -> None:
    if not path.exists():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)


def record_line(record: UsageCreate) -> bytes:
    """One record as a JSON line (ASCII: a lone surrogate, if one got this far, is escaped)."""
    return json.dumps(record.model_dump(mode="json"), ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


@dataclass
class SpoolFile:
    """One spool file, locked by this process: appended to (its own) or only replayed (adopted)."""

    path: Path
    handle: BinaryIO
    size: int
    replayed: int = 0  # bytes already written to the database
    records: int = 0  # records appended and not yet replayed (own file only)

    @property
    def drained(self) -> bool:
        return self.replayed >= self.size


@dataclass
class SpoolBatch:
    """Records read from a spool file, and the lines that could not be read."""

    records: list[UsageCreate]
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (line, reason)
    end: int = 0


class Spool:
    """The append-only spool of one process, plus the files adopted from processes that died."""

    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._own: SpoolFile | None = None
        self._adopted: list[SpoolFile] = []
        self.appended = 0  # records spooled by this process
        self.dropped = 0  # records refused because the spool was full
        self._full = False

    # --- appending ------------------------------------------------------------

    def append(self, records: Iterable[UsageCreate]) -> int:
        """Append records (JSON lines, flushed to the OS); return how many fit under the size bound."""
        lines = [record_line(r) for r in records]
        with self._lock:
            own = self._own or self._open_own()
            total = sum(f.size - f.replayed for f in self._files())
            kept: list[bytes] = []
            for line in lines:
                if total + len(line) > self.max_bytes:
                    break
                kept.append(line)
                total += len(line)
            if kept:
                data = b"".join(kept)
                own.handle.seek(0, os.SEEK_END)
                own.handle.write(data)
                own.handle.flush()
                own.size += len(data)
                own.records += len(kept)
                self.appended += len(kept)
            dropped = len(lines) - len(kept)
            if dropped:
                self.dropped += dropped
                if not self._full:
                    self._full = True
                    log.error("usage spool full (%s bytes, TOKENSENSE_SPOOL_MAX_MB): dropping usage records until "
                              "the database takes the spooled ones", f"{self.max_bytes:,}")
            return len(kept)

    def _open_own(self) -> SpoolFile:
        _private_directory(self.directory)
        path = self.directory / f"usage-{os.getpid()}-{time.time_ns()}.jsonl"
        handle = open(path, "a+b")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._own = SpoolFile(path, handle, 0)
        log.warning("database unavailable: spooling usage records to %s", path)
        return self._own

    # --- adopting files left by processes that died ------------------------------

    def adopt_orphans(self) -> int:
        """Lock every spool file no live process holds; return how many records they hold."""
        if not self.directory.is_dir():
            return 0
        found = 0
        with self._lock:
            held = {f.path for f in self._files()}
            for path in sorted(self.directory.glob("usage-*.jsonl"), key=lambda p: p.stat().st_mtime):
                if path in held:
                    continue
                handle = open(path, "r+b")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    handle.close()  # a live process owns it
                    continue
                size = os.fstat(handle.fileno()).st_size
                if size == 0:
                    path.unlink(missing_ok=True)
                    handle.close()
                    continue
                handle.seek(0)
                records = handle.read().count(b"\n")
                found += records
                self._adopted.append(SpoolFile(path, handle, size, records=records))
        if found:
            log.warning("found %d usage records spooled by an earlier run; writing them to the database", found)
        return found

    def adopted_records(self) -> Iterator[UsageCreate]:
        """The readable records of the adopted files not yet replayed (their spend counts before it is written)."""
        with self._lock:
            files = [(f, f.replayed, f.size) for f in self._adopted]
        for spool_file, start, size in files:
            with self._lock:
                spool_file.handle.seek(start)
                data = spool_file.handle.read(size - start)
            for line in data.splitlines():
                try:
                    yield UsageCreate.model_validate_json(line)
                except (ValidationError, ValueError):
                    continue  # quarantined when it is replayed

    # --- replaying -----------------------------------------------------------

    def _files(self) -> list[SpoolFile]:
        return [*self._adopted, *([self._own] if self._own else [])]

    @property
    def pending(self) -> bool:
        """Whether any spooled record still waits for the database."""
        with self._lock:
            return any(not f.drained for f in self._files())

    @property
    def pending_records(self) -> int:
        with self._lock:
            return sum(f.records for f in self._files())

    def read(self, max_records: int) -> tuple[SpoolFile, SpoolBatch] | None:
        """The next records to replay, oldest file first; None when nothing is pending."""
        with self._lock:
            for spool_file in self._files():
                if spool_file.drained:
                    continue
                spool_file.handle.seek(spool_file.replayed)
                batch = SpoolBatch([], end=spool_file.replayed)
                while len(batch.records) + len(batch.unreadable) < max_records and batch.end < spool_file.size:
                    line = spool_file.handle.readline(spool_file.size - batch.end)
                    if not line:
                        break
                    batch.end += len(line)
                    try:
                        batch.records.append(UsageCreate.model_validate_json(line))
                    except (ValidationError, ValueError) as e:
                        # A line cut short by a crash mid-write, or damaged on disk.
                        batch.unreadable.append((line.decode("utf-8", "replace").strip(),
                                                 f"unreadable spool line: {str(e).splitlines()[0]}"))
                return spool_file, batch
        return None

    def mark_replayed(self, spool_file: SpoolFile, batch: SpoolBatch) -> None:
        """The batch is in the database (or dead-lettered): move on, and delete a file that is done."""
        with self._lock:
            spool_file.replayed = batch.end
            spool_file.records = max(spool_file.records - len(batch.records) - len(batch.unreadable), 0)
            if spool_file.drained:
                spool_file.path.unlink(missing_ok=True)
                spool_file.handle.close()
                if spool_file is self._own:
                    self._own = None
                    self._full = False
                    log.warning("usage spool written to the database; spooling stopped")
                else:
                    self._adopted.remove(spool_file)

    def close(self) -> None:
        """Flush and release the files (what they still hold is replayed by the next start)."""
        with self._lock:
            for spool_file in self._files():
                try:
                    spool_file.handle.flush()
                    os.fsync(spool_file.handle.fileno())
                except OSError:
                    pass
                spool_file.handle.close()
            self._own = None
            self._adopted = []


class DeadLetters:
    """Records the database refused for their content, one JSON line each with the reason."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.count = 0  # quarantined by this process

    def add(self, record: UsageCreate | str, reason: str) -> None:
        entry: dict[str, object] = {"quarantined_at": datetime.now(UTC).isoformat(), "reason": reason}
        if isinstance(record, str):
            entry["raw"] = record
            request_id = "(unreadable)"
        else:
            entry["record"] = record.model_dump(mode="json")
            request_id = record.request_id
        line = json.dumps(entry, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            _private_directory(self.path.parent)
            with open(self.path, "ab") as f:
                f.write(line)
            self.count += 1
        log.error("usage record %s quarantined in %s: %s", request_id, self.path, reason)
