"""`tokensense providers set|list|remove|restore`: provider keys (encrypted), pools and base URLs."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session

from tokensense import providers as registry
from tokensense.cli.common import FORMATTER, CliError, cell, iso, open_session, print_json, print_table, show_help
from tokensense.crypto import SecretError, mask
from tokensense.settings import get_settings
from tokensense.storage import repo
from tokensense.storage.models import DEFAULT_KEY_NAME


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
    registry.normalize(args.provider)  # a bad name fails before anything is read from stdin
    repo.normalize_key_name(args.name)
    api_key = _read_api_key(args)
    with open_session(args) as session:
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
        return "out", f"since {iso(row.disabled_at)}: {row.disabled_reason or 'refused by the provider'}"
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
    for provider in registry.names():
        env_var = registry.env_var(provider)
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
                                   "base_url": row.base_url, "updated_at": iso(row.updated_at),
                                   "disabled_at": iso(row.disabled_at), "disabled_reason": row.disabled_reason}
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
    with open_session(args) as session:
        entries = provider_status(session)
    if args.json:
        print_json(entries)
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
                    key = "(cannot decrypt)" if "error" in k else cell(k["key"])
                    rows.append([e["provider"], k["name"], key, state, source, k["base_url"] or default_base])
                continue
            if e["source"] == "env":
                source = f"env {e['env_var']}"
            else:
                source = f"none (set {e['env_var']} or `providers set`)"
            rows.append([e["provider"], "env" if e["source"] == "env" else "-", cell(e["key"]),
                         "ready" if e["source"] else "-", source, default_base])
        print_table(["PROVIDER", "NAME", "KEY", "STATE", "SOURCE", "BASE URL"], rows)
    for e in entries:
        if "error" in e:
            print(f"warning: {e['provider']}: {e['error']}", file=sys.stderr)
        if "warning" in e:
            print(f"warning: {e['provider']}: {e['warning']}", file=sys.stderr)
    return 0


def _cmd_providers_remove(args: argparse.Namespace) -> int:
    _register_configured_providers()
    provider = registry.normalize(args.provider)
    with open_session(args) as session:
        repo.remove_provider(session=session, provider=provider, name=args.name)
        left = [r.name for r in repo.list_providers(session=session) if r.provider == provider]
    env_var = registry.env_var(provider)
    if left:
        fallback = f"; its pool has {', '.join(left)}"
    else:
        fallback = f"; {env_var} from the environment is used instead" if env_var and os.environ.get(env_var) else ""
    named = "" if repo.normalize_key_name(args.name) == DEFAULT_KEY_NAME else f" {args.name.strip()!r}"
    print(f"Removed the stored {provider} key{named}{fallback}.")
    return 0


def _cmd_providers_restore(args: argparse.Namespace) -> int:
    provider = registry.normalize(args.provider)
    with open_session(args) as session:
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


def add_providers_parser(
    commands: argparse._SubParsersAction, database: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Register `providers` and its subcommands."""
    providers = commands.add_parser(
        "providers", help="store provider API keys (encrypted) and base URLs",
        description="Provider keys are stored encrypted (TOKENSENSE_SECRET, or a generated key file in "
        "TOKENSENSE_HOME). Without a stored key, the gateway uses the provider's environment variable: "
        + ", ".join(registry.env_var(p) for p in registry.names()) + ".",
    )
    providers.set_defaults(handler=show_help(providers))
    providers_commands = providers.add_subparsers(title="commands", metavar="COMMAND")

    pset = providers_commands.add_parser(
        "set", parents=[database], help="store a provider's API key", formatter_class=FORMATTER,
        description="Store (or replace) a provider's API key, encrypted at rest.",
        epilog="examples:\n"
        "  tokensense providers set openai --api-key -      # paste the key; it stays out of shell history\n"
        "  printenv ANTHROPIC_API_KEY | tokensense providers set anthropic --api-key -\n"
        "  tokensense providers set openai --api-key - --base-url https://my-proxy.example.com\n"
        "  tokensense providers set openai --api-key - --name backup   # a second key: used round-robin",
    )
    pset.add_argument("provider", metavar="PROVIDER", help=", ".join(registry.names()))
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
    premove.add_argument("provider", metavar="PROVIDER", help=", ".join(registry.names()))
    premove.set_defaults(handler=_cmd_providers_remove)

    prestore = providers_commands.add_parser(
        "restore", parents=[database, name_option], help="put a key the provider refused back in its pool",
        description="A key the provider answered 401 or 403 is taken out of its pool until restored here "
        "(or replaced with `providers set`). Restoring also ends its cool-down and circuit breaker.",
        epilog="example:\n  tokensense providers restore openai --name backup", formatter_class=FORMATTER,
    )
    prestore.add_argument("provider", metavar="PROVIDER", help=", ".join(registry.names()))
    prestore.set_defaults(handler=_cmd_providers_restore)
