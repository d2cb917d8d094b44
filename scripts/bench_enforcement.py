"""What each enforcement costs per call: latency and CPU against a baseline in the same run (issue 26).

    .venv/bin/python scripts/bench_enforcement.py                 # about 5 minutes: tables, bench-enforcement.json
    .venv/bin/python scripts/bench_enforcement.py --quick         # smoke run (about a minute)
    .venv/bin/python scripts/bench_enforcement.py --stage-only    # the police stage alone (seconds)
    .venv/bin/python scripts/bench_enforcement.py --redis redis://127.0.0.1:6379/0   # counters, guard in Redis
    .venv/bin/python scripts/bench_enforcement.py --budgets-config my-budgets.toml   # the attribution lane's

docs/budgets-and-limits.md has the latest table. Everything runs on 127.0.0.1: nginx
answering every POST with one fixed chat completion (the fake provider where nginx is
not installed), and three `tokensense serve` processes on one home (one SQLite file,
the same keys), each with its own config.toml:

- `main`: `[guards]` with limits no call reaches. Lanes: `baseline` (a key without
  budget, no header), `key budget` (a key with a budget no call reaches: rate, reservation
  and settle in the counters), `per-call cap` (`x-tokensense-max-cost-usd`: the largest
  cost is priced), `loop guard` (`x-execution-id`: the body is hashed and counted),
  `all` (the budgeted key, the cap and the execution id together);
- `typical`: `[budgets] reserve = "typical"`. Lanes: `baseline`, `typical` (the budgeted
  key: admitted on the model's 99th percentile output);
- `attribution`: the `[[budgets]]` of `--budgets-config` (default: a workflow budget no call
  reaches). Lanes: `baseline`, `attribution budget` (`x-workflow-tag: bench`). Enforced only
  by a gateway with budgets on attribution; before, it measures the header alone.

Each lane is compared with the baseline of its own process, within each round (the lanes
interleaved, their order reversed every other round): the ratio of p50 latency at c=1 and
of CPU per request at c=16 (CPU time of the gateway process, steadier than req/s on a busy
machine). The load is wrk where installed (one thread, a Lua script adding the lane's
headers), else a bounded asyncio client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (  # scripts/bench.py: the same upstream, processes and load
    BIN,
    CHAT_MODEL,
    CHAT_PATH,
    LoadResult,
    Processes,
    _asyncio_load,
    clean_env,
    free_port,
    machine,
    nginx_binary,
    nginx_config,
    tree_cpu_seconds,
    wait_http,
    wait_port,
)

# The same body for every lane, with an output cap (what a budget reserves): the loop guard counts it as one
# request repeated, under a repeat_limit no call reaches.
BODY = json.dumps(
    {"model": CHAT_MODEL, "max_tokens": 4096, "messages": [{"role": "user", "content": "Say hello"}]},
    separators=(",", ":"),
)
NEVER = 1_000_000_000
GUARDS = f"\n[guards]\nrepeat_limit = {NEVER}\nrepeat_window_s = 60\nmax_calls_per_execution = {NEVER}\n"
DEFAULT_BUDGETS = '[[budgets]]\nworkflow = "bench"\nusd = 1000000000\nperiod = "day"\n'

WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
for name, value in string.gmatch(os.getenv("BENCH_HEADERS") or "", "([^:\n]+):([^\n]*)") do
  wrk.headers[name] = value
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {"requests": %d, "duration_us": %d, "errors": %d, "status_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %f}\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(99),
    latency.mean))
end
"""


@dataclass
class Lane:
    name: str
    instance: str  # main, typical or attribution
    key: str  # which key: "plain" or "budget"
    headers: dict[str, str] = field(default_factory=dict)


LANES = [
    Lane("baseline", "main", "plain"),
    Lane("key budget", "main", "budget"),
    Lane("per-call cap", "main", "plain", {"x-tokensense-max-cost-usd": "1000"}),
    Lane("loop guard", "main", "plain", {"x-execution-id": "bench-run"}),
    Lane("all of them", "main", "budget", {"x-tokensense-max-cost-usd": "1000", "x-execution-id": "bench-all"}),
    Lane("baseline", "typical", "plain"),
    Lane("typical reserve", "typical", "budget"),
    Lane("x-execution-id, no guard", "typical", "plain", {"x-execution-id": "bench-run"}),
    Lane("baseline", "attribution", "plain"),
    Lane("attribution budget", "attribution", "plain", {"x-workflow-tag": "bench"}),
]


def load(
    client: str, tmp: Path, url: str, key: str, headers: dict[str, str], concurrency: int, seconds: float
) -> LoadResult:
    if client == "wrk":
        script = tmp / "enforcement.lua"
        if not script.exists():
            script.write_text(WRK_SCRIPT)
        env = {
            **os.environ,
            "BENCH_BODY": BODY,
            "BENCH_KEY": key,
            "BENCH_HEADERS": "\n".join(f"{k}:{v}" for k, v in headers.items()),
        }
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, math.ceil(seconds))}s",
                "--timeout",
                "30s",
                "--latency",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH ")), None)
        if line is None:
            raise SystemExit(f"error: wrk failed:\n{out.stdout}\n{out.stderr}")
        data = json.loads(line[6:])
        secs = data["duration_us"] / 1e6
        return LoadResult(
            requests=data["requests"],
            errors=data["errors"] + data["status_errors"],
            seconds=secs,
            rps=data["requests"] / secs if secs else 0.0,
            p50_ms=data["p50_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            mean_ms=data["mean_us"] / 1000,
        )
    return asyncio.run(_asyncio_load(url, concurrency, key, seconds=seconds, requests=0, body=BODY, headers=headers))


def keys_create(env: dict[str, str], name: str, *extra: str) -> str:
    out = subprocess.run(
        [str(BIN / "tokensense"), "keys", "create", name, *extra, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise SystemExit(f"error: tokensense keys create failed:\n{out.stderr}")
    return json.loads(out.stdout)["key"]


def start(args: argparse.Namespace, procs: Processes) -> tuple[dict[str, tuple[str, int]], dict[str, str], str]:
    """nginx (or the fake provider) and the three gateways: ({instance: (URL, pid)}, {key name: key}, upstream)."""
    tmp = procs.tmp
    env = clean_env()
    binary = nginx_binary() if args.upstream != "fake" else None
    if binary:
        port = free_port()
        (tmp / "nginx").mkdir()
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_config(tmp, port, {}))
        nginx, log = procs.start("nginx", [binary, "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "nginx-error.log")])
        wait_port(port, nginx, "nginx", log)
        upstream, what = f"http://127.0.0.1:{port}", "nginx, fixed answer"
    else:
        fake, log = procs.start(
            "fake-provider",
            [sys.executable, "-m", "tokensense.demo.fakeprovider", "--host", "127.0.0.1", "--port", "0"],
            env,
        )
        deadline = time.monotonic() + 30
        while "listening on" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        upstream, what = log.read_text().split("listening on", 1)[1].split()[0], "the fake provider"
    ts_env = {
        **env,
        "TOKENSENSE_HOME": str(tmp / "home"),
        "OPENAI_API_KEY": "sk-bench-openai",
        "TOKENSENSE_OPENAI_BASE_URL": upstream,
    }
    if args.redis:
        ts_env["TOKENSENSE_REDIS_URL"] = args.redis
    keys = {
        "plain": keys_create(ts_env, "bench"),
        "budget": keys_create(ts_env, "bench-budget", "--budget-usd", str(NEVER), "--budget-period", "daily"),
    }
    budgets = Path(args.budgets_config).read_text() if args.budgets_config else DEFAULT_BUDGETS
    configs = {"main": GUARDS, "typical": '[budgets]\nreserve = "typical"\n', "attribution": budgets}
    started = []
    for name, text in configs.items():
        config = tmp / f"{name}.toml"
        config.write_text(text)
        port = free_port()
        proc, log = procs.start(
            f"tokensense-{name}",
            [str(BIN / "tokensense"), "serve", "--port", str(port)],
            {**ts_env, "TOKENSENSE_CONFIG_FILE": str(config)},
        )
        started.append((name, proc, log, port))
    instances = {}
    for name, proc, log, port in started:
        wait_http(f"http://127.0.0.1:{port}/health", proc, f"tokensense serve ({name})", log)
        instances[name] = (f"http://127.0.0.1:{port}{CHAT_PATH}", proc.pid)
    return instances, keys, what + (", Redis" if args.redis else "")


def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (1.0 if args.quick else 4.0)
    warmup = 1.0 if args.quick else 2.0
    concurrency = [int(c) for c in args.concurrency.split(",")]
    client = "wrk" if shutil.which("wrk") and args.client != "asyncio" else "asyncio"
    tmp = Path(tempfile.mkdtemp(prefix="ts-bench-enf-"))
    procs = Processes(tmp)
    results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    try:
        instances, keys, upstream = start(args, procs)
        for lane in LANES:  # warm-up; the typical lane's model needs 20 outputs seen before it is typical
            url, _ = instances[lane.instance]
            result = load(client, tmp, url, keys[lane.key], lane.headers, 4, warmup)
            if result.errors:
                raise SystemExit(f"error: lane {lane.name} ({lane.instance}) answered {result.errors} errors")
        for r in range(rounds):
            order = LANES if r % 2 == 0 else list(reversed(LANES))
            for c in concurrency:
                for lane in order:
                    url, pid = instances[lane.instance]
                    before = tree_cpu_seconds(pid) or 0.0
                    result = load(client, tmp, url, keys[lane.key], lane.headers, c, duration)
                    cpu = (tree_cpu_seconds(pid) or 0.0) - before
                    results.setdefault((lane.instance, lane.name, c), []).append(
                        {
                            "rps": result.rps,
                            "p50_ms": result.p50_ms,
                            "p99_ms": result.p99_ms,
                            "errors": result.errors,
                            "cpu_ms_per_req": cpu * 1000 / result.requests if result.requests else math.nan,
                        }
                    )
                    print(
                        f"round {r + 1}/{rounds} c={c:<3} {lane.instance:<12} {lane.name:<20} "
                        f"{result.rps:7.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                        f"CPU {results[(lane.instance, lane.name, c)][-1]['cpu_ms_per_req']:.3f} ms/req",
                        flush=True,
                    )
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return summarize(
        results,
        concurrency,
        rounds,
        {
            "upstream": upstream,
            "client": client,
            "rounds": rounds,
            "duration_s": duration,
            "machine": machine(),
            "command": " ".join(["scripts/bench_enforcement.py", *sys.argv[1:]]),
        },
    )


def summarize(
    results: dict[tuple[str, str, int], list[dict[str, float]]],
    concurrency: list[int],
    rounds: int,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Per lane and concurrency: medians over rounds, and ratios to its process's baseline taken within a round."""
    rows = []
    for lane in LANES:
        for c in concurrency:
            runs = results[(lane.instance, lane.name, c)]
            base = results[(lane.instance, "baseline", c)]
            p50_ratio = [run["p50_ms"] / b["p50_ms"] for run, b in zip(runs, base, strict=True) if b["p50_ms"]]
            cpu_ratio = [
                run["cpu_ms_per_req"] / b["cpu_ms_per_req"]
                for run, b in zip(runs, base, strict=True)
                if b["cpu_ms_per_req"]
            ]
            rows.append(
                {
                    "lane": lane.name,
                    "instance": lane.instance,
                    "c": c,
                    "rps": statistics.median(r["rps"] for r in runs),
                    "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                    "cpu_ms_per_req": statistics.median(r["cpu_ms_per_req"] for r in runs),
                    "errors": sum(r["errors"] for r in runs),
                    "p50_vs_baseline": statistics.median(p50_ratio) if p50_ratio else None,
                    "cpu_vs_baseline": statistics.median(cpu_ratio) if cpu_ratio else None,
                }
            )
    return {**meta, "rows": rows}


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\nupstream: {report['upstream']}; load: {report['client']}; {report['rounds']} rounds of "
        f"{report['duration_s']:g} s per lane\n"
    )
    print("| enforcement | process | c | req/s | p50 ms | p99 ms | CPU ms/req | p50 / baseline | CPU / baseline |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in report["rows"]:
        base = row["lane"] == "baseline"
        p50, cpu = ("", "") if base else (_ratio(row["p50_vs_baseline"]), _ratio(row["cpu_vs_baseline"]))
        print(
            f"| {row['lane']} | {row['instance']} | {row['c']} | {row['rps']:.0f} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['cpu_ms_per_req']:.3f} | {p50} | {cpu} |"
        )


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


# -- the police stage alone, in this process ------------------------------------------------------------


async def stage_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Each enforcement's cost in the police stage itself (and what it settles): microseconds per call, in this
    process, the lanes interleaved in rounds against the baseline (no budget, no guard). Free of the noise of the
    HTTP lanes (a proxy call is about 1-3 ms of CPU; these costs are tens of microseconds)."""
    import uuid
    from dataclasses import replace

    from tokensense.config import BudgetsConfig
    from tokensense.core.endpoints import Endpoint
    from tokensense.gateway.budgets import BudgetBook
    from tokensense.gateway.call import CallContext
    from tokensense.gateway.guards import LoopGuard, SharedLoopCounts
    from tokensense.gateway.keys import KeyInfo
    from tokensense.gateway.limits import MemoryCounters, RedisCounters, ResilientCounters
    from tokensense.gateway.stages.police import Target, police, settle_counters
    from tokensense.gateway.typical_output import OutputHistory
    from tokensense.metering.pricing import PriceBook
    from tokensense.providers import PROVIDERS
    from tokensense.providers.openai import OPENAI_ERRORS

    prices, openai = PriceBook(), PROVIDERS["openai"]
    body = json.loads(BODY)
    target = Target(openai, CHAT_MODEL, CHAT_MODEL, body)
    plain = KeyInfo(
        id=f"bench-{uuid.uuid4().hex[:8]}",
        name="bench",
        revoked=False,
        project=None,
        budget_usd=None,
        budget_period="daily",
        rpm=None,
        tpm=None,
        plan=None,
        allowed_models=(),
        allowed_providers=(),
    )
    budgeted = replace(plain, id=f"bench-b-{uuid.uuid4().hex[:8]}", budget_usd=float(NEVER))
    guard = LoopGuard(repeat_limit=NEVER, max_calls_per_execution=NEVER)
    history = OutputHistory()
    history.seed([("openai", CHAT_MODEL, 3)] * 500)
    memory = MemoryCounters()
    all_levels = {"workflow": "bench", "project": "bench", "source": "bench"}
    # Budgets on attribution no call reaches: a workflow's; with an execution, a project's, a source's and each run's.
    workflow_budgets = BudgetBook(None, BudgetsConfig.model_validate([
        {"workflow": "bench", "usd": 1e9}, {"project": "bench", "usd": 1e9, "period": "month"},
        {"source": "bench", "usd": 1e9, "period": "day"}, {"each_execution": True, "usd": 1e9}]).limits)
    lanes: dict[str, dict[str, Any]] = {
        "baseline": {"key": plain},
        "key budget": {"key": budgeted},
        "per-call cap": {"key": plain, "cap": 1000.0},
        "loop guard": {"key": plain, "execution": "bench-run", "guard": guard},
        "typical reserve": {"key": budgeted, "typical": history},
        "attribution budget": {"key": plain, "attribution": {"workflow": "bench"}, "budgets": workflow_budgets},
        "key + 4 budgets on attribution": {"key": budgeted, "attribution": all_levels, "execution": "bench-run",
                                           "budgets": workflow_budgets},
    }
    closers = []
    if args.redis:
        shared_counters = ResilientCounters(RedisCounters(args.redis, timeout=0.5))
        shared_guard = LoopGuard(
            repeat_limit=NEVER,
            max_calls_per_execution=NEVER,
            shared=SharedLoopCounts(args.redis, prefix=f"bench-{uuid.uuid4().hex[:8]}"),
        )
        lanes["key budget (Redis)"] = {
            "key": replace(budgeted, id=f"bench-r-{uuid.uuid4().hex[:8]}"),
            "counters": shared_counters,
        }
        lanes["loop guard (Redis)"] = {"key": plain, "execution": "bench-run", "guard": shared_guard}
        lanes["key + 4 budgets on attribution (Redis)"] = {
            "key": replace(budgeted, id=f"bench-r-{uuid.uuid4().hex[:8]}"), "attribution": all_levels,
            "execution": f"bench-run-{uuid.uuid4().hex[:8]}", "budgets": workflow_budgets, "counters": shared_counters,
        }
        closers += [shared_counters.close, shared_guard.aclose]

    async def one(lane: dict[str, Any]) -> None:
        call = CallContext(Endpoint.CHAT, OPENAI_ERRORS)
        call.key = lane["key"]
        call.provider, call.model = openai, CHAT_MODEL  # as the routing stage leaves it
        call.max_cost_usd = lane.get("cap")
        call.attribution = {"execution_id": lane.get("execution")}
        call.attribution.update(lane.get("attribution", {}))
        counters = lane.get("counters", memory)
        policed = await police(
            call,
            target,
            prices=prices,
            counters=counters,
            spent_since=lambda *_: 0.0,
            guard=lane.get("guard"),
            typical=lane.get("typical"),
            budgets=lane.get("budgets"),
        )
        settle_counters(counters, call, policed, tokens=10, cost=0.000001)
        if lane.get("typical") is not None:
            history.observe("openai", CHAT_MODEL, 3)

    calls = 200 if args.quick else 2000
    rounds = 3 if args.quick else 9
    timings: dict[str, list[float]] = {name: [] for name in lanes}
    try:
        for lane in lanes.values():  # warm-up (the Redis scripts loaded, the windows seeded)
            for _ in range(50):
                await one(lane)
            await asyncio.sleep(0.05)
        for r in range(rounds):
            for name in lanes if r % 2 == 0 else reversed(list(lanes)):
                lane = lanes[name]
                start = time.perf_counter()
                for _ in range(calls):
                    await one(lane)
                    await asyncio.sleep(0)  # the settle tasks run, as on the proxy's loop
                timings[name].append((time.perf_counter() - start) / calls * 1e6)
    finally:
        for close in closers:
            await close()
    rows = []
    for name in lanes:
        ratios = [t / b for t, b in zip(timings[name], timings["baseline"], strict=True)]
        rows.append(
            {
                "lane": name,
                "us_per_call": statistics.median(timings[name]),
                "added_us": statistics.median(t - b for t, b in zip(timings[name], timings["baseline"], strict=True)),
                "vs_baseline": statistics.median(ratios),
            }
        )
    return {"calls_per_round": calls, "rounds": rounds, "rows": rows}


def print_stage(stage: dict[str, Any]) -> None:
    print(f"\nthe police stage alone ({stage['rounds']} rounds of {stage['calls_per_round']} calls per lane)\n")
    print("| enforcement | µs per call | added µs | / baseline |")
    print("|---|---:|---:|---:|")
    for row in stage["rows"]:
        added = "" if row["lane"] == "baseline" else f"{row['added_us']:+.1f}"
        ratio = "" if row["lane"] == "baseline" else f"{row['vs_baseline']:.2f}"
        print(f"| {row['lane']} | {row['us_per_call']:.1f} | {added} | {ratio} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run (1 round of 1 s per lane)")
    parser.add_argument("--out", default="bench-enforcement.json", help="JSON results file (default: %(default)s)")
    parser.add_argument("--rounds", type=int, help="rounds of all lanes (default 3, quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per lane and round (default 4, quick 1)")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated (default: %(default)s)")
    parser.add_argument("--redis", metavar="URL", help="TOKENSENSE_REDIS_URL for the gateways (default: none)")
    parser.add_argument(
        "--budgets-config",
        metavar="FILE",
        help="config.toml of the attribution lane (default: a [[budgets]] workflow budget for "
        "`bench`, which the lane's x-workflow-tag names)",
    )
    parser.add_argument("--client", choices=("auto", "wrk", "asyncio"), default="auto")
    parser.add_argument("--upstream", choices=("auto", "fake"), default="auto")
    parser.add_argument("--stage-only", action="store_true", help="only the police stage in this process (seconds)")
    args = parser.parse_args(argv)
    stage = asyncio.run(stage_bench(args))
    report = {"stage": stage} if args.stage_only else {**run(args), "stage": stage}
    Path(args.out).write_text(json.dumps(report, indent=2))
    if not args.stage_only:
        print_table(report)
    print_stage(stage)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
