"""Benchmark the dashboard's queries: fill a database with synthetic usage, time one full refresh.

    .venv/bin/python scripts/bench_dashboard.py                  # 200,000 records in a temporary SQLite file
    .venv/bin/python scripts/bench_dashboard.py --records 50000 --runs 9
    .venv/bin/python scripts/bench_dashboard.py --database-url postgresql://... --keep

A "full refresh" is everything one dashboard poll runs when something changed
(`tokensense.storage.analytics.dashboard_snapshot`: change marker, window totals,
grouped rows, sparkline series, key budgets, request log). An idle poll runs
only the change marker. Each is timed `--runs` times; the median is reported.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import Engine, delete, insert
from sqlmodel import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokensense.storage.analytics import DRILL_PATH, WINDOWS, DashboardQuery, change_marker, dashboard_snapshot
from tokensense.storage.db import display_url, init_db, make_engine
from tokensense.storage.models import ApiKey, Usage

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


def synthetic_records(count: int, *, now: datetime, days: float, seed: int) -> list[dict]:
    """`count` usage rows spread uniformly over the `days` before `now`."""
    rng = random.Random(seed)
    workflows = list(WORKFLOWS)
    rows = []
    for _ in range(count):
        provider, model, input_price, output_price = rng.choice(MODELS)
        key_index = rng.randrange(len(KEYS))
        workflow = rng.choice(workflows) if rng.random() < 0.85 else None
        input_tokens = rng.randrange(50, 8000)
        output_tokens = rng.randrange(5, 2000)
        status = 200 if rng.random() < 0.96 else rng.choice([400, 429, 500, 502])
        rows.append(
            {
                "request_id": f"{rng.getrandbits(64):016x}",
                "created_at": now - timedelta(seconds=rng.random() * days * 86400),
                "key_id": f"bench-key-{key_index}",
                "key_name": KEYS[key_index][0],
                "provider": provider,
                "model": model,
                "endpoint": "/v1/chat/completions",
                "status": status,
                "stream": rng.random() < 0.5,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cost_usd": input_tokens * input_price + output_tokens * output_price,
                "latency_ms": rng.uniform(80, 6000),
                "ttft_ms": rng.uniform(40, 900),
                "workflow": workflow,
                "step": rng.choice(WORKFLOWS[workflow]) if workflow else None,
                "execution_id": f"{workflow}-{rng.randrange(2000):05d}" if workflow else None,
                "source": rng.choice(SOURCES),
                "project": rng.choice(PROJECTS),
            }
        )
    return rows


def fill(engine: Engine, *, records: int, batch: int, now: datetime, days: float, console: Console) -> None:
    """Replace the bench keys and all usage records with `records` synthetic ones."""
    with Session(engine) as session:
        session.exec(delete(Usage))  # type: ignore[call-overload]
        session.exec(delete(ApiKey).where(ApiKey.name.in_([name for name, _, _ in KEYS])))  # type: ignore[call-overload, attr-defined]
        for index, (name, budget, period) in enumerate(KEYS):
            session.add(
                ApiKey(
                    id=f"bench-key-{index}",
                    name=name,
                    key_hash=f"bench-hash-{index}",
                    key_prefix="tsk_bench",
                    budget_usd=budget,
                    budget_period=period,
                    created_at=now - timedelta(days=days),
                )
            )
        session.commit()

    columns = [TextColumn("inserting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("insert", total=records)
        done = 0
        while done < records:
            size = min(batch, records - done)
            rows = synthetic_records(size, now=now, days=days, seed=done)
            with engine.begin() as connection:
                connection.execute(insert(Usage), rows)
            done += size
            progress.update(task, completed=done)


def median_ms(run: Callable[[], object], *, runs: int) -> tuple[float, float, float]:
    """(median, min, max) wall time of `run` in milliseconds."""
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings), min(timings), max(timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="usage records to insert (default 200000)")
    parser.add_argument("--batch", type=int, default=5_000, help="rows per INSERT batch (default 5000)")
    parser.add_argument("--days", type=float, default=30.0, help="spread the records over this many days (default 30)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per measurement (default 7)")
    parser.add_argument("--database-url", help="database to fill (default: a new SQLite file in a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary SQLite file and print its path")
    parser.add_argument("--no-fill", action="store_true", help="time the queries on the database as it is")
    args = parser.parse_args(argv)

    console = Console()
    tmpdir = None
    url = args.database_url
    if url is None:
        tmpdir = tempfile.mkdtemp(prefix="tokensense-bench-")
        url = f"sqlite:///{Path(tmpdir) / 'bench.db'}"
    engine = make_engine(url)
    init_db(engine)
    now = datetime.now(UTC)
    console.print(f"database: {display_url(url)}")

    if not args.no_fill:
        started = time.perf_counter()
        fill(engine, records=args.records, batch=args.batch, now=now, days=args.days, console=console)
        elapsed = time.perf_counter() - started
        console.print(f"inserted {args.records:,} records in {elapsed:.1f} s ({args.records / elapsed:,.0f} rows/s)")

    with Session(engine) as session:
        marker = change_marker(session=session)
    console.print(f"usage rows: {marker.usage_count:,}, keys: {marker.key_count}")

    def full_refresh(query: DashboardQuery) -> Callable[[], object]:
        def run() -> object:
            with Session(engine) as session:
                return dashboard_snapshot(session=session, query=query, now=now)

        return run

    def idle_poll() -> object:
        with Session(engine) as session:
            return change_marker(session=session)

    # The busiest steps of the busiest workflow, for the drill-down rows.
    with Session(engine) as session:
        top = dashboard_snapshot(session=session, query=DashboardQuery(window="all"), now=now)
        workflow = top.groups[0].value if top.groups else None
        step_query = DashboardQuery(window="all", group_by="step", filters=((DRILL_PATH[0], workflow),))
        steps = dashboard_snapshot(session=session, query=step_query, now=now)
        step = steps.groups[0].value if steps.groups else None

    measurements: list[tuple[str, tuple[float, float, float]]] = [
        ("idle poll (change marker only)", median_ms(idle_poll, runs=args.runs)),
    ]
    for window in WINDOWS:
        query = DashboardQuery(window=window, buckets=68)
        measurements.append((f"full refresh, window {window}, by workflow", median_ms(full_refresh(query), runs=args.runs)))
    for field in ("model", "key_name", "execution_id"):
        query = DashboardQuery(window="all", group_by=field, buckets=68)
        measurements.append((f"full refresh, window all, by {field}", median_ms(full_refresh(query), runs=args.runs)))
    drill = DashboardQuery(window="all", group_by="execution_id", filters=(("workflow", workflow), ("step", step)), buckets=68)
    measurements.append(
        (f"full refresh, window all, executions of {workflow} › {step}", median_ms(full_refresh(drill), runs=args.runs))
    )

    table = Table(title=f"dashboard queries, {marker.usage_count:,} records, {args.runs} runs each")
    table.add_column("measurement")
    table.add_column("median ms", justify="right")
    table.add_column("min ms", justify="right")
    table.add_column("max ms", justify="right")
    for name, (median, low, high) in measurements:
        table.add_row(name, f"{median:.1f}", f"{low:.1f}", f"{high:.1f}")
    console.print(table)

    engine.dispose()
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
