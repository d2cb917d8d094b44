"""`tokensense keys create|list|revoke|update`: TokenSense keys and their limits."""

from __future__ import annotations

import argparse
from typing import Any

from tokensense import providers as registry
from tokensense.cli.common import (
    FORMATTER,
    CliError,
    cell,
    choice,
    format_time,
    iso,
    money,
    nonnegative_float,
    open_session,
    or_none,
    positive_float,
    positive_int,
    print_json,
    print_table,
    show_help,
)
from tokensense.storage import repo
from tokensense.storage.models import ApiKey


def key_summary(key: ApiKey) -> dict[str, Any]:
    """What `keys list --json` shows of a key: everything but its hash."""
    return {
        "id": key.id,
        "name": key.name,
        "key_prefix": key.key_prefix,
        "budget_usd": key.budget_usd,
        "budget_period": key.budget_period,
        "max_call_usd": key.max_call_usd,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "plan": key.plan,
        "allowed_models": list(key.allowed_models),
        "allowed_providers": list(key.allowed_providers),
        "allowed_endpoints": list(key.allowed_endpoints or ()),
        "project": key.project,
        "admin": key.admin,
        "created_at": iso(key.created_at),
        "revoked_at": iso(key.revoked_at),
    }


def _describe_limits(key: ApiKey) -> str:
    parts = []
    if key.budget_usd is not None:
        parts.append(f"budget {money(key.budget_usd)} ({key.budget_period})")
    if key.max_call_usd is not None:
        parts.append(f"at most ${key.max_call_usd:g} per call")
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
    if key.allowed_endpoints:
        parts.append(f"endpoints {', '.join(key.allowed_endpoints)}")
    if key.project:
        parts.append(f"project {key.project}")
    described = "; ".join(parts) if parts else "no limits"
    return described + ("; admin (opens the browser dashboard)" if key.admin else "")


def _allowed_providers(names: list[str] | tuple[str, ...]) -> list[str]:
    """`--allow-provider` values as registered provider names (`ValueError` names the valid ones)."""
    return [registry.normalize(name) for name in names]


def _cmd_keys_create(args: argparse.Namespace) -> int:
    with open_session(args) as session:
        key, plaintext = repo.create_key(
            session=session,
            name=args.name,
            budget_usd=args.budget_usd,
            budget_period=args.budget_period,
            rpm=args.rpm,
            tpm=args.tpm,
            plan=args.plan,
            allowed_models=args.allow_model or (),
            allowed_providers=_allowed_providers(args.allow_provider or ()),
            project=args.project,
            admin=args.admin,
            max_call_usd=args.max_call_usd,
            allowed_endpoints=args.allow_endpoint or (),
        )
        if args.json:
            print_json({"id": key.id, "name": key.name, "key": plaintext})
            return 0
        print(f"Created key {key.name!r} (id {key.id}): {_describe_limits(key)}.")
        print()
        print(f"    {plaintext}")
        print()
        print("Copy it now: it is not shown again (TokenSense keeps only its hash).")
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    with open_session(args) as session:
        keys = repo.list_keys(session=session)
        if args.json:
            print_json([key_summary(k) for k in keys])
            return 0
        if not keys:
            print("No keys yet; create one with `tokensense keys create NAME`.")
            return 0
        headers = ["ID", "NAME", "KEY", "BUDGET", "MAX/CALL", "RPM", "TPM", "PLAN", "PROJECT", "MODELS", "PROVIDERS", "CREATED (UTC)", "REVOKED (UTC)"]
        rows = [
            [
                k.id,
                k.name + (" (admin)" if k.admin else ""),
                f"{k.key_prefix}…",
                "-" if k.budget_usd is None else f"{money(k.budget_usd)}/{k.budget_period}",
                "-" if k.max_call_usd is None else f"${k.max_call_usd:g}",
                cell(k.rpm),
                cell(k.tpm),
                cell(k.plan),
                cell(k.project),
                ",".join(k.allowed_models) or "*",
                ",".join(k.allowed_providers) or "*",
                format_time(k.created_at),
                format_time(k.revoked_at),
            ]
            for k in keys
        ]
        print_table(headers, rows, right=["BUDGET", "MAX/CALL", "RPM", "TPM"])
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    with open_session(args) as session:
        before = repo.get_key(session=session, name_or_id=args.name_or_id).revoked_at
        key = repo.revoke_key(session=session, name_or_id=args.name_or_id)
        if args.json:
            print_json(key_summary(key))
        elif before is not None:
            print(f"Key {key.name!r} (id {key.id}) was already revoked on {format_time(before)} UTC.")
        else:
            print(f"Revoked key {key.name!r} (id {key.id}); requests with it now get 401.")
    return 0


_UPDATE_FIELDS = ("budget_usd", "budget_period", "rpm", "tpm", "plan", "project")


def _cmd_keys_update(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {name: getattr(args, name) for name in _UPDATE_FIELDS if hasattr(args, name)}
    if hasattr(args, "max_call_usd") or args.no_max_call_usd:
        changes["max_call_usd"] = None if args.no_max_call_usd else args.max_call_usd
    if hasattr(args, "allow_model") or args.allow_any_model:
        changes["allowed_models"] = [] if args.allow_any_model else args.allow_model
    if hasattr(args, "allow_provider") or args.allow_any_provider:
        changes["allowed_providers"] = [] if args.allow_any_provider else _allowed_providers(args.allow_provider)
    if hasattr(args, "allow_endpoint") or args.allow_any_endpoint:
        changes["allowed_endpoints"] = [] if args.allow_any_endpoint else args.allow_endpoint
    if not changes:
        raise CliError("nothing to change; give at least one option (see `tokensense keys update --help`)")
    with open_session(args) as session:
        key = repo.update_key(session=session, name_or_id=args.name_or_id, **changes)
        if args.json:
            print_json(key_summary(key))
        else:
            print(f"Updated key {key.name!r} (id {key.id}): {_describe_limits(key)}.")
    return 0


def _add_key_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    keep: dict[str, Any] = {"default": argparse.SUPPRESS} if update else {}
    clear = " ('none' removes it)" if update else ""
    limits = parser.add_argument_group("limits (stored now, enforced by the gateway)")
    limits.add_argument(
        "--budget-usd", metavar="X", type=or_none(nonnegative_float) if update else nonnegative_float,
        help=f"spend allowed per budget period, in US dollars{clear}", **keep,
    )
    limits.add_argument(
        "--budget-period", type=choice(repo.BUDGET_PERIODS), metavar="{" + ",".join(repo.BUDGET_PERIODS) + "}",
        help="period the budget applies to" + ("" if update else " (default: total)"),
        **(keep if update else {"default": "total"}),
    )
    max_call = limits.add_mutually_exclusive_group() if update else limits
    max_call.add_argument(
        "--max-call-usd", metavar="X", type=positive_float,
        help="the largest cost one call may have, in US dollars: a call whose largest cost (its prompt and output "
        "cap at the model's price) is above X is refused 402 before the provider", **keep,
    )
    if update:
        max_call.add_argument("--no-max-call-usd", action="store_true", help="remove the per-call cost cap")
    limits.add_argument(
        "--rpm", metavar="N", type=or_none(positive_int) if update else positive_int,
        help=f"requests per minute{clear}", **keep,
    )
    limits.add_argument(
        "--tpm", metavar="N", type=or_none(positive_int) if update else positive_int,
        help=f"tokens per minute{clear}", **keep,
    )
    limits.add_argument(
        "--plan", type=choice(repo.PLANS, allow_none=update), metavar="{" + ",".join(repo.PLANS) + "}",
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
        help=f"allow only provider P ({', '.join(registry.names())}); repeat for more"
        + ("; replaces the current list" if update else "; default: all providers"),
        **keep,
    )
    if update:
        providers.add_argument("--allow-any-provider", action="store_true", help="remove the provider restriction")
    endpoints = limits.add_mutually_exclusive_group() if update else limits
    endpoints.add_argument(
        "--allow-endpoint", metavar="GLOB", action="append",
        help="allow only endpoints matching GLOB (e.g. 'chat.completions', 'vector_stores', 'responses*'; "
        "GET /v1/tokensense/endpoints lists them); repeat for more"
        + ("; replaces the current list" if update else "; default: all endpoints"),
        **keep,
    )
    if update:
        endpoints.add_argument("--allow-any-endpoint", action="store_true", help="remove the endpoint restriction")
    limits.add_argument(
        "--project", metavar="P", type=or_none(str) if update else str,
        help=f"project that usage is attributed to when a request has no x-project header{clear}", **keep,
    )


def add_keys_parser(
    commands: argparse._SubParsersAction, database: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Register `keys` and its subcommands."""
    keys = commands.add_parser(
        "keys", help="create, list, update and revoke TokenSense keys (tsk_...)", formatter_class=FORMATTER,
        description="TokenSense keys are what applications send instead of a provider key. "
        "Only a hash of each key is stored, so a key is shown once, when it is created.",
    )
    keys.set_defaults(handler=show_help(keys))
    keys_commands = keys.add_subparsers(title="commands", metavar="COMMAND")

    create = keys_commands.add_parser(
        "create", parents=[database, as_json], help="create a key (shown once)", formatter_class=FORMATTER,
        description="Create a key and print it once. With --json, print {\"id\", \"name\", \"key\"}.",
        epilog="example:\n  tokensense keys create ci --budget-usd 5 --budget-period daily --allow-model 'gpt-4o*'",
    )
    create.add_argument("name", metavar="NAME", help="a unique name for the key (usage reports show it)")
    create.add_argument("--admin", action="store_true",
                        help="an admin key: it may read every record and opens `tokensense dashboard --web`")
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
        "update", parents=[database, as_json], help="change a key's limits", formatter_class=FORMATTER,
        description="Change a key's limits. Options not given keep their value; 'none' clears a limit.",
        epilog="example:\n  tokensense keys update ci --rpm 120 --budget-usd none",
    )
    update.add_argument("name_or_id", metavar="NAME_OR_ID", help="the key's name or id (see `keys list`)")
    _add_key_options(update, update=True)
    update.set_defaults(handler=_cmd_keys_update)
