"""Figures for issue 12 ("nothing lost"): records lost under SIGTERM and a PostgreSQL outage, budget
overspend of parallel calls, and the delay a frozen Redis adds.

Run from the project root with the project's virtualenv (scripts/test creates it):

    .venv/bin/python scripts/nothing_lost_bench.py sigterm --runs 20
    .venv/bin/python scripts/nothing_lost_bench.py pg-outage --seconds 100
    .venv/bin/python scripts/nothing_lost_bench.py overspend
    .venv/bin/python scripts/nothing_lost_bench.py redis-frozen

Each starts its own fake provider, gateway, PostgreSQL or redis-server on free
ports (PostgreSQL 15 under /usr/lib/postgresql/15/bin, run as the `postgres`
user), and prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import httpx  # noqa: E402
from conftest import free_port, start_fake_provider, start_gateway, stop  # noqa: E402
from own_servers import OwnPostgres, wait_until  # noqa: E402

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


class Load:
    """Client threads calling the gateway in a loop; counts the calls answered 200."""

    def __init__(self, url: str, key: str, workflow: str, clients: int, delay: str = "0.05") -> None:
        self.url, self.key, self.workflow, self.delay = url, key, workflow, delay
        self.answered = 0
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _run(self) -> None:
        headers = {"authorization": f"Bearer {self.key}", "x-workflow-tag": self.workflow,
                   "x-fake-delay": self.delay}
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(f"{self.url}/v1/chat/completions", json=BODY, headers=headers)
                    ok = r.status_code == 200 and r.json().get("choices")
                except (httpx.HTTPError, ValueError):
                    ok = False
                    time.sleep(0.05)
                with self._lock:
                    if ok:
                        self.answered += 1
                    else:
                        self.failed += 1


def sigterm(args: argparse.Namespace) -> dict:
    fake = start_fake_provider()
    runs = []
    try:
        for run in range(args.runs):
            tmp = Path(tempfile.mkdtemp(prefix="ts-sigterm-"))
            gw = start_gateway(tmp, fake)
            workflow = f"sigterm-{run}"
            load = Load(gw.url, gw.key, workflow, clients=args.clients).start()
            time.sleep(args.load_seconds)
            gw.process.send_signal(signal.SIGTERM)
            code = gw.process.wait(timeout=60)
            load.stop()
            recorded = len(gw.records(workflow=workflow))
            runs.append({"answered": load.answered, "recorded": recorded, "lost": max(load.answered - recorded, 0),
                         "exit": code})
            stop(gw.process)
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        stop(fake.process)
    return {"test": "sigterm", "runs": len(runs), "runs_with_loss": sum(r["lost"] > 0 for r in runs),
            "records_lost": sum(r["lost"] for r in runs), "answered": sum(r["answered"] for r in runs),
            "detail": runs}


def _pg_count(url: str, workflow: str) -> tuple[int, int]:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("SELECT count(*), count(DISTINCT (request_id, attempt)) FROM usage WHERE workflow = %s",
                               (workflow,)).fetchone()
            return int(row[0]), int(row[1])
    except psycopg.OperationalError:
        return -1, -1


def pg_outage(args: argparse.Namespace) -> dict:
    fake = start_fake_provider()
    pg = OwnPostgres()
    tmp = Path(tempfile.mkdtemp(prefix="ts-pg-outage-"))
    workflow = f"pg-outage-{uuid.uuid4().hex[:6]}"
    try:
        gw = start_gateway(tmp, fake, extra_env={"TOKENSENSE_DATABASE_URL": pg.url})
        load = Load(gw.url, gw.key, workflow, clients=args.clients, delay="0.05").start()
        time.sleep(5)
        pg.stop()
        down_at = time.monotonic()
        time.sleep(args.seconds)
        health = httpx.get(f"{gw.url}/health", timeout=10).json()
        pg.start()
        outage = time.monotonic() - down_at
        time.sleep(5)
        load.stop()
        answered = load.answered
        wait_until(lambda: _pg_count(pg.url, workflow)[0] >= answered, timeout=120)
        total, distinct = _pg_count(pg.url, workflow)
        stop(gw.process)
    finally:
        stop(fake.process)
        pg.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"test": "pg-outage", "outage_seconds": round(outage, 1), "answered": answered, "recorded": total,
            "distinct": distinct, "lost": max(answered - distinct, 0), "duplicates": total - distinct,
            "health_during_outage": health}


def overspend(args: argparse.Namespace) -> dict:
    from tokensense.core.usage import TokenUsage
    from tokensense.metering.pricing import PriceBook

    fake = start_fake_provider()
    tmp = Path(tempfile.mkdtemp(prefix="ts-overspend-"))
    results = []
    try:
        gw = start_gateway(tmp, fake)
        prices = PriceBook()
        cases = [
            ("gpt-4o-mini, max_tokens 100", "gpt-4o-mini", {"max_tokens": 100}, 100),
            ("gpt-4o-mini, no max_tokens, 3000-token answers", "gpt-4o-mini", {}, 3000),
            ("claude-haiku-4-5 via chat translation, no max_tokens, 3000-token answers", "claude-haiku-4-5", {}, 3000),
        ]
        for label, model, extra, answer_tokens in cases:
            provider = "anthropic" if model.startswith("claude") else "openai"
            one = prices.token_cost(provider, model, TokenUsage(input_tokens=12, output_tokens=answer_tokens))
            budget = round(args.covers * one, 8)
            key = json.loads(gw.cli("keys", "create", f"os-{uuid.uuid4().hex[:6]}", "--budget-usd", repr(budget),
                                    "--json").stdout)["key"]
            workflow = f"overspend-{uuid.uuid4().hex[:6]}"
            body = {"model": model, **extra,
                    "messages": [{"role": "user", "content": "write a long story about a lighthouse keeper"}]}

            def call(_: int, key: str = key, workflow: str = workflow, body: dict = body,
                     answer_tokens: int = answer_tokens) -> int:
                return httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=60, headers={
                    "authorization": f"Bearer {key}", "x-workflow-tag": workflow, "x-fake-delay": "0.5",
                    "x-fake-chunks": str(answer_tokens)}).status_code

            with ThreadPoolExecutor(max_workers=50) as pool:
                statuses = list(pool.map(call, range(50)))
            admitted = statuses.count(200)
            rows = gw.wait_records(count=50, workflow=workflow)
            spent = sum(r["cost_usd"] or 0 for r in rows)
            results.append({"case": label, "budget_usd": budget, "spent_usd": round(spent, 8),
                            "overspend_pct": round(max(spent - budget, 0) / budget * 100, 2), "admitted": admitted,
                            "429": statuses.count(429), "402": statuses.count(402)})
        stop(gw.process)
    finally:
        stop(fake.process)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"test": "overspend", "parallel_calls": 50, "budget_covers_answers": args.covers, "cases": results}


def redis_frozen(args: argparse.Namespace) -> dict:
    fake = start_fake_provider()
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    tmp = Path(tempfile.mkdtemp(prefix="ts-redis-"))
    try:
        time.sleep(0.5)
        gw = start_gateway(tmp, fake, extra_env={"TOKENSENSE_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        key = json.loads(gw.cli("keys", "create", "limited", "--rpm", "100000", "--json").stdout)["key"]

        def timed(n: int) -> list[float]:
            out = []
            with httpx.Client(timeout=60) as client:
                for _ in range(n):
                    start = time.perf_counter()
                    r = client.post(f"{gw.url}/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"})
                    out.append((time.perf_counter() - start) * 1000)
                    assert r.status_code == 200, r.text
            return out

        timed(10)
        before = timed(args.calls)
        redis.send_signal(signal.SIGSTOP)
        during = timed(args.calls)
        redis.send_signal(signal.SIGCONT)
        warnings = gw.log().count("counters unavailable")
        stop(gw.process)
    finally:
        redis.send_signal(signal.SIGCONT)
        redis.kill()
        stop(fake.process)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"test": "redis-frozen", "calls": args.calls,
            "median_ms_before": round(statistics.median(before), 1),
            "median_ms_frozen": round(statistics.median(during), 1),
            "first_call_ms_frozen": round(during[0], 1), "max_ms_frozen": round(max(during), 1),
            "outage_warnings_in_log": warnings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("sigterm")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--load-seconds", type=float, default=2.0)
    p = sub.add_parser("pg-outage")
    p.add_argument("--seconds", type=float, default=100)
    p.add_argument("--clients", type=int, default=10)
    p = sub.add_parser("overspend")
    p.add_argument("--covers", type=float, default=10, help="the budget covers this many real answers")
    p = sub.add_parser("redis-frozen")
    p.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    run = {"sigterm": sigterm, "pg-outage": pg_outage, "overspend": overspend, "redis-frozen": redis_frozen}[args.what]
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
