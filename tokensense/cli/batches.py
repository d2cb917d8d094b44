"""`tokensense batches`: the batch jobs the gateway follows, their state and what their lines were booked at."""

from __future__ import annotations

import argparse

from tokensense.cli.common import (
    FORMATTER,
    cell,
    format_time,
    money,
    open_session,
    positive_int,
    print_json,
    print_table,
)
from tokensense.storage import batches as store


def _cmd_batches(args: argparse.Namespace) -> int:
    with open_session(args) as session:
        rows = store.list_jobs(session=session, limit=args.limit)
        if args.json:
            print_json(store.job_rows(rows))
            return 0
    if not rows:
        print("No batch job has been created through TokenSense yet.")
        return 0
    table = []
    for job in rows:
        booked = job.booked_at is not None
        table.append(
            [
                job.provider,
                job.id,
                job.state,
                "booked" if booked else "followed",
                str(job.lines_booked) if booked else "-",
                money(job.booked_usd, 6) if booked else "-",
                "-" if booked else money(job.reserved_usd, 6),
                cell(job.workflow),
                cell(job.key_name),
                format_time(job.created_at),
            ]
        )
    print_table(
        ["provider", "job", "state", "tokensense", "lines", "booked", "held", "workflow", "key", "created"],
        table,
        right=["lines", "booked", "held"],
    )
    errors = [job for job in rows if job.error and job.booked_at is None]
    for job in errors:
        print(f"{job.id}: {job.error}")
    return 0


def add_batches_parser(
    commands: argparse._SubParsersAction, database: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Register `batches`."""
    batches = commands.add_parser(
        "batches",
        parents=[database, as_json],
        help="batch jobs the gateway follows, their state and booked cost",
        formatter_class=FORMATTER,
        description="Batch jobs created through TokenSense, newest first: the provider's state, whether their "
        "lines are booked (one usage record per line, endpoint `batch`, at the batch price), what they cost, "
        "and what a job not booked yet holds of its key's budget (its largest cost).",
        epilog="examples:\n  tokensense batches\n  tokensense batches --json --limit 10\n"
        "  tokensense usage --since 7d --by endpoint,workflow   # batch spend is endpoint `batch`",
    )
    batches.add_argument("--limit", metavar="N", type=positive_int, default=100, help="at most N jobs (default 100)")
    batches.set_defaults(handler=_cmd_batches)
