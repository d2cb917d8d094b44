"""The gateway's throughput while the dashboard polls its database: req/s with and without a poller, in one run.

    .venv/bin/python scripts/bench_polling.py                          # 1,000,000 records, SQLite
    .venv/bin/python scripts/bench_polling.py --records 5000000 --rounds 3
    .venv/bin/python scripts/bench_polling.py --database-url 'postgresql://postgres@127.0.0.1/test?options=-csearch_path%3Dpoll'

Fills a database with synthetic records (bench_dashboard's bulk path, rollups built), starts the fake
provider and `tokensense serve` on that database, then alternates rounds of the same load: the gateway
alone, then the gateway while a dashboard poller runs (a separate process doing what the dashboard does
every 0.5 s: the change marker, and a full refresh when it changed, which is every poll, since the gateway
writes all the time). The load is `--concurrency` clients (asyncio, httpx) sending small chat calls for
`--duration` seconds a round. Prints each round's req/s and the ratio of the medians (1.0: no effect).
The machine may be shared: compare the two lanes of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_dashboard import bulk_fill, reset  # noqa: E402
from sqlalchemy import text  # noqa: E402

from tokensense.storage import rollups  # noqa: E402
from tokensense.storage.db import display_url, init_db, make_engine  # noqa: E402

BIN = Path(sys.executable).parent
POLL_INTERVAL = 0.5

POLLER = """
import sys, time
from datetime import UTC, datetime
from sqlmodel import Session
from tokensense.storage.analytics import DashboardQuery, change_marker, dashboard_snapshot
from tokensense.storage.db import make_engine
engine = make_engine(sys.argv[1])
interval = float(sys.argv[2])
last, refreshes = None, 0
while True:
    started = time.perf_counter()
    with Session(engine) as session:
        marker = change_marker(session=session)
        if marker != last:
            dashboard_snapshot(session=session, query=DashboardQuery(window="15m", buckets=68), now=datetime.now(UTC))
            last, refreshes = marker, refreshes + 1
    print(refreshes, flush=True)
    time.sleep(max(0.0, interval - (time.perf_counter() - started)))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start (exit status {proc.poll()})")


async def load(url: str, key: str, *, concurrency: int, duration: float) -> float:
    """req/s of `concurrency` clients sending small chat calls for `duration` seconds (only 200s count)."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    headers = {"authorization": f"Bearer {key}", "x-workflow-tag": "bench-polling"}
    done = 0
    deadline = time.perf_counter() + duration

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            response = await http.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            if response.status_code == 200:
                done += 1

    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records to fill (default 1000000)")
    parser.add_argument("--days", type=float, default=30.0, help="spread them over this many days (default 30)")
    parser.add_argument("--database-url", help="database (default: a new SQLite file in a temporary folder)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each lane (default 3)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load a round (default 10)")
    parser.add_argument("--concurrency", type=int, default=16, help="clients at once (default 16)")
    args = parser.parse_args(argv)
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="tokensense-poll-"))
    url = args.database_url or f"sqlite:///{tmp / 'tokensense.db'}"
    console.print(f"database: {display_url(url)}")
    engine = make_engine(url)
    init_db(engine)
    now = datetime.now(UTC)
    reset(engine, now=now, days=args.days)
    if args.records:
        bulk_fill(engine, records=args.records, now=now, days=args.days, console=console)
        with engine.begin() as connection:
            written = rollups.rebuild_rollups(connection)
            if engine.dialect.name == "postgresql":
                connection.execute(text("ANALYZE usage"))
                connection.execute(text("ANALYZE usage_rollup"))
        console.print(f"rollups: {written:,} rows")
    engine.dispose()

    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSENSE_") and not k.endswith("_API_KEY")}
    fake = subprocess.Popen([sys.executable, "-m", "tokensense.demo.fakeprovider", "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    assert fake.stdout is not None
    fake_url = fake.stdout.readline().strip().rsplit(" ", 1)[-1]
    env.update(TOKENSENSE_HOME=str(tmp / "home"), TOKENSENSE_DATABASE_URL=url, OPENAI_API_KEY="sk-bench",
               TOKENSENSE_OPENAI_BASE_URL=f"{fake_url}/openai")
    created = subprocess.run([str(BIN / "tokensense"), "keys", "create", "bench-polling", "--json"], env=env,
                             capture_output=True, text=True, check=True)
    key = json.loads(created.stdout)["key"]
    port = free_port()
    gateway = subprocess.Popen([str(BIN / "tokensense"), "serve", "--port", str(port)], env=env, cwd=tmp,
                               stdout=(tmp / "gateway.log").open("w"), stderr=subprocess.STDOUT)
    gateway_url = f"http://127.0.0.1:{port}"
    results: dict[str, list[float]] = {"alone": [], "dashboard polling": []}
    refreshes = 0
    try:
        wait_healthy(f"{gateway_url}/health", gateway, "the gateway")
        asyncio.run(load(gateway_url, key, concurrency=args.concurrency, duration=2))  # warm-up
        for _ in range(args.rounds):
            results["alone"].append(asyncio.run(load(gateway_url, key, concurrency=args.concurrency,
                                                     duration=args.duration)))
            poller = subprocess.Popen([sys.executable, "-c", POLLER, url, str(POLL_INTERVAL)], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, text=True)
            try:
                assert poller.stdout is not None
                poller.stdout.readline()  # its first poll has run: the load meets a polling dashboard
                results["dashboard polling"].append(asyncio.run(load(gateway_url, key, concurrency=args.concurrency,
                                                                     duration=args.duration)))
            finally:
                poller.terminate()
                out, _ = poller.communicate(timeout=10)
                lines = out.split()
                refreshes += int(lines[-1]) if lines else 0
    finally:
        for proc in (gateway, fake):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    table = Table(title=f"{args.records:,} records, {display_url(url).split(':')[0]}, {args.concurrency} clients, "
                        f"{args.rounds} x {args.duration:g} s a lane")
    table.add_column("lane")
    table.add_column("req/s by round", justify="right")
    table.add_column("median", justify="right")
    for lane, values in results.items():
        table.add_row(lane, ", ".join(f"{v:,.0f}" for v in values), f"{statistics.median(values):,.0f}")
    console.print(table)
    ratio = statistics.median(results["dashboard polling"]) / statistics.median(results["alone"])
    console.print(f"with the dashboard polling every {POLL_INTERVAL:g} s ({refreshes} full refreshes): "
                  f"x{ratio:.3f} of the req/s alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
