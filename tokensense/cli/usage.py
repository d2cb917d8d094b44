"""`tokensense usage`: usage records and grouped totals, and the quarantined-record warning."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tokensense.cli.common import (
    FORMATTER,
    CliError,
    cell,
    money,
    open_session,
    parse_since,
    positive_int,
    print_csv,
    print_json,
    print_table,
)
from tokensense.storage.cuts import USAGE_GROUP_FIELDS, as_utc, from_epoch, normalize_group_fields

# `tokensense usage --by ... --since ...` answers from the rollups through the driver alone (storage/lite.py):
# SQLAlchemy, SQLModel, pydantic and the settings model are imported only by the other paths.

_AGGREGATES = ("requests", "input_tokens", "output_tokens", "cost_usd", "unpriced")


def _media_cell(r: dict[str, Any]) -> str:
    """The media units of one record: `2 images`, `44 chars, 3.6 s`, or `-`."""
    parts = []
    if r.get("images"):
        parts.append(f"{r['images']} image{'s' if r['images'] != 1 else ''}")
    if r.get("characters"):
        parts.append(f"{r['characters']} chars")
    if r.get("seconds"):
        parts.append(f"{r['seconds']:.1f} s")
    return ", ".join(parts) or "-"


def _print_usage_records(records: list[dict[str, Any]]) -> None:
    headers = ["TIME (UTC)", "KEY", "PROVIDER", "MODEL", "ENDPOINT", "STATUS", "IN", "OUT", "MEDIA", "COST", "LATENCY",
               "WORKFLOW", "STEP"]
    rows = [
        [
            as_utc(datetime.fromisoformat(r["created_at"])).strftime("%Y-%m-%d %H:%M:%S"),
            cell(r["key_name"]),
            cell(r["provider"]),
            cell(r["model"]),
            cell(r["endpoint"]),
            cell(r["status"]),
            str(r["input_tokens"]),
            str(r["output_tokens"]),
            _media_cell(r),
            "unpriced" if r["cost_usd"] is None else money(r["cost_usd"], 6),
            "-" if r["latency_ms"] is None else f"{r['latency_ms']:.0f} ms",
            cell(r["workflow"]),
            cell(r["step"]),
        ]
        for r in records
    ]
    print_table(headers, rows, right=["STATUS", "IN", "OUT", "COST", "LATENCY"])
    total = sum(r["cost_usd"] or 0.0 for r in records)
    unpriced = sum(1 for r in records if r["cost_usd"] is None)
    print(f"\n{len(records)} requests, {money(total, 6)}" + _unpriced_note(unpriced))


def _unpriced_note(unpriced: int) -> str:
    """`, 3 unpriced (no price known; not in the total)` or nothing."""
    return f", {unpriced} unpriced (no price known; not in the total)" if unpriced else ""


def _print_usage_groups(fields: list[str], groups: list[dict[str, Any]]) -> None:
    headers = [*(f.upper() for f in fields), "REQUESTS", "IN", "OUT", "COST"]
    rows = [
        [
            *(cell(g[f]) for f in fields),
            str(g["requests"]),
            str(g["input_tokens"]),
            str(g["output_tokens"]),
            money(g["cost_usd"], 6) + (f" +{g['unpriced']} unpriced" if g.get("unpriced") else ""),
        ]
        for g in groups
    ]
    print_table(headers, rows, right=["REQUESTS", "IN", "OUT", "COST"])
    requests = sum(g["requests"] for g in groups)
    total = sum(g["cost_usd"] for g in groups)
    unpriced = sum(g.get("unpriced", 0) for g in groups)
    print(f"\n{len(groups)} groups, {requests} requests, {money(total, 6)}" + _unpriced_note(unpriced))


def _cmd_usage(args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None
    by = [f for chunk in args.by or () for f in chunk.split(",") if f.strip()] or None
    fields = normalize_group_fields(by) if by else None
    quick = _grouped_from_rollups(args, fields, since) if fields else _records_lite(args, since)
    if quick is not None:
        rows, pruned = quick
    else:
        from tokensense.storage import analytics, repo

        with open_session(args) as session:
            rows = repo.query_usage(session=session, since=since, by=fields, limit=args.limit)
            pruned = analytics.raw_records_before(session=session)
    if args.json:
        print_json(rows)
    elif args.csv:
        if fields:
            print_csv([*fields, *_AGGREGATES], rows)
        else:
            from tokensense.storage.lite import USAGE_COLUMNS

            print_csv([*USAGE_COLUMNS, "unpriced"], rows)  # repo.USAGE_RECORD_FIELDS (no SQLModel import)
    elif not rows:
        print("No usage recorded" + (f" since {since:%Y-%m-%d %H:%M:%S} UTC." if since else " yet."))
    elif fields:
        _print_usage_groups(fields, rows)
    else:
        _print_usage_records(rows)
    _warn_pruned(pruned, since, grouped=fields is not None)
    _warn_quarantined()
    return 0


def lite_read[T](args: argparse.Namespace, read: Callable[[Any, str], T]) -> T | None:
    """`read(connection, dialect)` on the command's database through `storage.lite` (the driver alone: no
    SQLAlchemy, SQLModel or pydantic), or None: take the full path (a field only records have, a database to
    create or upgrade, a URL or error the full path must handle)."""
    from tokensense.storage import lite

    url = _database_url(args)
    if url is None:
        return None
    try:
        connection, dialect = lite.connect(url)
    except lite.Unsupported:
        return None
    try:
        if not lite.schema_is_current(connection):
            return None
        return read(connection, dialect)
    except Exception:  # lite.Unsupported, or a database error the full path reports in its own words
        return None
    finally:
        connection.close()


def _grouped_from_rollups(args: argparse.Namespace, fields: list[str],
                          since: datetime | None) -> tuple[list[dict[str, Any]], datetime | None] | None:
    """The groups and the retention horizon read by `storage.lite`, or None (the full path)."""
    from tokensense.storage import lite

    return lite_read(args, lambda connection, dialect: lite.grouped_report(
        connection, dialect, fields=fields, since=since, limit=args.limit))


def _records_lite(args: argparse.Namespace, since: datetime | None) -> tuple[list[dict[str, Any]], datetime | None] | None:
    """The records (newest first) and the retention horizon read by `storage.lite`, or None (the full path)."""
    from tokensense.storage import lite

    def read(connection: Any, dialect: str) -> tuple[list[dict[str, Any]], datetime | None]:
        horizon = lite.raw_horizon(connection)
        rows = lite.records(connection, dialect, since=since, limit=args.limit)
        return rows, None if horizon is None else from_epoch(horizon)

    return lite_read(args, read)


def _environment(name: str) -> str | None:
    """`TOKENSENSE_<NAME>` as the settings model reads it (any case); `KeyError` when set twice in different cases."""
    found = [value for key, value in os.environ.items() if key.lower() == f"tokensense_{name}"]
    if len(found) > 1:
        raise KeyError(name)
    return found[0] if found else None


def _home_from_environment() -> Path:
    """TOKENSENSE_HOME as `Settings.home` reads it, without importing the settings model (pydantic)."""
    home = _environment("home")
    return Path(os.path.expanduser(home)) if home is not None else Path.home() / ".tokensense"


def _home() -> Path:
    try:
        return _home_from_environment()
    except KeyError:
        from tokensense.settings import get_settings

        return get_settings().home


def _database_url(args: argparse.Namespace) -> str | None:
    """The database `open_session` would open (`--database-url`, else `Settings.effective_database_url`);
    None when only the settings model can tell."""
    url = getattr(args, "database_url", None)
    if url:
        return str(url)
    try:
        url = _environment("database_url")
        home = _home_from_environment()
    except KeyError:
        return None
    return url or f"sqlite:///{home / 'tokensense.db'}"


def _warn_pruned(pruned: datetime | None, since: datetime | None, *, grouped: bool) -> None:
    """One line on stderr when the window reaches records that retention deleted."""
    if pruned is None or (since is not None and since >= pruned):
        return
    when = f"{pruned:%Y-%m-%d %H:%M} UTC"
    if grouped:
        start = "" if since is None else f"; the window counts from {since:%Y-%m-%d %H}:00 UTC (hour rollups)"
        print(f"records before {when} were pruned (retention): totals come from the rollups{start}",
              file=sys.stderr)
    else:
        print(f"records before {when} were pruned (retention): they are not listed; --by reports still count them",
              file=sys.stderr)


def _cmd_usage_prune(args: argparse.Namespace) -> int:
    from tokensense.storage.retention import prune_usage

    now = datetime.now(UTC)
    try:
        older_than = now - parse_since(args.older_than, now=now)
    except CliError:
        raise CliError(f"cannot read --older-than {args.older_than!r}; give an age such as 90d, 12w or 36h") from None
    if older_than <= timedelta(0):
        raise CliError(f"--older-than {args.older_than!r} is not in the past; give an age such as 90d")
    from sqlalchemy import Engine

    with open_session(args) as session:
        engine = session.get_bind()
    assert isinstance(engine, Engine)
    result = prune_usage(engine, older_than=older_than, now=now, batch=args.batch)
    if args.json:
        print_json({"raw_before": result.raw_before.isoformat(), "records": result.records,
                    "minute_rollup_rows": result.minute_rows, "resource_rows": result.resource_rows})
    else:
        print(f"Deleted {result.records} usage records from before {result.raw_before:%Y-%m-%d %H:%M} UTC "
              f"(and {result.minute_rows} minute rollup rows); reports keep counting them from the hour rollups.")
        if result.resource_rows:
            print(f"Deleted {result.resource_rows} rows of batch jobs, batch files and owned objects of that age.")
    return 0


def _warn_quarantined() -> None:
    """One line on stderr when records were quarantined (the report above does not hold them)."""
    from tokensense.metering.dead_letter import DEAD_LETTER_FILE, quarantined_count

    home = _home()
    count = quarantined_count(home)
    if count:
        print(f"{count} usage record{'s' if count != 1 else ''} quarantined: the database refused "
              f"{'them' if count != 1 else 'it'}; see {home / DEAD_LETTER_FILE}", file=sys.stderr)


def add_usage_parser(commands: argparse._SubParsersAction, database: argparse.ArgumentParser) -> None:
    """Register `usage`."""
    usage = commands.add_parser(
        "usage", parents=[database], help="report usage and cost", formatter_class=FORMATTER,
        description="Report usage records, or totals grouped by attribution fields. Times are UTC.",
        epilog=(
            f"group fields: {', '.join(USAGE_GROUP_FIELDS)} (key = key_name)\n\n"
            "examples:\n"
            "  tokensense usage --since 1h\n"
            "  tokensense usage --since 7d --by workflow,step\n"
            "  tokensense usage --since 2025-01-01 --by model --csv > spend.csv\n"
            "  tokensense usage prune --older-than 90d"
        ),
    )
    commands_of_usage = usage.add_subparsers(dest="usage_command", metavar="{prune}")
    prune = commands_of_usage.add_parser(
        "prune", parents=[database], help="delete raw records older than an age (rollups are kept)",
        formatter_class=FORMATTER,
        description=("Delete the usage records (and per-minute rollups) from before the whole hour AGE ago, in "
                     "small batches, while the gateway runs. Reports keep counting them from the hour rollups; "
                     "only the request log and record listings lose them. [retention] raw_days in config.toml "
                     "has the gateway do it every hour."),
        epilog="example:\n  tokensense usage prune --older-than 90d",
    )
    prune.add_argument("--older-than", metavar="AGE", required=True, help="90d, 12w, 36h, ... (or an ISO time)")
    prune.add_argument("--batch", metavar="N", type=positive_int, default=2000, help="records per transaction")
    prune.add_argument("--json", action="store_true", help="print what was deleted as JSON")
    prune.set_defaults(handler=_cmd_usage_prune)
    usage.add_argument("--since", metavar="WHEN", help="30m, 1h, 24h, 7d, ... ago, or an ISO time (default: all)")
    usage.add_argument("--by", metavar="FIELD[,FIELD]", action="append", help="group by these fields")
    usage.add_argument("--limit", metavar="N", type=positive_int, help="at most N records (newest) or groups (costliest)")
    formats = usage.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="print a JSON array")
    formats.add_argument("--csv", action="store_true", help="print CSV with a header row")
    usage.set_defaults(handler=_cmd_usage)
