"""`tokensense budgets set|list|remove`: budgets on projects, workflows, sources and each execution."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from tokensense.cli.common import (
    FORMATTER,
    CliError,
    money,
    open_session,
    positive_float,
    print_json,
    print_table,
    show_help,
)
from tokensense.storage.models import BUDGET_PERIODS


def _level(args: argparse.Namespace) -> tuple[str, str | None]:
    """(level, name) from the options: exactly one of --project, --workflow, --source, --each-execution."""
    named = [(level, getattr(args, level)) for level in ("project", "source") if getattr(args, level)]
    if args.each_execution:
        if named:
            raise CliError("--each-execution may go with --workflow (that workflow's runs), not --project or --source")
        return "execution", args.workflow
    if args.workflow:
        named.append(("workflow", args.workflow))
    if len(named) != 1:
        raise CliError("name exactly one of --project NAME, --workflow NAME, --source NAME or --each-execution")
    return named[0]


def budget_rows(session: Any, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every budget: the keys', then those on attribution (stored, then config.toml's), with the spend of their
    current period."""
    from tokensense.config import load_config
    from tokensense.settings import get_settings
    from tokensense.storage.budgets import budget_rows as rows

    settings = get_settings()
    return [
        row.as_dict()
        for row in rows(
            session, configured=load_config(settings).budgets.limits, redis_url=settings.redis_url, now=now, keys=True
        )
    ]


def _cmd_budgets_set(args: argparse.Namespace) -> int:
    from tokensense.storage.budgets import BudgetLimit, set_budget

    level, name = _level(args)
    with open_session(args) as session:
        try:
            row = set_budget(session=session, level=level, name=name, usd=args.usd, period=args.period)
        except ValueError as e:
            raise CliError(str(e)) from None
        limit = BudgetLimit(row.level, row.name, row.usd, row.period)
        if args.json:
            print_json({"id": row.id, **limit.as_dict(), "updated_at": row.updated_at.isoformat()})
        else:
            print(
                f"Budget of {limit.label.replace('`', '')}: {money(row.usd)} "
                f"{_period_words(row.period)} (running gateways apply it within seconds)."
            )
    return 0


def _period_words(period: str) -> str:
    return {"day": "per day (UTC)", "week": "per week (UTC, from Monday)", "month": "per month (UTC)"}.get(
        period, "in total"
    )


def _cmd_budgets_list(args: argparse.Namespace) -> int:
    with open_session(args) as session:
        rows = budget_rows(session)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("No budgets yet; set one with `tokensense budgets set --project NAME --usd X`.")
        return 0
    headers = ["LEVEL", "NAME", "PERIOD", "LIMIT", "SPENT", "RESERVED", "LEFT", "FROM"]
    table = []
    for row in rows:
        name = row["name"] or "(every run)"
        if row["level"] == "execution" and row.get("execution"):
            name += f" [top run {row['execution']}]"
        table.append(
            [
                row["level"],
                name,
                row["period"],
                money(row["usd"]),
                money(row["spent_usd"], 4),
                money(row["reserved_usd"], 4),
                money(row["left_usd"], 4),
                row["origin"],
            ]
        )
    print_table(headers, table, right=["LIMIT", "SPENT", "RESERVED", "LEFT"])
    if any(r["reserved_usd"] is None for r in rows):
        print("(reserved: what calls in flight hold; shown with TOKENSENSE_REDIS_URL)")
    if any(r["level"] == "execution" for r in rows):
        print("(each-execution budgets: SPENT is the costliest of the runs of the last hour)")
    return 0


def _cmd_budgets_remove(args: argparse.Namespace) -> int:
    from tokensense.config import load_config
    from tokensense.settings import get_settings
    from tokensense.storage.budgets import BudgetLimit, configured_limits, remove_budgets

    level, name = _level(args)
    with open_session(args) as session:
        removed = remove_budgets(session=session, level=level, name=name, period=args.period)
    label = BudgetLimit(level, name, 1.0).label.replace("`", "")
    if not removed:
        in_config = [
            c
            for c in configured_limits(load_config(get_settings()).budgets.limits)
            if c.level == level and c.name == name and (args.period is None or c.period == args.period)
        ]
        if in_config:
            raise CliError(f"the budget of {label} is set in config.toml ([[budgets]]): remove it there")
        raise CliError(f"no budget of {label}" + (f" per {args.period}" if args.period else "") + " is set")
    if args.json:
        print_json({"removed": removed, "level": level, "name": name, "period": args.period})
    else:
        print(f"Removed {removed} budget{'s' if removed > 1 else ''} of {label}.")
    return 0


def _add_level_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", metavar="NAME", help="the budget of a project (x-project, or the key's project)")
    parser.add_argument(
        "--workflow",
        metavar="NAME",
        help="the budget of a workflow (x-workflow), whichever key "
        "calls it; with --each-execution: of each run of this workflow",
    )
    parser.add_argument("--source", metavar="NAME", help="the budget of a source (x-source)")
    parser.add_argument(
        "--each-execution",
        action="store_true",
        help="the budget of every execution (x-execution-id): each run may spend at most --usd",
    )


def add_budgets_parser(
    commands: argparse._SubParsersAction, database: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Register `budgets` and its subcommands."""
    budgets = commands.add_parser(
        "budgets",
        help="budgets on projects, workflows, sources and each execution",
        formatter_class=FORMATTER,
        description="Budgets on attribution: a call is admitted only if every budget that applies to it (its "
        "key's, its project's, workflow's, source's and execution's) can hold its largest cost. Running "
        "gateways apply changes within seconds. Budgets in config.toml ([[budgets]]) are listed too.",
    )
    budgets.set_defaults(handler=show_help(budgets))
    sub = budgets.add_subparsers(title="commands", metavar="COMMAND")

    setting = sub.add_parser(
        "set",
        parents=[database, as_json],
        help="set (or change) a budget",
        formatter_class=FORMATTER,
        description="Set the budget of a project, workflow, source or of each execution, for a period (UTC).",
        epilog="examples:\n  tokensense budgets set --workflow triage --usd 20 --period day\n"
        "  tokensense budgets set --each-execution --usd 2\n"
        "  tokensense budgets set --each-execution --workflow triage --usd 0.50",
    )
    _add_level_options(setting)
    setting.add_argument("--usd", type=positive_float, required=True, help="the limit, in US dollars")
    setting.add_argument(
        "--period",
        choices=BUDGET_PERIODS,
        default="total",
        help="day, week (from Monday), month (UTC) or total (never resets; the default)",
    )
    setting.set_defaults(handler=_cmd_budgets_set)

    listing = sub.add_parser(
        "list",
        parents=[database, as_json],
        help="list budgets with spent, reserved and left",
        description="Every budget (the keys', then those on attribution set here or in config.toml) with what "
        "was spent in its current period, what calls in flight reserve (with Redis) and what is left.",
    )
    listing.set_defaults(handler=_cmd_budgets_list)

    remove = sub.add_parser(
        "remove",
        parents=[database, as_json],
        help="remove a budget",
        formatter_class=FORMATTER,
        description="Remove the budgets of a project, workflow, source or each execution (of every period, "
        "or of --period). Budgets in config.toml are removed there.",
        epilog="example:\n  tokensense budgets remove --workflow triage --period day",
    )
    _add_level_options(remove)
    remove.add_argument("--period", choices=BUDGET_PERIODS, help="only the budget of this period")
    remove.set_defaults(handler=_cmd_budgets_remove)
