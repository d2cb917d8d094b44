"""The supervisor's hub: rate-limit and budget counters and the usage-record writer that all workers share.

`tokensense serve --workers N` runs N gateway processes. Counting a key's
requests in each of them would let a key with `--rpm 10` through N x 10 times a
minute, so the supervisor keeps the one set of counters (`MemoryCounters`, the
same decisions as one process) and answers the workers over a Unix socket under
TOKENSENSE_HOME. It also writes the usage records of every worker: a worker
hands each record to the socket as the call ends, before the answer leaves for
the client, so a worker that dies (even SIGKILL) loses no answered call's
record, and the database has one writer.

Protocol: JSON lines. A worker sends `{"op": "record", "r": {...}}` (no answer),
or `{"i": ID, "op": OP, "a": [...]}` for a counter operation and gets
`{"i": ID, "ok": RESULT}`, `{"i": ID, "err": "..."}` or, for a budget window the
hub has not seen yet, `{"i": ID, "need_spent": true}`: the worker then reads
what the key spent (`Runtime.spent_since`, which asks the hub's `settled`
operation: the database's sum plus the records the hub has not written yet,
read together) and asks again with it.
With TOKENSENSE_REDIS_URL the workers count in Redis and the hub only records.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import select
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from tokensense.gateway.limits import MemoryCounters
from tokensense.metering.hub_recorder import RECORD_PREFIX
from tokensense.metering.recorder import UsageRecorder, usage_recorder
from tokensense.settings import Settings
from tokensense.storage.models import UsageCreate
from tokensense.storage.repo import spent_since
from tokensense.storage.retention import RetentionWorker

log = logging.getLogger(__name__)

LINE_LIMIT = 16 * 2**20  # the longest line (one usage record) a worker may send


class NeedSpent(Exception):
    """The hub has no figure yet for this key's budget window: the worker must load it."""


def _retention(engine: Engine, settings: Settings | None) -> RetentionWorker | None:
    """The retention thread when config.toml sets `[retention] raw_days` (started with the hub)."""
    if settings is None:
        return None
    from tokensense.config import ConfigError, load_config

    try:
        raw_days = load_config(settings).retention.raw_days
    except ConfigError as e:
        log.warning("retention off: %s", e)
        return None
    return None if raw_days is None else RetentionWorker(engine, raw_days=raw_days)


class Hub:
    """Serves the shared counters and takes the usage records of every worker."""

    def __init__(self, path: Path, engine: Engine, *, flush_interval: float = 0.25,
                 settings: Settings | None = None) -> None:
        self.path = path
        self.counters = MemoryCounters()
        # With the settings, the gateway's own recorder: spool during outages, dead letters for bad rows.
        self.recorder = usage_recorder(engine, settings) if settings is not None else \
            UsageRecorder(engine, interval=flush_interval)
        self.records = 0
        self.retention = _retention(engine, settings)  # the hub writes the records: it prunes them too
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._on_connect, path=str(self.path), limit=LINE_LIMIT)
        os.chmod(self.path, 0o600)
        if self.retention is not None:
            self.retention.start()

    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a deadline for the drain, not a cancel scope
        """Stop listening, read what connected workers still send, then write every record."""
        if self._server is not None:
            await self._accept_pending(min(timeout, 2.0))
            self._server.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=timeout)
        for task in self._connections:
            task.cancel()
        if self.retention is not None:
            await asyncio.to_thread(self.retention.close)
        await asyncio.to_thread(self.recorder.close)
        self.path.unlink(missing_ok=True)

    async def _accept_pending(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound on the wait
        """Let the loop accept connections still waiting in the listen backlog: closing the server drops them,
        and with them the records a worker already wrote into them."""
        assert self._server is not None
        deadline = time.monotonic() + timeout
        listening = list(self._server.sockets)
        while time.monotonic() < deadline:
            readable, _, _ = select.select(listening, [], [], 0)
            if not readable:
                # An accepted connection reaches `_on_connect` some loop iterations later (asyncio's
                # `_accept_connection2` task, then `connection_made`): let those run, or close() would not
                # wait for a connection accepted just now, and its records would be lost.
                for _ in range(10):
                    await asyncio.sleep(0)
                return
            await asyncio.sleep(0.01)

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Called as the connection is accepted: its task is known to close() before it first runs.
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                reply = await self.handle(line)
                if reply is not None:
                    writer.write(reply)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            log.warning("hub: dropped a worker connection: %s", type(e).__name__)
        finally:
            writer.close()

    async def handle(self, line: bytes) -> bytes | None:
        """One message from a worker; the reply line, if the message wants one."""
        if line.startswith(RECORD_PREFIX):
            # A record as HubRecorder writes it: pydantic reads the JSON of the record itself, in one pass.
            raw = line.rstrip()
            if raw.endswith(b"}"):
                try:
                    record = UsageCreate.model_validate_json(raw[len(RECORD_PREFIX):-1])
                except ValueError:
                    pass  # not that shape after all: read below like any other message
                else:
                    self.records += 1
                    self.recorder.submit(record)
                    return None
        try:
            message = json.loads(line)
            op = message["op"]
        except (ValueError, KeyError, TypeError):
            log.warning("hub: ignored a malformed message")
            return None
        if op == "record":
            try:
                record = UsageCreate.model_validate(message["r"])
            except Exception as e:
                log.error("hub: dropped a usage record it cannot read: %s", type(e).__name__)
                return None
            self.records += 1
            self.recorder.submit(record)
            return None
        reply: dict[str, Any] = {"i": message.get("i")}
        try:
            reply["ok"] = await self._counter_op(op, message.get("a") or [])
        except NeedSpent:
            reply["need_spent"] = True
        except Exception as e:
            reply["err"] = f"{type(e).__name__}: {e}"
        return json.dumps(reply, separators=(",", ":")).encode() + b"\n"

    async def _counter_op(self, op: str, args: list) -> Any:
        counters = self.counters
        if op == "acquire_rate":
            return dataclasses.asdict(await counters.acquire_rate(*args))
        if op == "settle_tokens":
            return await counters.settle_tokens(*args)
        if op == "reserve_budget":
            key_id, window, budget, amount, spent, ttl = args
            return dataclasses.asdict(await counters.reserve_budget(key_id, window, budget, amount,
                                                                    _spent_loader(spent), ttl))
        if op == "settle_budget":
            return await counters.settle_budget(*args)
        if op == "settled":  # a worker seeding a budget: the database's sum plus the records not written yet
            key_id, since = args
            start = datetime.fromisoformat(since) if since else None
            return await asyncio.to_thread(self.recorder.settled_spend, key_id, start,
                                           partial(self._database_sum, key_id, start))
        raise ValueError(f"unknown operation {op!r}")


    def _database_sum(self, key_id: str, since: datetime | None) -> float:
        with Session(self.recorder.engine) as session:
            return spent_since(session=session, key_id=key_id, since=since)


def _spent_loader(spent: float | None):
    def load() -> float:
        if spent is None:
            raise NeedSpent
        return spent

    return load
