"""The `tokensense` command line: the parser of every command group, and `main`.

The groups live in their own modules (keys, budgets, providers, usage, report, db, run, prices, alerts); common.py holds
what they share. Only the module of the command being run is imported (with what it needs: SQLModel for the
database commands, mitmproxy for `serve`, Textual for `dashboard`), so `tokensense --help` and `tokensense usage`
start quickly; the other commands appear in the help by their one-line summary from `COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from tokensense import __version__
from tokensense.cli.common import (
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    FORMATTER,
    CliError,
    Parser,
    Unavailable,
    UsageError,
    parse_since,
    print_error,
    show_help,
)

# Re-exported: the command line's entry points and what tests and scripts import from here.
__all__ = ["COMMANDS", "EXIT_UNAVAILABLE", "EXIT_USAGE", "CliError", "build_parser", "main", "parse_since"]

Register = Callable[[argparse._SubParsersAction, argparse.ArgumentParser, argparse.ArgumentParser], None]

COMMANDS: dict[str, tuple[str, str]] = {
    # command: (the module that registers it, its one-line summary in `tokensense --help`)
    "keys": ("keys", "create, list, update and revoke TokenSense keys (tsk_...)"),
    "budgets": ("budgets", "budgets on projects, workflows, sources and each execution"),
    "providers": ("providers", "store provider API keys (encrypted) and base URLs"),
    "usage": ("usage", "report usage and cost"),
    "report": ("report", "spend over a period by attribution, with totals and the change against the previous one"),
    "batches": ("batches", "batch jobs the gateway follows, their state and booked cost"),
    "db": ("db", "show or upgrade the database schema revision"),
    "serve": ("run", "run the gateway (mitmproxy in reverse-proxy mode)"),
    "addon-path": ("run", "print the path of the mitmproxy script (mitmdump -s \"$(tokensense addon-path)\")"),
    "dashboard": ("run", "live spend dashboard in the terminal, or in a browser with --web"),
    "demo": ("run", "run the gateway with built-in fake providers and send demo traffic"),
    "reprice": ("run", "re-price the calls in a saved flow file with today's prices"),
    "replay": ("run", "serve the provider answers saved in a flow file (no provider is called)"),
    "prices": ("prices", "the price in force for a model, and where it comes from; or update the catalog"),
    "alerts": ("alerts", "budget alerts to a webhook ([alerts] in config.toml)"),
}
"""Every command, in the order `tokensense --help` lists them."""


def _register(group: str) -> Register:
    """The function of `tokensense/cli/<group>.py` that adds its commands (imports that module)."""
    module = importlib.import_module(f"tokensense.cli.{group}")
    if group == "prices":
        return lambda commands, database, as_json: module.add_prices_command(commands, [as_json], FORMATTER)
    if group == "alerts":
        return lambda commands, database, as_json: module.add_alerts_parser(commands, FORMATTER)
    if group in ("usage", "report"):
        return lambda commands, database, as_json: getattr(module, f"add_{group}_parser")(commands, database)
    return getattr(module, {"run": "add_run_parsers"}.get(group, f"add_{group}_parser"))


def _command_of(argv: Sequence[str]) -> str | None:
    """The command `argv` runs (its first word), or None (`tokensense`, `tokensense --help`, a typo)."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The `tokensense` argument parser.

    With `argv`, only the group of the command it runs is registered in full; every other command is a
    placeholder with its summary (enough for `tokensense --help`). Without, every command is registered in
    full (the CLI reference in the docs is generated from that).
    """
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
            "  tokensense report --since 30d --by workflow,model --format md\n"
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

    wanted = None if argv is None else {COMMANDS[c][0] for c in [_command_of(argv)] if c}
    # each group registers its commands (tokensense/cli/<group>.py); the others are placeholders
    registered: set[str] = set()
    for name, (group, summary) in COMMANDS.items():
        if wanted is None or group in wanted:
            if group not in registered:
                _register(group)(commands, database, as_json)
                registered.add(group)
        else:
            commands.add_parser(name, help=summary, add_help=False)
    _order_commands(commands)
    return parser


def _order_commands(commands: argparse._SubParsersAction) -> None:
    """List the commands in the order of `COMMANDS`, whichever group registered them first."""
    rank = {name: i for i, name in enumerate(COMMANDS)}
    commands._choices_actions.sort(key=lambda action: rank.get(action.dest, len(rank)))


def _split_mitm_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """For `serve`, everything after the first `--` goes to mitmproxy."""
    if argv and argv[0] == "serve" and "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def _error_message(args: argparse.Namespace, e: Exception) -> tuple[str, int] | None:
    """The one line (and exit status) for an error a command can end with; None for a bug (re-raised).

    The exception classes of the storage and crypto layers are looked up only when their modules were
    imported: a command that never imported SQLAlchemy cannot have raised its error.
    """
    if isinstance(e, Unavailable):
        return str(e), EXIT_UNAVAILABLE
    if isinstance(e, CliError | ValueError | OSError):
        return str(e), EXIT_USAGE
    if "tokensense.storage.repo" in sys.modules and isinstance(e, sys.modules["tokensense.storage.repo"].NotFoundError):
        return str(e), EXIT_USAGE
    if "tokensense.crypto" in sys.modules and isinstance(e, sys.modules["tokensense.crypto"].SecretError):
        return str(e), EXIT_USAGE
    if "sqlalchemy.exc" in sys.modules and isinstance(e, sys.modules["sqlalchemy.exc"].SQLAlchemyError):
        from tokensense.cli.common import database_error

        return database_error(args, e), EXIT_USAGE
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `tokensense` command line; return the exit status."""
    argv, mitm_args = _split_mitm_args(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser(argv)
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
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        known = _error_message(args, e)
        if known is None:
            raise
        return print_error(*known)


if __name__ == "__main__":
    sys.exit(main())
