"""`tokensense report`: spend over a period by attribution, with totals and the change against the previous period.

Built on the public queries of `tokensense.storage.analytics` (`group_usage`, `usage_totals`). They take a start
and no end, so the previous period is "since its start" minus "since the current period's start"; the two are
read until the current period reads the same before and after, so a record written meanwhile by a running
gateway is never counted in the wrong period.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from tokensense.cli.common import FORMATTER, CliError, as_utc, open_session, parse_since

if TYPE_CHECKING:
    from sqlmodel import Session

FORMATS = ("md", "csv", "json")
ALIASES = {"key": "key_name"}
_READS = 5  # attempts at a consistent read while records are being written
_NONE = "(none)"  # a group of records without the field (no x-workflow-tag, ...)

Key = tuple[str | None, ...]


@dataclass(frozen=True)
class Amounts:
    """What the records of one group (or all) used in one period."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def __sub__(self, other: Amounts) -> Amounts:
        return Amounts(
            self.requests - other.requests,
            self.input_tokens - other.input_tokens,
            self.output_tokens - other.output_tokens,
            round(self.cost_usd - other.cost_usd, 9),  # float sums: no -0.0000000001
        )


@dataclass(frozen=True)
class ReportRow:
    values: Key
    current: Amounts
    previous: Amounts

    @property
    def change(self) -> float | None:
        return change(self.current.cost_usd, self.previous.cost_usd)


@dataclass(frozen=True)
class Report:
    fields: list[str]
    start: datetime
    end: datetime
    previous_start: datetime
    rows: list[ReportRow]
    total: ReportRow
    unpriced: int = 0
    """Calls in the current period no price was known for (not in the costs)."""
    previous_unpriced: int = 0
    notes: list[str] = field(default_factory=list)


def change(current: float, previous: float) -> float | None:
    """Relative change of the cost (0.25 = +25 %); None when there was nothing before to compare with."""
    if previous <= 0:
        return None
    return current / previous - 1.0


def group_fields(by: Iterable[str]) -> list[str]:
    """`workflow,model` → the analytics fields, aliases resolved; CliError naming the allowed ones."""
    from tokensense.storage.cuts import GROUP_FIELDS  # analytics.GROUP_FIELDS, without importing SQLAlchemy

    fields: list[str] = []
    for raw in by:
        name = ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if name not in GROUP_FIELDS:
            raise CliError(f"cannot report by {raw!r}; allowed fields: {', '.join(GROUP_FIELDS)} (and key)")
        if name not in fields:
            fields.append(name)
    if not fields:
        raise CliError(f"give at least one field to report by: {', '.join(GROUP_FIELDS)}")
    return fields


class Reader(Protocol):
    """Where a report's figures come from: the amounts of every combination of `fields`, and the totals
    (`requests`, `input_tokens`, `output_tokens`, `cost_usd`, `unpriced`), since a time."""

    def grouped(self, fields: Sequence[str], since: datetime) -> dict[Key, Amounts]: ...

    def totals(self, since: datetime) -> Any: ...


class SessionReader:
    """Through `tokensense.storage.analytics` (SQLAlchemy): `group_usage` level by level, `usage_totals`."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def grouped(self, fields: Sequence[str], since: datetime,
                filters: Mapping[str, str | None] | None = None) -> dict[Key, Amounts]:
        """Amounts since `since` for every combination of `fields` that has records (one query per level)."""
        from tokensense.storage.analytics import group_usage

        found: dict[Key, Amounts] = {}
        for row in group_usage(session=self.session, by=fields[0], since=since, filters=filters, limit=None):
            amounts = Amounts(row.requests, row.input_tokens, row.output_tokens, row.cost_usd)
            if len(fields) == 1:
                found[(row.value,)] = amounts
                continue
            deeper = self.grouped(fields[1:], since, {**(filters or {}), fields[0]: row.value})
            found.update({(row.value, *key): value for key, value in deeper.items()})
        return found

    def totals(self, since: datetime) -> Any:
        from tokensense.storage.analytics import usage_totals

        return usage_totals(session=self.session, since=since)


class LiteReader:
    """Through `tokensense.storage.lite` (the database driver alone, no SQLAlchemy): every combination of
    `fields` in one grouped query of the rollups; `Unsupported` for execution ids (only records have them)."""

    def __init__(self, connection: Any, dialect: str) -> None:
        self.connection = connection
        self.dialect = dialect

    def grouped(self, fields: Sequence[str], since: datetime) -> dict[Key, Amounts]:
        from tokensense.storage import lite

        rows, _ = lite.grouped_report(self.connection, self.dialect, fields=fields, since=since)
        return {tuple(row[name] for name in fields): Amounts(row["requests"], row["input_tokens"],
                                                            row["output_tokens"], row["cost_usd"]) for row in rows}

    def totals(self, since: datetime) -> Any:
        from types import SimpleNamespace

        from tokensense.storage import lite

        return SimpleNamespace(**lite.totals(self.connection, self.dialect, since=since))


def build_report(*, session: Session | None = None, reader: Reader | None = None, fields: list[str],
                 start: datetime, end: datetime) -> Report:
    """Spend by `fields` from `start` to now (`end`), and in the period of the same length before it (read through
    `reader`, else `session`)."""
    if reader is None:
        assert session is not None, "give a session or a reader"
        reader = SessionReader(session)
    start, end = as_utc(start), as_utc(end)
    previous_start = start - (end - start)
    for _ in range(_READS):
        current = reader.grouped(fields, start)
        current_totals = reader.totals(start)
        both = reader.grouped(fields, previous_start)
        both_totals = reader.totals(previous_start)
        if reader.grouped(fields, start) == current and reader.totals(start) == current_totals:
            break  # nothing was written meanwhile: `both` holds exactly `current` of this period
    else:
        raise CliError("records kept arriving while the report was read; run it again")
    previous = {key: amounts - current.get(key, Amounts()) for key, amounts in both.items()}
    previous = {key: amounts for key, amounts in previous.items() if amounts.requests}
    keys = set(current) | set(previous)
    rows = [ReportRow(key, current.get(key, Amounts()), previous.get(key, Amounts())) for key in keys]
    rows.sort(key=_order(rows, len(fields)))

    def amounts(totals: Any) -> Amounts:
        return Amounts(totals.requests, totals.input_tokens, totals.output_tokens, round(totals.cost_usd, 9))

    total = ReportRow(tuple("TOTAL" for _ in fields), amounts(current_totals),
                      amounts(both_totals) - amounts(current_totals))
    return Report(fields, start, end, previous_start, rows, total, current_totals.unpriced,
                  both_totals.unpriced - current_totals.unpriced)


def _order(rows: list[ReportRow], depth: int) -> Any:
    """Groups by cost (this period, then the previous one), costliest first, level by level: a workflow's models
    stay together under it, in the workflow's order."""
    weight: dict[Key, tuple[float, float]] = {}
    for row in rows:
        for level in range(1, depth + 1):
            prefix = row.values[:level]
            cost, before = weight.get(prefix, (0.0, 0.0))
            weight[prefix] = (cost + row.current.cost_usd, before + row.previous.cost_usd)

    def key(row: ReportRow) -> tuple[Any, ...]:
        parts: list[Any] = []
        for level in range(1, depth + 1):
            cost, before = weight[row.values[:level]]
            parts += [-cost, -before, row.values[level - 1] is None, row.values[level - 1] or ""]
        return tuple(parts)

    return key


# --- formats -----------------------------------------------------------------


def _name(value: str | None) -> str:
    return _NONE if value is None else value


def _money(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:,.6f}"


def _percent(value: float | None, current: float) -> str:
    if value is None:
        return "new" if current > 0 else "-"
    return f"{value * 100:+.1f}%"


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def format_markdown(report: Report) -> str:
    """A Markdown table, ready to paste: one row per group, then the totals."""
    headers = [f.replace("_", " ").capitalize() for f in report.fields]
    headers += ["Requests", "Input tokens", "Output tokens", "Cost", "Previous period", "Change"]
    lines = [
        f"**TokenSense spend, {_day(report.start)} to {_day(report.end)} UTC** "
        f"(previous period: {_day(report.previous_start)} to {_day(report.start)})",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i < len(report.fields) else "---:" for i in range(len(headers))) + "|",
    ]
    for row in [*report.rows, report.total]:
        bold = row is report.total
        cells = ["**Total**" if bold and i == 0 else ("" if bold else _name(v).replace("|", "\\|"))
                 for i, v in enumerate(row.values)]
        cells += [f"{row.current.requests:,}", f"{row.current.input_tokens:,}", f"{row.current.output_tokens:,}",
                  _money(row.current.cost_usd), _money(row.previous.cost_usd),
                  _percent(row.change, row.current.cost_usd)]
        if bold:
            cells = [f"**{c}**" if c and not c.startswith("**") else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if report.unpriced or report.previous_unpriced:
        lines += ["", f"{report.unpriced} calls this period and {report.previous_unpriced} in the previous one "
                      "had no known price and are not in the costs."]
    return "\n".join(lines)


def _row_fields(row: ReportRow) -> dict[str, Any]:
    return {
        "requests": row.current.requests,
        "input_tokens": row.current.input_tokens,
        "output_tokens": row.current.output_tokens,
        "cost_usd": row.current.cost_usd,
        "previous_requests": row.previous.requests,
        "previous_cost_usd": row.previous.cost_usd,
        "change": None if row.change is None else round(row.change, 6),
    }


def format_csv(report: Report) -> str:
    """CSV with a header row; the last row is the totals (`TOTAL` in every group column)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*report.fields, "requests", "input_tokens", "output_tokens", "cost_usd", "previous_requests",
                     "previous_cost_usd", "change"])
    for row in [*report.rows, report.total]:
        values = _row_fields(row)
        writer.writerow([*(_name(v) for v in row.values), *("" if v is None else v for v in values.values())])
    return out.getvalue().rstrip("\n")


def format_json(report: Report) -> str:
    """The report as one JSON object: periods, rows (null for a group without the field) and totals."""
    return json.dumps({
        "period": {"start": report.start.isoformat(), "end": report.end.isoformat()},
        "previous_period": {"start": report.previous_start.isoformat(), "end": report.start.isoformat()},
        "by": report.fields,
        "rows": [{**dict(zip(report.fields, row.values, strict=True)), **_row_fields(row)} for row in report.rows],
        "totals": {**_row_fields(report.total), "unpriced": report.unpriced,
                   "previous_unpriced": report.previous_unpriced},
    }, indent=2)


FORMATTERS = {"md": format_markdown, "csv": format_csv, "json": format_json}


def _cmd_report(args: argparse.Namespace) -> int:
    fields = group_fields(f for chunk in args.by or ["workflow,model"] for f in chunk.split(",") if f.strip())
    end = datetime.now(UTC)
    start = parse_since(args.since, now=end)
    if start >= end:
        raise CliError(f"--since {args.since!r} is not in the past")
    from tokensense.cli.usage import lite_read

    # The rollups through the driver alone (no SQLAlchemy: a quick start); else (execution ids, a database to
    # create or upgrade, an error to report) the full path.
    report = lite_read(args, lambda connection, dialect: build_report(
        reader=LiteReader(connection, dialect), fields=fields, start=start, end=end))
    if report is None:
        with open_session(args) as session:
            report = build_report(session=session, fields=fields, start=start, end=end)
    print(FORMATTERS[args.format](report))
    return 0


def add_report_parser(commands: argparse._SubParsersAction, database: argparse.ArgumentParser) -> None:
    """Register `report`."""
    report = commands.add_parser(
        "report", parents=[database], help="spend over a period by attribution, with totals and the change against "
        "the previous one", formatter_class=FORMATTER,
        description="Spend from --since until now, grouped by attribution fields, with the totals and each group's "
        "cost in the period of the same length just before (and the change). Times are UTC.",
        epilog=(
            "fields: workflow, step, execution_id, model, provider, project, source, key\n\n"
            "examples:\n"
            "  tokensense report --since 30d --by workflow,model --format md   # paste into a finance thread\n"
            "  tokensense report --since 7d --by project --format csv > spend.csv\n"
            "  tokensense report --since 2026-11-01 --by key --format json"
        ),
    )
    report.add_argument("--since", metavar="WHEN", default="30d",
                        help="start of the period: 30m, 24h, 7d, 30d, ... ago, or an ISO time (default: 30d)")
    report.add_argument("--by", metavar="FIELD[,FIELD]", action="append", default=None,
                        help="group by these fields, outermost first (default: workflow,model)")
    report.add_argument("--format", choices=FORMATS, default="md", help="md (a Markdown table; default), csv or json")
    report.set_defaults(handler=_cmd_report)
