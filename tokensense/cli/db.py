"""`tokensense db upgrade|current`: the database schema revision."""

from __future__ import annotations

import argparse

from tokensense.cli.common import print_json, show_help
from tokensense.storage.db import display_url, init_db, make_engine


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from tokensense.storage import migrate

    engine = make_engine(args.database_url)
    try:
        before = migrate.current_revision(engine)
        init_db(engine)
        after = migrate.current_revision(engine)
    finally:
        engine.dispose()
    where = display_url(engine.url)
    if before == after:
        print(f"{where} is at the newest schema revision, {after}.")
    else:
        print(f"Upgraded {where} from {before or 'no recorded revision'} to {after}.")
    return 0


def _cmd_db_current(args: argparse.Namespace) -> int:
    from tokensense.storage import migrate

    engine = make_engine(args.database_url)
    try:
        current = migrate.current_revision(engine)
    finally:
        engine.dispose()
    head = migrate.head_revision()
    if args.json:
        print_json({"current": current, "head": head, "up_to_date": current == head})
    elif current == head:
        print(f"{current} (the newest)")
    elif current is not None and not migrate.is_known_revision(current):
        print(f"{current}, which this TokenSense does not know (its newest is {head}): a newer TokenSense upgraded the database")
    else:
        print(
            f"{current or 'none recorded'}; the newest is {head}: "
            "run `tokensense db upgrade` (the gateway also upgrades when it starts)"
        )
    return 0


def add_db_parser(
    commands: argparse._SubParsersAction, database: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Register `db` and its subcommands."""
    dbcmd = commands.add_parser(
        "db", help="show or upgrade the database schema revision",
        description="The gateway upgrades the database schema when it starts, as does any command that opens "
        "the database; these commands show the revision and upgrade explicitly (docs/migrations.md).",
    )
    dbcmd.set_defaults(handler=show_help(dbcmd))
    db_commands = dbcmd.add_subparsers(title="commands", metavar="COMMAND")
    dbup = db_commands.add_parser(
        "upgrade", parents=[database], help="run the migrations the database has not had yet",
        description="Upgrade the schema to the newest revision. A database made before TokenSense had "
        "migrations is recognised and upgraded in place; its records are kept.",
    )
    dbup.set_defaults(handler=_cmd_db_upgrade)
    dbcur = db_commands.add_parser(
        "current", parents=[database, as_json], help="show the database's schema revision",
        description="Show the database's schema revision and the newest one this TokenSense knows, without changing anything.",
    )
    dbcur.set_defaults(handler=_cmd_db_current)
