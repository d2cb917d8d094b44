"""The counters a gateway process uses (`make_counters`), and those of a worker of `serve --workers N`.

The supervisor sets TOKENSENSE_HUB_SOCKET for its workers; `make_counters`
then returns a `SharedCounters` (unless Redis is configured), which implements the `CounterStore` protocol
by asking the hub (`tokensense/gateway/hub.py`) over one Unix-socket connection
per worker, several questions in flight at once. Every decision is taken in the
hub by one `MemoryCounters`, so a limit holds across all workers exactly as in
one process. If the hub cannot be reached, the calls raise `ConnectionError`,
like Redis being down, and the policy treats it the same way.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Callable
from typing import Any

from tokensense.gateway.limits import (
    BudgetDecision,
    CounterStore,
    MemoryCounters,
    RateDecision,
    RedisCounters,
    ResilientCounters,
)

HUB_SOCKET_ENV = "TOKENSENSE_HUB_SOCKET"
REPLY_TIMEOUT = 10.0  # seconds; the hub answers from memory in well under a millisecond


def hub_socket_from_env() -> str | None:
    """The hub's socket path when this process is a worker of a supervisor, else None."""
    return os.environ.get(HUB_SOCKET_ENV) or None


def make_counters(redis_url: str | None, settings: object | None = None) -> CounterStore:
    """Redis (with its outage policy) when configured; else the supervisor's shared counters in a worker of
    `serve --workers N`; else this process's."""
    if redis_url:
        shared = RedisCounters(redis_url, timeout=getattr(settings, "redis_timeout", None))
        return ResilientCounters(shared, on_outage=getattr(settings, "limits_on_outage", "local"))
    hub = hub_socket_from_env()
    return SharedCounters(hub) if hub else MemoryCounters()


class SharedCounters:
    """A `CounterStore` whose decisions the supervisor's hub takes, for every worker alike."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task | None = None
        self._connecting: asyncio.Lock | None = None

    async def acquire_rate(self, key_id: str, request_id: str, rpm: int | None, tpm: int | None,
                           tokens: int) -> RateDecision:
        return RateDecision(**await self._ask("acquire_rate", [key_id, request_id, rpm, tpm, tokens]))

    async def settle_tokens(self, key_id: str, request_id: str, tokens: int) -> None:
        await self._ask("settle_tokens", [key_id, request_id, tokens])

    async def reserve_budget(self, key_id: str, window: str, budget: float, amount: float,
                             load_spent: Callable[[], float], ttl: float | None) -> BudgetDecision:
        args: list[Any] = [key_id, window, budget, amount, None, ttl]
        answer = await self._ask("reserve_budget", args)
        if answer is _NEED_SPENT:  # the first call of this window in any worker: bring the spend so far
            args[4] = await asyncio.to_thread(load_spent)
            answer = await self._ask("reserve_budget", args)
        return BudgetDecision(**answer)

    async def settle_budget(self, key_id: str, window: str, reserved: float, actual: float) -> None:
        await self._ask("settle_budget", [key_id, window, reserved, actual])

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None

    # -- the connection ---------------------------------------------------------------

    async def _ask(self, op: str, args: list) -> Any:
        writer = await self._connection()
        request_id = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            writer.write(json.dumps({"i": request_id, "op": op, "a": args}, separators=(",", ":")).encode() + b"\n")
            return await asyncio.wait_for(answer, REPLY_TIMEOUT)
        finally:
            self._waiting.pop(request_id, None)

    async def _connection(self) -> asyncio.StreamWriter:
        if self._writer is not None:
            return self._writer
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is None:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=2**20)
                self._reading = asyncio.get_running_loop().create_task(self._read(reader))
                self._writer = writer
        return self._writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        error: BaseException = ConnectionError("the supervisor's hub closed the connection")
        try:
            while line := await reader.readline():
                reply = json.loads(line)
                answer = self._waiting.get(reply.get("i"))
                if answer is None or answer.done():
                    continue
                if "ok" in reply:
                    answer.set_result(reply["ok"])
                elif reply.get("need_spent"):
                    answer.set_result(_NEED_SPENT)
                else:
                    answer.set_exception(RuntimeError(f"hub: {reply.get('err')}"))
        except (OSError, ValueError) as e:
            error = ConnectionError(f"the supervisor's hub connection failed: {e}")
        finally:
            # The next question opens a new connection; the ones in flight fail (fail closed upstream of us).
            self._writer = None
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(error)


_NEED_SPENT = object()
