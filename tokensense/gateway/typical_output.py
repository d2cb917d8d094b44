"""`[budgets] reserve = "typical"`: admit a call on its model's typical output, not on its output cap.

A coding agent sends `max_tokens: 32000` on every turn and writes a few hundred
tokens. Reserving every turn at its cap (`reserve = "cap"`, the default) refuses
it once less than one cap's cost is left, and always under a budget smaller than
that. With `typical`, a call is *admitted* when its typical cost fits in what is
left: its prompt plus the smaller of its own output cap and the 99th percentile
of the outputs of its model through this gateway (the last `WINDOW` calls,
seeded at start from the recent usage records, in a thread). Until `MIN_SAMPLES`
calls of a model were seen its cap alone is used.

While in flight the call still *holds* its largest cost, as in `cap` mode, so
the counters always hold the worst case of every call in flight. The overspend
this allows is one call's excess: the budget is exceeded by at most the largest
(largest cost - typical cost) of a call admitted when it was nearly spent,
however many calls run in parallel and on however many instances (proof in
docs/budgets-and-limits.md). In the counters this is a reservation of the
largest cost against the budget raised by (largest - typical): admitted iff
spent + reserved + typical <= budget, one atomic decision in every store.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from tokensense.gateway.call import CallContext
from tokensense.gateway.limits import shared_redis
from tokensense.gateway.reservation import call_generates, output_choices

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from tokensense.storage.models import UsageCreate

log = logging.getLogger(__name__)

MIN_SAMPLES = 20  # outputs of a model seen before its typical output is used (its cap until then)
WINDOW = 500  # the last outputs of each model its percentile is taken over
PERCENTILE = 0.99
SEED_ROWS = 50_000  # the history is seeded at start from this many recent usage records


def percentile(values: Iterable[int], q: float = PERCENTILE) -> int:
    """The nearest-rank `q` percentile of `values` (the smallest value at least a fraction `q` of them do not
    exceed): of 20 values the 99th percentile is the largest, of 500 the 5th largest."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def model_key(provider: str | None, model: str | None) -> tuple[str, str]:
    return ((provider or "").lower(), (model or "").lower())


class OutputHistory:
    """The recent output tokens (per choice) of each model through this gateway, and their 99th percentile.

    `observe` runs on the event loop for each settled call; `seed` in a thread at start. A lock guards both
    (never held across I/O). Each model's window is also kept sorted (bisect), so its percentile is one index.
    """

    def __init__(
        self,
        *,
        window: int = WINDOW,
        min_samples: int = MIN_SAMPLES,
        q: float = PERCENTILE,
        shared: SharedOutputs | None = None,
    ) -> None:
        self.shared = shared  # Redis, when configured: every instance's outputs
        self.window = window
        self.min_samples = min_samples
        self.q = q
        self._outputs: dict[tuple[str, str], deque[int]] = {}  # per model, oldest first
        self._sorted: dict[tuple[str, str], list[int]] = {}  # the same outputs, sorted (kept with bisect)
        self._lock = threading.Lock()
        self.seeded = threading.Event()

    def observe(self, provider: str | None, model: str | None, output_tokens: int, choices: int = 1) -> None:
        """One call of `model` wrote `output_tokens` (over `choices` choices)."""
        if output_tokens <= 0 or not model:
            return
        name = model_key(provider, model)
        tokens = math.ceil(output_tokens / max(choices, 1))
        with self._lock:
            outputs = self._outputs.get(name)
            if outputs is None:
                outputs = self._outputs[name] = deque(maxlen=self.window)
                self._sorted[name] = []
            ordered = self._sorted[name]
            if len(outputs) == outputs.maxlen:  # the oldest leaves the window
                del ordered[bisect.bisect_left(ordered, outputs[0])]
            outputs.append(tokens)
            bisect.insort(ordered, tokens)
        if self.shared is not None:
            self.shared.push(name, tokens, self)

    def typical(self, provider: str | None, model: str | None) -> int | None:
        """The 99th percentile of the model's recent outputs per choice; None until `min_samples` were seen."""
        name = model_key(provider, model)
        with self._lock:
            ordered = self._sorted.get(name)
            if ordered is None or len(ordered) < self.min_samples:
                return None
            return ordered[max(1, math.ceil(self.q * len(ordered))) - 1]  # `percentile`, on the sorted window

    def replace(self, name: tuple[str, str], outputs: list[int]) -> None:
        """The outputs of a model as Redis holds them (every instance's, oldest first), unless this process
        holds more (its history seeded from the records, and a Redis that was emptied)."""
        with self._lock:
            if len(outputs) >= len(self._outputs.get(name, ())):
                self._set(name, outputs)

    def _set(self, name: tuple[str, str], outputs: list[int]) -> None:
        kept = self._outputs[name] = deque(outputs, maxlen=self.window)
        self._sorted[name] = sorted(kept)

    def models(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._outputs)

    def samples(self, provider: str | None, model: str | None) -> int:
        with self._lock:
            return len(self._outputs.get(model_key(provider, model), ()))

    def seed(self, rows: Iterable[tuple[str | None, str | None, int]]) -> int:
        """Add past outputs, oldest first, before those observed since (they are more recent). Returns how many."""
        older: dict[tuple[str, str], list[int]] = {}
        count = 0
        for provider, model, tokens in rows:
            if tokens and tokens > 0 and model:
                older.setdefault(model_key(provider, model), []).append(int(tokens))
                count += 1
        with self._lock:
            for name, past in older.items():
                self._set(name, [*past, *self._outputs.get(name, ())])
        return count

    def start_seeding(self, load: Callable[[], Iterable[tuple[str | None, str | None, int]]]) -> threading.Thread:
        """Seed from `load()` (the recent usage records, blocking) in a thread; calls are served meanwhile."""

        def run() -> None:
            try:
                count = self.seed(load())
                log.info("typical reservations: seeded with %d recent outputs", count)
            except Exception as e:  # the history starts empty: caps are reserved until enough calls are seen
                log.warning("typical reservations: could not read the recent outputs (%s)", type(e).__name__)
            finally:
                self.seeded.set()

        thread = threading.Thread(target=run, name="tokensense-typical-seed", daemon=True)
        thread.start()
        return thread


class SharedOutputs:
    """The outputs of every model shared through Redis (`TOKENSENSE_REDIS_URL`): one list per model (the last
    `WINDOW`, newest first) and the set of models. Each process pushes its outputs and reads the lists back
    every `every` seconds, in a task on the event loop started by the first output; Redis unreachable: the
    process keeps its own history (one warning a minute)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tokensense",
        timeout: float | None = None,
        every: float = 2.0,
        window: int = WINDOW,
    ) -> None:
        self.redis = shared_redis(url, timeout)
        self.prefix = prefix
        self.every = every
        self.window = window
        self._pending: dict[tuple[str, str], list[int]] = {}
        self._task: asyncio.Task | None = None
        self._warned = -math.inf

    def _list(self, name: tuple[str, str]) -> str:
        return f"{self.prefix}:outputs:{name[0]}/{name[1]}"

    def push(self, name: tuple[str, str], tokens: int, history: OutputHistory) -> None:
        """Queue an output for Redis (sent by the next sync); start the sync task on first use."""
        self._pending.setdefault(name, []).append(tokens)
        if self._task is None:
            try:
                self._task = asyncio.get_running_loop().create_task(self._run(history))
            except RuntimeError:  # no event loop (a test, a script): synced by whoever calls `sync`
                pass

    async def _run(self, history: OutputHistory) -> None:
        while True:
            await self.sync(history)
            await asyncio.sleep(self.every)

    async def sync(self, history: OutputHistory) -> None:
        """Send the queued outputs, then read every model's list back into `history`."""
        pending, self._pending = self._pending, {}
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, outputs in pending.items():
                    pipe.lpush(self._list(name), *outputs)
                    pipe.ltrim(self._list(name), 0, self.window - 1)
                    pipe.expire(self._list(name), 7 * 86400)
                    pipe.sadd(f"{self.prefix}:outputs:models", f"{name[0]}/{name[1]}")
                await pipe.execute()
            members = await self.redis.smembers(f"{self.prefix}:outputs:models")
            names: set[tuple[str, str]] = set(history.models())
            for member in members:
                provider, _, model = str(member).partition("/")
                names.add((provider, model))
            ordered = sorted(names)
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in ordered:
                    pipe.lrange(self._list(name), 0, self.window - 1)
                lists = await pipe.execute()
        except Exception as e:  # Redis unreachable: this process's own history meanwhile
            now = time.monotonic()
            if now - self._warned >= 60:
                self._warned = now
                log.warning(
                    "typical reservations: Redis unavailable (%s), using this process's outputs", type(e).__name__
                )
            return
        for name, values in zip(ordered, lists, strict=True):
            if values:
                history.replace(name, [int(v) for v in reversed(values)])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.redis.aclose()


def observe_output(history: OutputHistory, call: CallContext, record: UsageCreate) -> None:
    """Add a settled call's output to `history`: a successful call of an endpoint that writes tokens."""
    if 200 <= record.status < 300 and not call.free and call.provider is not None and call_generates(call):
        body = call.sent_body
        history.observe(
            record.provider, record.model, record.output_tokens, output_choices(body) if isinstance(body, dict) else 1
        )


def recent_outputs(engine: Engine, *, limit: int = SEED_ROWS) -> list[tuple[str | None, str | None, int]]:
    """(provider, model, output tokens) of the last `limit` successful calls that wrote tokens, oldest first
    (blocking: call from a thread)."""
    from sqlmodel import Session, col, select

    from tokensense.storage.models import Usage

    query = (
        select(Usage.provider, Usage.model, Usage.output_tokens)
        .where(col(Usage.status) >= 200, col(Usage.status) < 300, col(Usage.output_tokens) > 0)
        .order_by(col(Usage.id).desc())
        .limit(limit)
    )
    with Session(engine) as session:
        rows = session.exec(query).all()
    return [(provider, model, int(tokens)) for provider, model, tokens in reversed(rows)]


def admission(largest: float, typical: float | None) -> tuple[float, float]:
    """(what the call is admitted on, how much the budget is raised by for it) when it holds `largest`.

    Reserving `largest` against budget + (largest - typical) admits exactly when
    spent + reserved + typical <= budget. `typical` None (cap mode, or too few samples): (largest, 0).
    """
    if typical is None or not typical < largest:
        return largest, 0.0
    return typical, largest - typical
