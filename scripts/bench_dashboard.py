"""Benchmark reports at scale: fill a database with synthetic usage in bulk, time the dashboard and `tokensense usage`.

    .venv/bin/python scripts/bench_dashboard.py                        # 200,000 records in a temporary SQLite file
    .venv/bin/python scripts/bench_dashboard.py --records 5000000 --keep
    .venv/bin/python scripts/bench_dashboard.py --records 1000000 --database-url 'postgresql://postgres@127.0.0.1/test?options=-csearch_path%3Dbench'
    .venv/bin/python scripts/bench_dashboard.py --writer 100000        # the record writer's records/s, rollups on and off

The fill is a bulk path: records generated in time order, written with one
executemany per 50,000 rows on a raw SQLite connection (WAL, synchronous off while
filling) or PostgreSQL's COPY, then the rollups built from them in SQL
(`rollups.rebuild_rollups`). A "full refresh" is everything one dashboard poll
runs when something changed (`analytics.dashboard_snapshot`); an idle poll runs only
the change marker. Each is timed `--runs` times and the median reported, read from
the rollups ("rollups") and from the records alone ("records", what every refresh read
before the rollups). `tokensense usage --by ... --since ...` is timed as a whole process.
The machine may be shared: compare the two columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, delete, text
from sqlmodel import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tokensense.storage import rollups  # noqa: E402
from tokensense.storage.analytics import DRILL_PATH, DashboardQuery, change_marker, dashboard_snapshot, grouped_totals  # noqa: E402
from tokensense.storage.db import display_url, init_db, make_engine  # noqa: E402
from tokensense.storage.models import ApiKey, Usage, UsageCreate, UsageRollup  # noqa: E402

WORKFLOWS = {
    "support-bot": ["classify", "retrieve", "answer", "escalate"],
    "doc-summarizer": ["chunk", "summarize", "merge"],
    "code-review": ["diff", "review", "comment"],
    "lead-scoring": ["enrich", "score"],
    "nightly-eval": ["generate", "judge"],
}
MODELS = [
    ("openai", "gpt-4o", 2.5e-6, 1e-5),
    ("openai", "gpt-4o-mini", 1.5e-7, 6e-7),
    ("anthropic", "claude-sonnet-4-5", 3e-6, 1.5e-5),
    ("anthropic", "claude-haiku-4-5", 1e-6, 5e-6),
    ("gemini", "gemini-2.5-flash", 3e-7, 2.5e-6),
    ("xai", "grok-4", 3e-6, 1.5e-5),
    ("mistral", "mistral-large-latest", 2e-6, 6e-6),
]
KEYS = [
    ("bench-prod", 500.0, "monthly"),
    ("bench-research", 20.0, "daily"),
    ("bench-ci", None, "total"),
    ("bench-intern", 50.0, "total"),
    ("bench-batch", 200.0, "monthly"),
]
PROJECTS = ["web", "mobile", "internal", None]
SOURCES = ["api", "cron", "notebook", "agent"]
COLUMNS = ("request_id", "attempt", "created_at", "key_id", "key_name", "provider", "model", "endpoint", "status",
           "stream", "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens",
           "images", "characters", "seconds", "cost_usd", "latency_ms", "ttft_ms", "workflow", "step", "execution_id",
           "source", "project")


COMBINATIONS = 4096
"""Distinct attribution combinations (key, model, workflow and step, source, project) the records draw from."""


def _combinations(seed: int) -> list[tuple]:
    """`COMBINATIONS` attribution tuples, each field drawn independently: a worst case for rollups (real
    traffic repeats far fewer combinations: a workflow uses one model, one key, one project)."""
    rng = random.Random(seed)
    combos = []
    for _ in range(COMBINATIONS):
        provider, model, input_price, output_price = rng.choice(MODELS)
        key_index = rng.randrange(len(KEYS))
        workflow = rng.choice(list(WORKFLOWS)) if rng.random() < 0.85 else None
        step = rng.choice(WORKFLOWS[workflow]) if workflow else None
        combos.append((f"bench-key-{key_index}", KEYS[key_index][0], provider, model, input_price, output_price,
                       workflow, step, rng.choice(SOURCES), rng.choice(PROJECTS)))
    return combos


_COMBOS = _combinations(28)


def synthetic_rows(start: int, count: int, *, total: int, first: datetime, span: timedelta, seed: int) -> Iterator[tuple]:
    """Rows `start` .. `start + count` of `total`, spread evenly over `span` from `first`, in time order.

    One random draw per row picks its attribution combination, tokens, status (4%
    errors), price (1% unpriced), latency and an execution id (2,000 per workflow).
    """
    rng = random.Random(seed)
    step_us = span / timedelta(microseconds=1) / total
    for index in range(start, start + count):
        r = rng.getrandbits(64)
        key_id, key_name, provider, model, input_price, output_price, workflow, step, source, project = \
            _COMBOS[r & 0xFFF]
        input_tokens = 50 + (r >> 12) % 7950
        output_tokens = 5 + (r >> 25) % 1995
        draw = (r >> 36) & 0x3FF
        status = 200 if draw < 983 else (400, 429, 500, 502)[draw % 4]
        cost = None if draw < 10 else round(input_tokens * input_price + output_tokens * output_price, 10)
        latency = 80 + (r >> 46) % 6000
        yield (
            f"{index:016x}", 1, first + timedelta(microseconds=int((index + ((r >> 20) & 0xFF) / 256) * step_us)),
            key_id, key_name, provider, model, "/v1/chat/completions", status, draw & 1 == 1, input_tokens,
            output_tokens, 0, 0, 0, 0, 0, 0.0, cost, float(latency), float(40 + latency % 900), workflow, step,
            f"{workflow}-{(r >> 52) % 2000:05d}" if workflow else None, source, project,
        )


def reset(engine: Engine, *, now: datetime, days: float) -> None:
    """Remove all usage, rollups and bench keys; add the bench keys."""
    with Session(engine) as session:
        session.exec(delete(Usage))  # type: ignore[call-overload]
        session.exec(delete(UsageRollup))  # type: ignore[call-overload]
        session.exec(delete(ApiKey).where(ApiKey.name.in_([name for name, _, _ in KEYS])))  # type: ignore[call-overload, attr-defined]
        for index, (name, budget, period) in enumerate(KEYS):
            session.add(ApiKey(id=f"bench-key-{index}", name=name, key_hash=f"bench-hash-{index}", key_prefix="tsk_bench",
                               budget_usd=budget, budget_period=period, created_at=now - timedelta(days=days)))
        session.commit()


def bulk_fill(engine: Engine, *, records: int, now: datetime, days: float, console: Console) -> None:
    """Write `records` rows through the database's bulk path (no ORM, no rollups: they are built afterwards)."""
    first, span = now - timedelta(days=days), timedelta(days=days)
    chunk = 50_000
    connection = engine.raw_connection()
    try:
        postgres = engine.dialect.name == "postgresql"
        cursor = connection.cursor()
        if not postgres:
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.execute("PRAGMA cache_size=-1000000")  # 1 GB: the unique request id index stays in memory
        placeholders = ", ".join("?" * len(COLUMNS))
        done = 0
        started = time.perf_counter()
        while done < records:
            size = min(chunk, records - done)
            rows = synthetic_rows(done, size, total=records, first=first, span=span, seed=done)
            if postgres:
                with cursor.copy(f"COPY usage ({', '.join(COLUMNS)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                    for row in rows:
                        copy.write_row(row)
            else:
                cursor.executemany(
                    f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                    ((*row[:2], row[2].replace(tzinfo=None).isoformat(" ", "microseconds"), *row[3:]) for row in rows),
                )
            connection.commit()
            done += size
            if done % 500_000 == 0 or done == records:
                rate = done / (time.perf_counter() - started)
                console.print(f"  {done:,} records ({rate:,.0f}/s)")
        if not postgres:
            cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        connection.close()


def median_ms(run: Callable[[], object], *, runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def cli_ms(url: str, args: list[str], *, runs: int) -> float:
    """Median wall time of `tokensense usage ARGS` as a whole process (start-up included).

    The package is byte-compiled first: with PYTHONDONTWRITEBYTECODE set, an editable install
    has no `.pyc` and each process would compile it again (80 ms and more).
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "tokensense")], check=True,
                   stdout=subprocess.DEVNULL)
    env = {**os.environ, "TOKENSENSE_DATABASE_URL": url}
    command = [str(ROOT / ".venv" / "bin" / "tokensense"), "usage", *args]
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def bench_reports(engine: Engine, url: str, *, now: datetime, runs: int, console: Console,
                  records_too: bool = True) -> list[tuple[str, str, str]]:
    with Session(engine) as session:
        marker = change_marker(session=session)
        top = dashboard_snapshot(session=session, query=DashboardQuery(window="all"), now=now)
        workflow = top.groups[0].value if top.groups else None
        steps = dashboard_snapshot(session=session, now=now, query=DashboardQuery(
            window="all", group_by="step", filters=((DRILL_PATH[0], workflow),)))
        step = steps.groups[0].value if steps.groups else None
    console.print(f"records: {marker.usage_count:,}")

    def refresh(query: DashboardQuery, *, raw: bool) -> Callable[[], object]:
        def run() -> object:
            with Session(engine) as session:
                return dashboard_snapshot(session=session, query=query, now=datetime.now(UTC), from_records=raw)
        return run

    def idle() -> object:
        with Session(engine) as session:
            return change_marker(session=session)

    def grouped(fields: list[str], since: timedelta, *, raw: bool) -> Callable[[], object]:
        def run() -> object:
            with Session(engine) as session:
                return grouped_totals(session=session, fields=fields, since=datetime.now(UTC) - since, from_records=raw)
        return run

    rows: list[tuple[str, str, str]] = []
    idle_ms = median_ms(idle, runs=runs)
    rows.append(("idle poll (change marker)", f"{idle_ms:,.1f}", "-"))
    queries = [(f"full refresh, window {w}, by workflow", DashboardQuery(window=w, buckets=68)) for w in ("15m", "1h", "24h", "7d", "all")]
    queries += [(f"full refresh, window all, by {f}", DashboardQuery(window="all", group_by=f, buckets=68)) for f in ("model", "key_name")]
    queries.append((f"full refresh, 24h, steps of {workflow}",
                    DashboardQuery(window="24h", group_by="step", filters=(("workflow", workflow),), buckets=68)))
    queries.append((f"full refresh, 24h, executions of {workflow} > {step} (records)",
                    DashboardQuery(window="24h", group_by="execution_id", filters=(("workflow", workflow), ("step", step)), buckets=68)))
    for name, query in queries:
        after = median_ms(refresh(query, raw=False), runs=runs)
        before = median_ms(refresh(query, raw=True), runs=max(1, runs // 3)) if records_too else None
        rows.append((name, f"{after:,.1f}", "-" if before is None else f"{before:,.1f}"))
    for fields, since, label in ((["workflow"], timedelta(hours=24), "24h"), (["workflow", "step"], timedelta(hours=1), "1h"),
                                 (["model", "project"], timedelta(days=7), "7d")):
        after = median_ms(grouped(fields, since, raw=False), runs=runs)
        before = median_ms(grouped(fields, since, raw=True), runs=max(1, runs // 3)) if records_too else None
        rows.append((f"usage --by {','.join(fields)} --since {label}, the query", f"{after:,.1f}",
                     "-" if before is None else f"{before:,.1f}"))
        process = cli_ms(url, ["--by", ",".join(fields), "--since", label, "--json"], runs=3)
        rows.append((f"tokensense usage --by {','.join(fields)} --since {label} --json (process)", f"{process:,.0f}", "-"))
    return rows


def bench_writer(url: str, *, records: int, console: Console) -> list[tuple[str, str, str]]:
    """Records/s through the gateway's writer (UsageRecorder: batches of 500 from a thread), rollups on and off."""
    from tokensense.metering.recorder import UsageRecorder
    from tokensense.storage import repo

    engine = make_engine(url)
    init_db(engine)
    now = datetime.now(UTC)
    rows = []

    def run(label: str) -> float:
        with Session(engine) as session:
            session.exec(delete(Usage))  # type: ignore[call-overload]
            session.exec(delete(UsageRollup))  # type: ignore[call-overload]
            session.commit()
        batch = [UsageCreate(**dict(zip(COLUMNS, row, strict=True)))
                 for row in synthetic_rows(0, records, total=records, first=now - timedelta(minutes=10),
                                           span=timedelta(minutes=10), seed=7)]
        for record in batch:
            record.request_id = uuid.uuid4().hex[:16]
        recorder = UsageRecorder(engine, interval=0.05, max_queue=records + 1)
        started, cpu = time.perf_counter(), time.process_time()
        for record in batch:
            recorder.submit(record)
        recorder.flush(timeout=600)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        recorder.close()
        rate = records / elapsed
        console.print(f"  writer, {label}: {records:,} records in {elapsed:.1f} s = {rate:,.0f} records/s; "
                      f"this process's CPU {cpu * 1e6 / records:.0f} us per record")
        return rate

    with_rollups = run("rollups on")
    original = repo.add_to_rollups
    repo.add_to_rollups = lambda connection, inserted, sign=1: 0  # type: ignore[assignment]
    try:
        without = run("rollups off")
    finally:
        repo.add_to_rollups = original
    rows.append((f"record writer, {records:,} records (records/s)", f"{with_rollups:,.0f}", f"{without:,.0f} (no rollups)"))
    engine.dispose()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="usage records to insert (default 200000)")
    parser.add_argument("--days", type=float, default=30.0, help="spread the records over this many days (default 30)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per measurement (default 7)")
    parser.add_argument("--database-url", help="database to fill (default: a new SQLite file in a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary SQLite file and print its path")
    parser.add_argument("--no-fill", action="store_true", help="time the queries on the database as it is")
    parser.add_argument("--writer", type=int, metavar="N", help="only measure the record writer with N records")
    parser.add_argument("--json", metavar="FILE", help="also write the measurements to FILE as JSON")
    parser.add_argument("--rollups-only", action="store_true", help="skip the (slow) same queries over records only")
    args = parser.parse_args(argv)

    console = Console()
    tmpdir = None
    url = args.database_url
    if url is None:
        tmpdir = tempfile.mkdtemp(prefix="tokensense-bench-")
        url = f"sqlite:///{Path(tmpdir) / 'bench.db'}"
    console.print(f"database: {display_url(url)}")
    title = ""
    if args.writer:
        rows = bench_writer(url, records=args.writer, console=console)
        title = "record writer"
    else:
        engine = make_engine(url)
        init_db(engine)
        now = datetime.now(UTC)
        if not args.no_fill:
            reset(engine, now=now, days=args.days)
            started = time.perf_counter()
            bulk_fill(engine, records=args.records, now=now, days=args.days, console=console)
            filled = time.perf_counter() - started
            started = time.perf_counter()
            with engine.begin() as connection:
                written = rollups.rebuild_rollups(connection)
                if engine.dialect.name == "postgresql":
                    connection.execute(text("ANALYZE usage"))
                    connection.execute(text("ANALYZE usage_rollup"))
            built = time.perf_counter() - started
            console.print(f"filled {args.records:,} records in {filled:.0f} s ({args.records / filled:,.0f}/s); "
                          f"rollups: {written:,} rows in {built:.0f} s")
        rows = bench_reports(engine, url, now=now, runs=args.runs, console=console, records_too=not args.rollups_only)
        title = f"{args.records:,} records over {args.days:g} days, {engine.dialect.name}, median of {args.runs} runs"
        engine.dispose()

    table = Table(title=title)
    table.add_column("measurement")
    table.add_column("rollups (ms)", justify="right")
    table.add_column("records only (ms)", justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"title": title, "rows": rows}, indent=1))

    if tmpdir is not None:
        if args.keep:
            console.print(f"kept {Path(tmpdir) / 'bench.db'}")
        else:
            for path in Path(tmpdir).iterdir():
                path.unlink()
            Path(tmpdir).rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
