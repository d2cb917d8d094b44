"""The `tokensense` command line: keys, provider credentials, usage reports, and starting the gateway."""

from __future__ import annotations

import argparse
import contextlib
import csv
import getpass
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from tokensense import __version__
from tokensense.gateway.crypto import SecretError, mask
from tokensense.settings import get_settings
from tokensense.storage import repo
from tokensense.storage.db import display_url, get_engine, init_db, make_engine
from tokensense.storage.models import DEFAULT_KEY_NAME, ApiKey

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 1

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A mistake in what the user asked for; printed as one `error:` line, exit status 2."""


class _UsageError(Exception):
    """An argparse error, reported on one line instead of argparse's usage block."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


# --- argument types ---------------------------------------------------------


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """`30m`, `1h`, `24h`, `7d`, `2w` ago, or an ISO 8601 time (naive means UTC), as aware UTC."""
    match = _DURATION.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        now = repo.as_utc(now) if now else datetime.now(UTC)
        return now - timedelta(**{_DURATION_UNITS[unit]: amount})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"cannot read --since {text!r}; give a duration such as 30m, 1h, 24h or 7d, "
            "or an ISO time such as 2025-01-31 or 2025-01-31T09:00:00Z"
        ) from None
    return repo.as_utc(moment)


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an amount in US dollars, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative amount, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected zero or more seconds, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {text!r}")
    return value


def _workers(text: str) -> int:
    from tokensense.gateway.workers import worker_count

    return worker_count(text)


def _or_none(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse`, except that `none` means "clear this limit" (for `keys update`)."""

    def parse_or_none(text: str) -> Any:
        return None if text.strip().lower() == "none" else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")
    return parse_or_none


def _choice(choices: Sequence[str], *, allow_none: bool = False) -> Callable[[str], str | None]:
    def parse_choice(text: str) -> str | None:
        value = text.strip().lower()
        if allow_none and value == "none":
            return None
        if value not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(choices)})")
        return value

    return parse_choice


# --- output helpers ---------------------------------------------------------


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[str] = ()) -> None:
    """Rows aligned in columns under `headers`; columns named in `right` are right-aligned (numbers)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(cells, widths, headers, strict=True)]
        return "  ".join(parts).rstrip()

    print(line(headers))
    for row in rows:
        print(line(row))


def _print_csv(fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    writer = csv.DictWriter(sys.stdout, fieldnames=list(fields), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else repo.as_utc(moment).strftime("%Y-%m-%d %H:%M")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else repo.iso_utc(moment)


def _money(amount: float | None, places: int = 2) -> str:
    return "-" if amount is None else f"${amount:,.{places}f}"


@contextlib.contextmanager
def _session(args: argparse.Namespace) -> Iterator[Session]:
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


# --- keys -------------------------------------------------------------------


def key_summary(key: ApiKey) -> dict[str, Any]:
    """What `keys list --json` shows of a key: everything but its hash."""
    return {
        "id": key.id,
        "name": key.name,
        "key_prefix": key.key_prefix,
        "budget_usd": key.budget_usd,
        "budget_period": key.budget_period,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "plan": key.plan,
        "allowed_models": list(key.allowed_models),
        "allowed_providers": list(key.allowed_providers),
        "project": key.project,
        "created_at": _iso(key.created_at),
        "revoked_at": _iso(key.revoked_at),
    }


def _describe_limits(key: ApiKey) -> str:
    parts = []
    if key.budget_usd is not None:
        parts.append(f"budget {_money(key.budget_usd)} ({key.budget_period})")
    if key.rpm is not None:
        parts.append(f"{key.rpm} requests/min")
    if key.tpm is not None:
        parts.append(f"{key.tpm} tokens/min")
    if key.plan:
        parts.append(f"plan {key.plan}")
    if key.allowed_models:
        parts.append(f"models {', '.join(key.allowed_models)}")
    if key.allowed_providers:
        parts.append(f"providers {', '.join(key.allowed_providers)}")
    if key.project:
        parts.append(f"project {key.project}")
    return "; ".join(parts) if parts else "no limits"


def _cmd_keys_create(args: argparse.Namespace) -> int:
    with _session(args) as session:
        key, plaintext = repo.create_key(
            session=session,
            name=args.name,
            budget_usd=args.budget_usd,
            budget_period=args.budget_period,
            rpm=args.rpm,
            tpm=args.tpm,
            plan=args.plan,
            allowed_models=args.allow_model or (),
            allowed_providers=args.allow_provider or (),
            project=args.project,
        )
        if args.json:
            _print_json({"id": key.id, "name": key.name, "key": plaintext})
            return 0
        print(f"Created key {key.name!r} (id {key.id}): {_describe_limits(key)}.")
        print()
        print(f"    {plaintext}")
        print()
        print("Copy it now: it is not shown again (TokenSense keeps only its hash).")
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    with _session(args) as session:
        keys = repo.list_keys(session=session)
        if args.json:
            _print_json([key_summary(k) for k in keys])
            return 0
        if not keys:
            print("No keys yet; create one with `tokensense keys create NAME`.")
            return 0
        headers = ["ID", "NAME", "KEY", "BUDGET", "RPM", "TPM", "PLAN", "PROJECT", "MODELS", "PROVIDERS", "CREATED (UTC)", "REVOKED (UTC)"]
        rows = [
            [
                k.id,
                k.name,
                f"{k.key_prefix}…",
                "-" if k.budget_usd is None else f"{_money(k.budget_usd)}/{k.budget_period}",
                _cell(k.rpm),
                _cell(k.tpm),
                _cell(k.plan),
                _cell(k.project),
                ",".join(k.allowed_models) or "*",
                ",".join(k.allowed_providers) or "*",
                _time(k.created_at),
                _time(k.revoked_at),
            ]
            for k in keys
        ]
        _print_table(headers, rows, right=["BUDGET", "RPM", "TPM"])
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    with _session(args) as session:
        before = repo.get_key(session=session, name_or_id=args.name_or_id).revoked_at
        key = repo.revoke_key(session=session, name_or_id=args.name_or_id)
        if args.json:
            _print_json(key_summary(key))
        elif before is not None:
            print(f"Key {key.name!r} (id {key.id}) was already revoked on {_time(before)} UTC.")
        else:
            print(f"Revoked key {key.name!r} (id {key.id}); requests with it now get 401.")
    return 0


_UPDATE_FIELDS = ("budget_usd", "budget_period", "rpm", "tpm", "plan", "project")


def _cmd_keys_update(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {name: getattr(args, name) for name in _UPDATE_FIELDS if hasattr(args, name)}
    if hasattr(args, "allow_model") or args.allow_any_model:
        changes["allowed_models"] = [] if args.allow_any_model else args.allow_model
    if hasattr(args, "allow_provider") or args.allow_any_provider:
        changes["allowed_providers"] = [] if args.allow_any_provider else args.allow_provider
    if not changes:
        raise CliError("nothing to change; give at least one option (see `tokensense keys update --help`)")
    with _session(args) as session:
        key = repo.update_key(session=session, name_or_id=args.name_or_id, **changes)
        if args.json:
            _print_json(key_summary(key))
        else:
            print(f"Updated key {key.name!r} (id {key.id}): {_describe_limits(key)}.")
    return 0


# --- providers --------------------------------------------------------------


def _read_api_key(args: argparse.Namespace) -> str:
    if args.api_key != "-":
        return args.api_key
    if sys.stdin is None:
        raise CliError("--api-key - reads the key from standard input, but there is none")
    if sys.stdin.isatty():
        return getpass.getpass(f"API key for {args.provider} (not echoed): ")
    if args.provider.strip().lower() == "vertex":
        return sys.stdin.read()  # a service-account JSON spans many lines
    return sys.stdin.readline()


def _register_configured_providers() -> None:
    """Make the `[providers.NAME]` tables of config.toml known to the provider commands."""
    from tokensense.config import ConfigError, load_config
    from tokensense.providers.compatible import register_configured

    try:
        register_configured(load_config(get_settings()))
    except ConfigError as e:
        raise CliError(str(e)) from None


def _cmd_providers_set(args: argparse.Namespace) -> int:
    _register_configured_providers()
    repo.normalize_provider(args.provider)  # a bad name fails before anything is read from stdin
    repo.normalize_key_name(args.name)
    api_key = _read_api_key(args)
    with _session(args) as session:
        row = repo.set_provider(session=session, provider=args.provider, api_key=api_key, base_url=args.base_url,
                                name=args.name)
        where = f", base URL {row.base_url}" if row.base_url else ""
        named = "" if row.name == DEFAULT_KEY_NAME else f" {row.name!r}"
        print(f"Stored the {row.provider} key{named} {mask(api_key.strip())} (encrypted){where}.")
    return 0


def _shared_states(provider: str, names: list[str]) -> tuple[dict[str, tuple[Any, Any]], str | None]:
    """The keys' cool-down and circuit states the gateways share in Redis, and a warning if Redis failed."""
    redis_url = get_settings().redis_url
    if not redis_url or not names:
        return {}, None
    from tokensense.gateway.key_pool import read_shared_states

    try:
        return read_shared_states(redis_url, provider, names), None
    except Exception as e:
        return {}, f"cannot read the keys' live state from Redis ({type(e).__name__})"


def _key_state(row: Any, shared: dict[str, tuple[Any, Any]]) -> tuple[str, str | None]:
    """A stored key's state (`ready`, `out`, `cooling`, `open`, `half-open`) and what it means."""
    if row.disabled_at is not None:
        return "out", f"since {_iso(row.disabled_at)}: {row.disabled_reason or 'refused by the provider'}"
    if row.name not in shared:
        return "ready", None
    state, health = shared[row.name]
    now = datetime.now(UTC).timestamp()
    if state.value == "cooling":
        return "cooling", f"rate limited; usable in {max(health.cooling_until - now, 0):.0f}s"
    if state.value == "open":
        return "open", f"{health.failures} failures in a row; probed in {max(health.open_until - now, 0):.0f}s"
    if state.value == "half-open":
        return "half-open", "the next request probes it"
    return state.value, None


def provider_status(session: Session) -> list[dict[str, Any]]:
    """One entry per known provider: where its key comes from (stored / environment), masked, its base URL,
    and `keys`, its pool: each stored key with its name and state."""
    settings = get_settings()
    stored: dict[str, list[Any]] = {}
    for row in repo.list_providers(session=session):
        stored.setdefault(row.provider, []).append(row)
    entries = []
    for provider in repo.known_providers():
        env_var = repo.provider_env_var(provider)
        env_value = os.environ.get(env_var) or None
        rows = stored.get(provider, [])
        entry: dict[str, Any] = {
            "provider": provider,
            "source": None,
            "key": None,
            "env_var": env_var,
            "env_set": env_value is not None,
            "base_url": None,
            "base_url_source": None,
            "updated_at": None,
            "keys": [],
        }
        shared, warning = _shared_states(provider, [r.name for r in rows])
        if warning:
            entry["warning"] = warning
        for row in rows:
            state, detail = _key_state(row, shared)
            key: dict[str, Any] = {"name": row.name, "key": None, "state": state, "detail": detail,
                                   "base_url": row.base_url, "updated_at": _iso(row.updated_at),
                                   "disabled_at": _iso(row.disabled_at), "disabled_reason": row.disabled_reason}
            try:
                secret = repo.get_provider_secret(session=session, provider=provider, name=row.name)
            except SecretError as e:
                key["error"] = entry["error"] = str(e)
            else:
                key["key"] = mask(secret[0]) if secret else None
            entry["keys"].append(key)
        if rows:
            first = entry["keys"][0]
            entry["source"], entry["key"], entry["updated_at"] = "stored", first["key"], first["updated_at"]
        elif env_value is not None:
            entry["source"] = "env"
            entry["key"] = mask(env_value)
        if rows and rows[0].base_url:
            entry["base_url"], entry["base_url_source"] = rows[0].base_url, "stored"
        elif settings.base_url_override(provider):
            entry["base_url"] = settings.base_url_override(provider)
            entry["base_url_source"] = f"TOKENSENSE_{provider.upper()}_BASE_URL"
        entries.append(entry)
    return entries


def _cmd_providers_list(args: argparse.Namespace) -> int:
    _register_configured_providers()
    with _session(args) as session:
        entries = provider_status(session)
    if args.json:
        _print_json(entries)
    else:
        rows = []
        for e in entries:
            default_base = "default"
            if e["base_url_source"] and e["base_url_source"] != "stored":
                default_base = f"{e['base_url']} (from {e['base_url_source']})"
            if e["source"] == "stored":
                for k in e["keys"]:
                    source = "stored" + (f" (also {e['env_var']} in env)" if e["env_set"] else "")
                    state = k["state"] + (f" ({k['detail']})" if k["detail"] else "")
                    key = "(cannot decrypt)" if "error" in k else _cell(k["key"])
                    rows.append([e["provider"], k["name"], key, state, source, k["base_url"] or default_base])
                continue
            if e["source"] == "env":
                source = f"env {e['env_var']}"
            else:
                source = f"none (set {e['env_var']} or `providers set`)"
            rows.append([e["provider"], "env" if e["source"] == "env" else "-", _cell(e["key"]),
                         "ready" if e["source"] else "-", source, default_base])
        _print_table(["PROVIDER", "NAME", "KEY", "STATE", "SOURCE", "BASE URL"], rows)
    for e in entries:
        if "error" in e:
            print(f"warning: {e['provider']}: {e['error']}", file=sys.stderr)
        if "warning" in e:
            print(f"warning: {e['provider']}: {e['warning']}", file=sys.stderr)
    return 0


def _cmd_providers_remove(args: argparse.Namespace) -> int:
    _register_configured_providers()
    provider = repo.normalize_provider(args.provider)
    with _session(args) as session:
        repo.remove_provider(session=session, provider=provider, name=args.name)
        left = [r.name for r in repo.list_providers(session=session) if r.provider == provider]
    env_var = repo.provider_env_var(provider)
    if left:
        fallback = f"; its pool has {', '.join(left)}"
    else:
        fallback = f"; {env_var} from the environment is used instead" if env_var and os.environ.get(env_var) else ""
    named = "" if repo.normalize_key_name(args.name) == DEFAULT_KEY_NAME else f" {args.name.strip()!r}"
    print(f"Removed the stored {provider} key{named}{fallback}.")
    return 0


def _cmd_providers_restore(args: argparse.Namespace) -> int:
    provider = repo.normalize_provider(args.provider)
    with _session(args) as session:
        was_out = next((r.disabled_at is not None for r in repo.list_providers(session=session)
                        if r.provider == provider and r.name == repo.normalize_key_name(args.name)), False)
        row = repo.restore_provider_key(session=session, provider=provider, name=args.name)
    redis_url = get_settings().redis_url
    if redis_url:
        from tokensense.gateway.key_pool import forget_shared_state

        try:
            forget_shared_state(redis_url, provider, row.name)
        except Exception as e:
            print(f"warning: could not clear the key's cool-down in Redis ({type(e).__name__})", file=sys.stderr)
    what = "back in the pool" if was_out else "in the pool (it was not taken out)"
    print(f"The {provider} key {row.name!r} is {what}; the gateway uses it again within a few seconds.")
    return 0


# --- usage ------------------------------------------------------------------

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
            repo.as_utc(datetime.fromisoformat(r["created_at"])).strftime("%Y-%m-%d %H:%M:%S"),
            _cell(r["key_name"]),
            _cell(r["provider"]),
            _cell(r["model"]),
            _cell(r["endpoint"]),
            _cell(r["status"]),
            str(r["input_tokens"]),
            str(r["output_tokens"]),
            _media_cell(r),
            "unpriced" if r["cost_usd"] is None else _money(r["cost_usd"], 6),
            "-" if r["latency_ms"] is None else f"{r['latency_ms']:.0f} ms",
            _cell(r["workflow"]),
            _cell(r["step"]),
        ]
        for r in records
    ]
    _print_table(headers, rows, right=["STATUS", "IN", "OUT", "COST", "LATENCY"])
    total = sum(r["cost_usd"] or 0.0 for r in records)
    unpriced = sum(1 for r in records if r["cost_usd"] is None)
    print(f"\n{len(records)} requests, {_money(total, 6)}" + _unpriced_note(unpriced))


def _unpriced_note(unpriced: int) -> str:
    """`, 3 unpriced (no price known; not in the total)` or nothing."""
    return f", {unpriced} unpriced (no price known; not in the total)" if unpriced else ""


def _print_usage_groups(fields: list[str], groups: list[dict[str, Any]]) -> None:
    headers = [*(f.upper() for f in fields), "REQUESTS", "IN", "OUT", "COST"]
    rows = [
        [
            *(_cell(g[f]) for f in fields),
            str(g["requests"]),
            str(g["input_tokens"]),
            str(g["output_tokens"]),
            _money(g["cost_usd"], 6) + (f" +{g['unpriced']} unpriced" if g.get("unpriced") else ""),
        ]
        for g in groups
    ]
    _print_table(headers, rows, right=["REQUESTS", "IN", "OUT", "COST"])
    requests = sum(g["requests"] for g in groups)
    total = sum(g["cost_usd"] for g in groups)
    unpriced = sum(g.get("unpriced", 0) for g in groups)
    print(f"\n{len(groups)} groups, {requests} requests, {_money(total, 6)}" + _unpriced_note(unpriced))


def _cmd_usage(args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None
    by = [f for chunk in args.by or () for f in chunk.split(",") if f.strip()] or None
    fields = repo.normalize_group_fields(by) if by else None
    with _session(args) as session:
        rows = repo.query_usage(session=session, since=since, by=fields, limit=args.limit)
    if args.json:
        _print_json(rows)
    elif args.csv:
        _print_csv([*fields, *_AGGREGATES] if fields else repo.USAGE_RECORD_FIELDS, rows)
    elif not rows:
        print("No usage recorded" + (f" since {since:%Y-%m-%d %H:%M:%S} UTC." if since else " yet."))
    elif fields:
        _print_usage_groups(fields, rows)
    else:
        _print_usage_records(rows)
    _warn_quarantined()
    return 0


def _warn_quarantined() -> None:
    """One line on stderr when records were quarantined (the report above does not hold them)."""
    from tokensense.metering.spool import DEAD_LETTER_FILE, quarantined_count

    home = get_settings().home
    count = quarantined_count(home)
    if count:
        print(f"{count} usage record{'s' if count != 1 else ''} quarantined: the database refused "
              f"{'them' if count != 1 else 'it'}; see {home / DEAD_LETTER_FILE}", file=sys.stderr)


# --- db (schema migrations) -------------------------------------------------


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
        _print_json({"current": current, "head": head, "up_to_date": current == head})
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


# --- serve, dashboard, demo (implemented in their own modules) ---------------


class _Unavailable(Exception):
    def __init__(self, command: str, error: ImportError) -> None:
        super().__init__(f"`tokensense {command}` is not available: {error}")


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from tokensense.gateway.server import run_server
    except ImportError as e:
        raise _Unavailable("serve", e) from e
    if getattr(args, "workers", 1) > 1:
        from tokensense.gateway.workers import run_supervisor

        return run_supervisor(args)
    return run_server(args) or 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        from tui.app import run as run_dashboard
    except ImportError as e:
        raise _Unavailable("dashboard", e) from e
    return run_dashboard(args) or 0


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from tokensense.demo.traffic import run_demo
    except ImportError as e:
        raise _Unavailable("demo", e) from e
    return run_demo(args) or 0


def _cmd_reprice(args: argparse.Namespace) -> int:
    from tokensense.flows.reprice import format_report, reprice_file

    report = reprice_file(args.file)
    if args.json:
        _print_json(report.model_dump(mode="json"))
    else:
        print(format_report(report))
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from tokensense.flows.replay import run_replay

    return run_replay(args) or 0


# --- the parser -------------------------------------------------------------

_FORMATTER = argparse.RawDescriptionHelpFormatter


def _show_help(parser: argparse.ArgumentParser) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    return handler


def _add_key_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    keep = {"default": argparse.SUPPRESS} if update else {}
    clear = " ('none' removes it)" if update else ""
    limits = parser.add_argument_group("limits (stored now, enforced by the gateway)")
    limits.add_argument(
        "--budget-usd", metavar="X", type=_or_none(_nonnegative_float) if update else _nonnegative_float,
        help=f"spend allowed per budget period, in US dollars{clear}", **keep,
    )
    limits.add_argument(
        "--budget-period", type=_choice(repo.BUDGET_PERIODS), metavar="{" + ",".join(repo.BUDGET_PERIODS) + "}",
        help="period the budget applies to" + ("" if update else " (default: total)"),
        **(keep if update else {"default": "total"}),
    )
    limits.add_argument(
        "--rpm", metavar="N", type=_or_none(_positive_int) if update else _positive_int,
        help=f"requests per minute{clear}", **keep,
    )
    limits.add_argument(
        "--tpm", metavar="N", type=_or_none(_positive_int) if update else _positive_int,
        help=f"tokens per minute{clear}", **keep,
    )
    limits.add_argument(
        "--plan", type=_choice(repo.PLANS, allow_none=update), metavar="{" + ",".join(repo.PLANS) + "}",
        help=f"plan tier, which gives default rate limits{clear}", **keep,
    )
    models = limits.add_mutually_exclusive_group() if update else limits
    models.add_argument(
        "--allow-model", metavar="GLOB", action="append",
        help="allow only models matching GLOB (e.g. 'gpt-4o*'); repeat for more"
        + ("; replaces the current list" if update else "; default: all models"),
        **keep,
    )
    if update:
        models.add_argument("--allow-any-model", action="store_true", help="remove the model restriction")
    providers = limits.add_mutually_exclusive_group() if update else limits
    providers.add_argument(
        "--allow-provider", metavar="P", action="append",
        help=f"allow only provider P ({', '.join(repo.known_providers())}); repeat for more"
        + ("; replaces the current list" if update else "; default: all providers"),
        **keep,
    )
    if update:
        providers.add_argument("--allow-any-provider", action="store_true", help="remove the provider restriction")
    limits.add_argument(
        "--project", metavar="P", type=_or_none(str) if update else str,
        help=f"project that usage is attributed to when a request has no x-project header{clear}", **keep,
    )


def build_parser() -> argparse.ArgumentParser:
    """The `tokensense` argument parser with every subcommand."""
    parser = _Parser(
        prog="tokensense",
        formatter_class=_FORMATTER,
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
    parser.set_defaults(handler=_show_help(parser))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database-url", metavar="URL",
        help="database to use (default: TOKENSENSE_DATABASE_URL, else SQLite in TOKENSENSE_HOME)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of text")

    # keys
    keys = commands.add_parser(
        "keys", help="create, list, update and revoke TokenSense keys (tsk_...)", formatter_class=_FORMATTER,
        description="TokenSense keys are what applications send instead of a provider key. "
        "Only a hash of each key is stored, so a key is shown once, when it is created.",
    )
    keys.set_defaults(handler=_show_help(keys))
    keys_commands = keys.add_subparsers(title="commands", metavar="COMMAND")

    create = keys_commands.add_parser(
        "create", parents=[database, as_json], help="create a key (shown once)", formatter_class=_FORMATTER,
        description="Create a key and print it once. With --json, print {\"id\", \"name\", \"key\"}.",
        epilog="example:\n  tokensense keys create ci --budget-usd 5 --budget-period daily --allow-model 'gpt-4o*'",
    )
    create.add_argument("name", metavar="NAME", help="a unique name for the key (usage reports show it)")
    _add_key_options(create, update=False)
    create.set_defaults(handler=_cmd_keys_create)

    listing = keys_commands.add_parser(
        "list", parents=[database, as_json], help="list keys (never the key itself)",
        description="List keys with their prefix, limits, creation and revocation times (UTC).",
    )
    listing.set_defaults(handler=_cmd_keys_list)

    revoke = keys_commands.add_parser(
        "revoke", parents=[database, as_json], help="revoke a key",
        description="Revoke a key: requests with it are refused from now on. Its usage history stays.",
    )
    revoke.add_argument("name_or_id", metavar="NAME_OR_ID", help="the key's name or id (see `keys list`)")
    revoke.set_defaults(handler=_cmd_keys_revoke)

    update = keys_commands.add_parser(
        "update", parents=[database, as_json], help="change a key's limits", formatter_class=_FORMATTER,
        description="Change a key's limits. Options not given keep their value; 'none' clears a limit.",
        epilog="example:\n  tokensense keys update ci --rpm 120 --budget-usd none",
    )
    update.add_argument("name_or_id", metavar="NAME_OR_ID", help="the key's name or id (see `keys list`)")
    _add_key_options(update, update=True)
    update.set_defaults(handler=_cmd_keys_update)

    # providers
    providers = commands.add_parser(
        "providers", help="store provider API keys (encrypted) and base URLs",
        description="Provider keys are stored encrypted (TOKENSENSE_SECRET, or a generated key file in "
        "TOKENSENSE_HOME). Without a stored key, the gateway uses the provider's environment variable: "
        + ", ".join(repo.provider_env_var(p) for p in repo.known_providers()) + ".",
    )
    providers.set_defaults(handler=_show_help(providers))
    providers_commands = providers.add_subparsers(title="commands", metavar="COMMAND")

    pset = providers_commands.add_parser(
        "set", parents=[database], help="store a provider's API key", formatter_class=_FORMATTER,
        description="Store (or replace) a provider's API key, encrypted at rest.",
        epilog="examples:\n"
        "  tokensense providers set openai --api-key -      # paste the key; it stays out of shell history\n"
        "  printenv ANTHROPIC_API_KEY | tokensense providers set anthropic --api-key -\n"
        "  tokensense providers set openai --api-key - --base-url https://my-proxy.example.com\n"
        "  tokensense providers set openai --api-key - --name backup   # a second key: used round-robin",
    )
    pset.add_argument("provider", metavar="PROVIDER", help=", ".join(repo.known_providers()))
    pset.add_argument("--api-key", metavar="K", required=True, help="the provider's key; '-' reads it from stdin")
    pset.add_argument("--base-url", metavar="U", help="send this provider's requests to U instead of its public API")
    pset.add_argument("--name", metavar="N", help="the key's name in the provider's pool (default: default); "
                      "several keys are used round-robin")
    pset.set_defaults(handler=_cmd_providers_set)

    plist = providers_commands.add_parser(
        "list", parents=[database, as_json], help="show provider keys (masked), their source and state",
        description="Show, for every provider, its keys (masked) by name, whether they are stored or come "
        "from the environment, the base URL, and each key's state: ready, out (refused by the provider: "
        "`providers restore`), and with TOKENSENSE_REDIS_URL the gateways' shared cooling (rate limited), "
        "open (circuit breaker after failures) and half-open.",
    )
    plist.set_defaults(handler=_cmd_providers_list)

    name_option = argparse.ArgumentParser(add_help=False)
    name_option.add_argument("--name", metavar="N", help="the key's name in the pool (default: default)")
    premove = providers_commands.add_parser(
        "remove", parents=[database, name_option], help="delete a stored provider key",
        description="Delete a stored provider key (when the pool is empty, the environment variable, if set, "
        "is used instead).",
    )
    premove.add_argument("provider", metavar="PROVIDER", help=", ".join(repo.known_providers()))
    premove.set_defaults(handler=_cmd_providers_remove)

    prestore = providers_commands.add_parser(
        "restore", parents=[database, name_option], help="put a key the provider refused back in its pool",
        description="A key the provider answered 401 or 403 is taken out of its pool until restored here "
        "(or replaced with `providers set`). Restoring also ends its cool-down and circuit breaker.",
        epilog="example:\n  tokensense providers restore openai --name backup", formatter_class=_FORMATTER,
    )
    prestore.add_argument("provider", metavar="PROVIDER", help=", ".join(repo.known_providers()))
    prestore.set_defaults(handler=_cmd_providers_restore)

    # usage
    usage = commands.add_parser(
        "usage", parents=[database], help="report usage and cost", formatter_class=_FORMATTER,
        description="Report usage records, or totals grouped by attribution fields. Times are UTC.",
        epilog=(
            f"group fields: {', '.join(repo.USAGE_GROUP_FIELDS)} (key = key_name)\n\n"
            "examples:\n"
            "  tokensense usage --since 1h\n"
            "  tokensense usage --since 7d --by workflow,step\n"
            "  tokensense usage --since 2025-01-01 --by model --csv > spend.csv"
        ),
    )
    usage.add_argument("--since", metavar="WHEN", help="30m, 1h, 24h, 7d, ... ago, or an ISO time (default: all)")
    usage.add_argument("--by", metavar="FIELD[,FIELD]", action="append", help="group by these fields")
    usage.add_argument("--limit", metavar="N", type=_positive_int, help="at most N records (newest) or groups (costliest)")
    formats = usage.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="print a JSON array")
    formats.add_argument("--csv", action="store_true", help="print CSV with a header row")
    usage.set_defaults(handler=_cmd_usage)

    # db
    dbcmd = commands.add_parser(
        "db", help="show or upgrade the database schema revision",
        description="The gateway upgrades the database schema when it starts, as does any command that opens "
        "the database; these commands show the revision and upgrade explicitly (docs/migrations.md).",
    )
    dbcmd.set_defaults(handler=_show_help(dbcmd))
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

    # serve
    serve = commands.add_parser(
        "serve", help="run the gateway (mitmproxy in reverse-proxy mode)", formatter_class=_FORMATTER,
        usage="tokensense serve [options] [-- MITMPROXY_ARGS...]",
        description="Run the gateway. Point an SDK's base URL at http://HOST:PORT and use a TokenSense key.",
        epilog="Arguments after `--` go to mitmproxy unchanged, e.g.\n  tokensense serve -- --set flow_detail=2",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080, help="port to listen on (default: 8080)")
    serve.add_argument("--intercept", action="store_true", help="also run a regular proxy for HTTPS_PROXY clients")
    serve.add_argument("--intercept-port", metavar="PORT", type=_port, help="port of the regular (HTTPS_PROXY) proxy (default: the gateway port + 1)")
    serve.add_argument("--record", metavar="FILE", help="save flows to FILE (keys redacted)")
    serve.add_argument("--redact-bodies", action="store_true", help="also leave request and response bodies out of FILE")
    serve.add_argument("--workers", metavar="N", type=_workers, default=1,
                       help="gateway processes on the one port, or `auto` for one per core (default: 1)")
    serve.add_argument("--drain-timeout", metavar="SECONDS", type=float, default=30.0,
                       help="with --workers: how long a stop waits for the workers' calls to finish (default: 30)")
    serve.add_argument("--metrics-port", metavar="PORT", type=_port, help="serve Prometheus metrics at /metrics on PORT")
    serve.add_argument("--metrics-host", metavar="HOST", help="address of the metrics server (default: --host)")
    serve.set_defaults(handler=_cmd_serve, mitm_args=[])

    # dashboard
    dashboard = commands.add_parser(
        "dashboard", parents=[database], help="live spend dashboard in the terminal",
        description="Live spend by workflow, step, model, provider, project and key.",
    )
    dashboard.set_defaults(handler=_cmd_dashboard)

    # demo
    demo = commands.add_parser(
        "demo", help="run the gateway with built-in fake providers and send demo traffic",
        description="Start the gateway and built-in fake providers on localhost and send a steady stream of "
                    "attributed demo traffic (no provider key needed); watch it with `tokensense dashboard`.",
    )
    demo.add_argument("--port", type=_port, default=8080, help="the demo gateway's port (default: 8080)")
    demo.add_argument("--rate", metavar="N", type=_positive_float, default=2.0, help="requests per second (default: 2)")
    demo.add_argument("--duration", metavar="SECONDS", type=_seconds, default=0.0, help="stop after this long (default: 0 = run until Ctrl-C)")
    demo.set_defaults(handler=_cmd_demo)

    # reprice, replay (saved flow files, docs/intercept.md)
    reprice = commands.add_parser(
        "reprice", parents=[as_json], help="re-price the calls in a saved flow file with today's prices",
        formatter_class=_FORMATTER,
        description="Read a flow file saved by `serve --record` (or mitmdump -w), read the usage of every provider "
        "answer in it again (streams included), price it with today's catalog and config.toml, and print totals "
        "by workflow and by model next to the cost recorded at the time. Works offline.",
        epilog="example:\n  tokensense reprice calls.flows --json",
    )
    reprice.add_argument("file", metavar="FILE", help="a mitmproxy flow file")
    reprice.set_defaults(handler=_cmd_reprice)

    replay = commands.add_parser(
        "replay", help="serve the provider answers saved in a flow file (no provider is called)",
        formatter_class=_FORMATTER,
        description="Serve the answers saved in a flow file as a reverse proxy: point an SDK's base URL at "
        "http://HOST:PORT (any key). Requests are matched on method and path, and answered in recorded order; "
        "an unmatched request gets a 404. Built on mitmproxy's server replay.",
        epilog="example:\n  tokensense replay calls.flows --port 8082 --reuse",
    )
    replay.add_argument("file", metavar="FILE", help="a mitmproxy flow file")
    replay.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    replay.add_argument("--port", type=_port, default=8082, help="port to listen on (default: 8082)")
    replay.add_argument("--reuse", action="store_true", help="serve a recorded answer again for every match "
                        "(default: each answer once, in order)")
    replay.set_defaults(handler=_cmd_replay)

    # prices (tokensense/cli/prices.py)
    from tokensense.cli.prices import add_prices_command

    add_prices_command(commands, [as_json], _FORMATTER)

    from tokensense.cli.alerts import add_alerts_parser

    add_alerts_parser(commands, _FORMATTER)
    return parser


def _split_mitm_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """For `serve`, everything after the first `--` goes to mitmproxy."""
    if argv and argv[0] == "serve" and "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def _error(message: str, status: int = EXIT_USAGE) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _database_error(args: argparse.Namespace | None, e: SQLAlchemyError) -> str:
    cause = getattr(e, "orig", None) or e
    detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    url = getattr(args, "database_url", None) or get_settings().effective_database_url
    try:
        where = display_url(url)
    except Exception:
        where = "the configured database"
    return f"database error ({where}): {detail}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `tokensense` command line; return the exit status."""
    argv, mitm_args = _split_mitm_args(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        return _error(str(e))
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0
    if mitm_args:
        args.mitm_args = mitm_args
    try:
        return int(args.handler(args))
    except (CliError, repo.NotFoundError, SecretError, ValueError) as e:
        return _error(str(e))
    except _Unavailable as e:
        return _error(str(e), EXIT_UNAVAILABLE)
    except SQLAlchemyError as e:
        return _error(_database_error(args, e))
    except OSError as e:
        return _error(str(e))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
