"""The `tokensense` command line: the parser of every command group, and `main`.

The groups live in their own modules (keys, providers, usage, db, run, prices, alerts); common.py holds what
they share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from tokensense import __version__
from tokensense.cli.common import (
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    FORMATTER,
    CliError,
    Parser,
    Unavailable,
    UsageError,
    database_error,
    parse_since,
    print_error,
    show_help,
)
from tokensense.cli.db import add_db_parser
from tokensense.cli.keys import add_keys_parser, key_summary
from tokensense.cli.providers import add_providers_parser, provider_status
from tokensense.cli.run import add_run_parsers
from tokensense.cli.usage import add_usage_parser
from tokensense.crypto import SecretError
from tokensense.storage import repo

# Re-exported: the command line's entry points and what tests and scripts import from here.
__all__ = ["EXIT_UNAVAILABLE", "EXIT_USAGE", "CliError", "build_parser", "key_summary", "main", "parse_since",
           "provider_status"]


def build_parser() -> argparse.ArgumentParser:
    """The `tokensense` argument parser with every subcommand."""
    parser = Parser(
        prog="tokensense",
        formatter_class=FORMATTER,
        description="TokenSense: a self-hosted gateway that meters, attributes and limits calls to AI provider APIs.",
        epilog=(
            "examples:\n"
            "  tokensense providers set openai --api-key -     # reads the key from stdin\n"
            "  tokensense keys create my-app --budget-usd 20 --budget-period monthly\n"
            "  tokensense serve --port 8080\n"
            "  tokensense usage --since 24h --by workflow,step\n"
            "\n"
            "Data lives in TOKENSENSE_HOME (default ~/.tokensense), or in the database named by\n"
            "TOKENSENSE_DATABASE_URL. Run `tokensense COMMAND --help` for a command's options."
        ),
    )
    parser.add_argument("--version", action="version", version=f"tokensense {__version__}")
    parser.set_defaults(handler=show_help(parser))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database-url", metavar="URL",
        help="database to use (default: TOKENSENSE_DATABASE_URL, else SQLite in TOKENSENSE_HOME)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of text")

    # each command group registers its subcommands (tokensense/cli/<group>.py)
    add_keys_parser(commands, database, as_json)
    add_providers_parser(commands, database, as_json)
    add_usage_parser(commands, database)
    add_db_parser(commands, database, as_json)
    add_run_parsers(commands, database, as_json)

    # prices (tokensense/cli/prices.py)
    from tokensense.cli.prices import add_prices_command

    add_prices_command(commands, [as_json], FORMATTER)

    from tokensense.cli.alerts import add_alerts_parser

    add_alerts_parser(commands, FORMATTER)
    return parser


def _split_mitm_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """For `serve`, everything after the first `--` goes to mitmproxy."""
    if argv and argv[0] == "serve" and "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `tokensense` command line; return the exit status."""
    argv, mitm_args = _split_mitm_args(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        return print_error(str(e))
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0
    if mitm_args:
        args.mitm_args = mitm_args
    try:
        return int(args.handler(args))
    except (CliError, repo.NotFoundError, SecretError, ValueError) as e:
        return print_error(str(e))
    except Unavailable as e:
        return print_error(str(e), EXIT_UNAVAILABLE)
    except SQLAlchemyError as e:
        return print_error(database_error(args, e))
    except OSError as e:
        return print_error(str(e))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
