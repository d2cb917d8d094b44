"""What the `tokensense` command groups share: exit codes, errors, argument types, printing, the session."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # imported where used: `tokensense --help` needs neither SQLAlchemy nor the settings
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import Session

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 1

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A mistake in what the user asked for; printed as one `error:` line, exit status 2."""


class UsageError(Exception):
    """An argparse error, reported on one line instead of argparse's usage block."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# --- argument types ---------------------------------------------------------


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """`30m`, `1h`, `24h`, `7d`, `2w` ago, or an ISO 8601 time (naive means UTC), as aware UTC."""
    match = _DURATION.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        now = as_utc(now) if now else datetime.now(UTC)
        return now - timedelta(**{_DURATION_UNITS[unit]: amount})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"cannot read --since {text!r}; give a duration such as 30m, 1h, 24h or 7d, "
            "or an ISO time such as 2025-01-31 or 2025-01-31T09:00:00Z"
        ) from None
    return as_utc(moment)


def as_utc(moment: datetime) -> datetime:
    """`moment` as an aware UTC datetime; a naive one is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an amount in US dollars, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative amount, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected zero or more seconds, got {text!r}")
    return value


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {text!r}")
    return value


def workers(text: str) -> int:
    from tokensense.serve.workers import worker_count

    return worker_count(text)


def or_none(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse`, except that `none` means "clear this limit" (for `keys update`)."""

    def parse_or_none(text: str) -> Any:
        return None if text.strip().lower() == "none" else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")
    return parse_or_none


def choice(choices: Sequence[str], *, allow_none: bool = False) -> Callable[[str], str | None]:
    def parse_choice(text: str) -> str | None:
        value = text.strip().lower()
        if allow_none and value == "none":
            return None
        if value not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(choices)})")
        return value

    return parse_choice


# --- output helpers ---------------------------------------------------------


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[str] = ()) -> None:
    """Rows aligned in columns under `headers`; columns named in `right` are right-aligned (numbers)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(cells, widths, headers, strict=True)]
        return "  ".join(parts).rstrip()

    print(line(headers))
    for row in rows:
        print(line(row))


def print_csv(fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    writer = csv.DictWriter(sys.stdout, fieldnames=list(fields), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def format_time(moment: datetime | None) -> str:
    return "-" if moment is None else as_utc(moment).strftime("%Y-%m-%d %H:%M")


def iso(moment: datetime | None) -> str | None:
    from tokensense.storage import repo

    return None if moment is None else repo.iso_utc(moment)


def money(amount: float | None, places: int = 2) -> str:
    return "-" if amount is None else f"${amount:,.{places}f}"


@contextlib.contextmanager
def open_session(args: argparse.Namespace) -> Iterator[Session]:
    """A session on `--database-url` (upgraded to the newest schema first), else on the configured database."""
    from sqlmodel import Session

    from tokensense.storage.db import get_engine, init_db, make_engine

    url = getattr(args, "database_url", None)
    if not url:
        with Session(get_engine()) as session:
            yield session
        return
    engine = make_engine(url)
    try:
        init_db(engine)
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


# --- the parser and errors ----------------------------------------------------


class Unavailable(Exception):
    """A command whose module cannot be imported (e.g. `dashboard` without Textual); exit status 1."""

    def __init__(self, command: str, error: ImportError) -> None:
        super().__init__(f"`tokensense {command}` is not available: {error}")


FORMATTER = argparse.RawDescriptionHelpFormatter


def show_help(parser: argparse.ArgumentParser) -> Handler:
    """A handler that prints `parser`'s help (a command group given no subcommand) and exits with status 2."""
    def handler(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    return handler


def print_error(message: str, status: int = EXIT_USAGE) -> int:
    """Print `error: message` on stderr; return `status`."""
    print(f"error: {message}", file=sys.stderr)
    return status


def database_error(args: argparse.Namespace | None, e: SQLAlchemyError) -> str:
    """One line naming the database (password hidden) and what went wrong."""
    from tokensense.settings import get_settings
    from tokensense.storage.db import display_url

    cause = getattr(e, "orig", None) or e
    detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    url = getattr(args, "database_url", None) or get_settings().effective_database_url
    try:
        where = display_url(url)
    except Exception:
        where = "the configured database"
    return f"database error ({where}): {detail}"
