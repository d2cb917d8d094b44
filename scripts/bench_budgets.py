"""What the budget checks cost: the police stage timed in-process, with 0 to 5 budgets that apply to a call.

    .venv/bin/python scripts/bench_budgets.py                 # in-process counters (one instance)
    .venv/bin/python scripts/bench_budgets.py --redis redis://127.0.0.1:6379/15   # counters in Redis

Each round polices N calls one after the other (the same key, project, workflow, source and execution)
and settles each: the median time per call of `police` (what a call waits for before it goes upstream; the
settle runs in the background after the answer) for

- `none`: a key without a budget (access and price checks only);
- `key`: the key's own budget;
- `key+project+workflow+source+execution`: five budgets, each reserved and settled;
- `... new run each call`: the same with a new execution id per call: each call's execution window is seeded
  (the settled spend is read in a thread; here the loader answers at once, a real one reads the database).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokensense.core.endpoints import Endpoint
from tokensense.gateway.budgets import BudgetBook
from tokensense.gateway.call import CallContext
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.limits import CounterStore, MemoryCounters, RedisCounters, ResilientCounters
from tokensense.gateway.stages.police import Target, police
from tokensense.metering.pricing import PriceBook
from tokensense.providers import PROVIDERS
from tokensense.providers.openai import OPENAI_ERRORS
from tokensense.storage.budgets import BudgetLimit


def key(budget: float | None) -> KeyInfo:
    return KeyInfo(
        id=uuid.uuid4().hex[:16],
        name="bench",
        revoked=False,
        project="p",
        budget_usd=budget,
        budget_period="monthly",
        rpm=None,
        tpm=None,
        plan=None,
        allowed_models=(),
        allowed_providers=(),
    )


def book(levels: int) -> BudgetBook:
    limits = [
        BudgetLimit("project", "p", 1e6, "month"),
        BudgetLimit("workflow", "w", 1e6, "day"),
        BudgetLimit("source", "s", 1e6, "week"),
        BudgetLimit("execution", None, 1e6, "total"),
    ][:levels]
    budgets = BudgetBook()
    budgets.configured = limits
    budgets._install([])
    return budgets


async def lane(
    counters: CounterStore, info: KeyInfo, budgets: BudgetBook, calls: int, prices: PriceBook, new_runs: bool
) -> float:
    target = Target(
        PROVIDERS["openai"],
        "gpt-4o-mini",
        "gpt-4o-mini",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50},
    )
    times = []
    run = uuid.uuid4().hex[:12]
    for number in range(calls + 20):  # the first 20 warm up (and seed the windows)
        call = CallContext(Endpoint.CHAT, OPENAI_ERRORS)
        call.key = info
        call.attribution = {
            "project": "p",
            "workflow": "w",
            "source": "s",
            "execution_id": uuid.uuid4().hex[:12] if new_runs else run,
        }
        start = time.perf_counter()
        policed = await police(
            call, target, prices=prices, counters=counters, spent_since=lambda s, t: 0.0, budgets=budgets
        )
        if number >= 20:  # what the call waits for; the gateway settles in the background after the answer
            times.append(time.perf_counter() - start)
        for hold in policed.budgets:
            await counters.settle_budget(hold.counter, hold.window, hold.amount, hold.amount / 2)
    return statistics.median(times) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="count in this Redis (keys under a random prefix, deleted after)")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    prices = PriceBook()
    counters: CounterStore
    if args.redis:
        shared = RedisCounters(args.redis, prefix=f"bench-{uuid.uuid4().hex[:8]}", timeout=2.0)
        counters = ResilientCounters(shared)
    else:
        counters = MemoryCounters()
    lanes = [
        ("none", None, 0, False),
        ("key", 1e6, 0, False),
        ("key+project+workflow+source+execution", 1e6, 4, False),
        ("... new run each call", 1e6, 4, True),
    ]
    results: dict[str, list[float]] = {name: [] for name, _, _, _ in lanes}
    try:
        for _ in range(args.rounds):
            for name, budget, levels, new_runs in lanes:
                info = key(budget)
                budgets = book(levels)
                results[name].append(await lane(counters, info, budgets, args.calls, prices, new_runs))
    finally:
        if args.redis:
            found = await shared.redis.keys(f"{shared.prefix}:*")
            if found:
                await shared.redis.delete(*found)
            await counters.close()
    store = "Redis" if args.redis else "in-process counters"
    print(f"police per call, median of {args.rounds} rounds of {args.calls} calls ({store}):")
    for name, values in results.items():
        print(f"  {name:40s} {statistics.median(values):8.1f} µs")


if __name__ == "__main__":
    asyncio.run(main())
