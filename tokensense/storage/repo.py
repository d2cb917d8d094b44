"""Repository functions: TokenSense keys, encrypted provider credentials, usage records and reports."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import bindparam, insert, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from tokensense.crypto import decrypt_secret, encrypt_secret, hash_key, new_key
from tokensense.storage.analytics import grouped_totals, report_totals
from tokensense.storage.batches import held_by_jobs
from tokensense.storage.cuts import USAGE_GROUP_ALIASES, USAGE_GROUP_FIELDS, normalize_group_fields  # noqa: F401 (re-exported)
from tokensense.storage.models import DEFAULT_KEY_NAME, ApiKey, ProviderCredential, Usage, UsageCreate
from tokensense.storage.rollups import add_to_rollups

BUDGET_PERIODS: tuple[str, ...] = ("total", "monthly", "daily")
PLANS: tuple[str, ...] = ("free", "pro", "enterprise")
USAGE_RECORD_FIELDS: tuple[str, ...] = (
    "id",
    "created_at",
    *(name for name in Usage.model_fields if name not in ("id", "created_at")),
    "unpriced",  # cost_usd is NULL: no price was known (not free, unknown)
)
KEY_PREFIX_LENGTH = 10  # "tsk_" and six characters: enough to recognise a key, useless to guess it


def as_utc(moment: datetime) -> datetime:
    """`moment` as an aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _for_column(moment: datetime, column: Any) -> datetime:
    """`moment` (UTC) in the form `column` binds: aware for a timezone-aware column
    (SQLModel's default for `datetime`, which refuses naive values), naive otherwise."""
    utc = as_utc(moment)
    return utc if getattr(column.type, "timezone", False) else utc.replace(tzinfo=None)


def _now_for(column: Any) -> datetime:
    return _for_column(datetime.now(UTC), column)


class NotFoundError(LookupError):
    """The key or provider credential the caller named does not exist."""


class _Unset(enum.Enum):
    UNSET = enum.auto()


UNSET = _Unset.UNSET
"""Marks an `update_key` argument the caller did not give (None means "clear it")."""


# --- validation -------------------------------------------------------------


def _provider_name(provider: str) -> str:
    """A provider name as stored: lower case. Which names exist is the registry's to say (the CLI checks)."""
    name = provider.strip().lower()
    if not name:
        raise ValueError("a provider name cannot be empty")
    return name


def _validate_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError("a key name cannot be empty")
    if len(name) > 200:
        raise ValueError("a key name can be at most 200 characters long")
    return name


def _validate_max_call(max_call_usd: float | None) -> float | None:
    if max_call_usd is not None and not max_call_usd > 0:  # `not >` also rejects NaN
        raise ValueError(f"a per-call cost cap must be a positive amount of US dollars, not {max_call_usd}")
    return max_call_usd


def _validate_budget(budget_usd: float | None) -> float | None:
    if budget_usd is not None and not budget_usd >= 0:  # `not >=` also rejects NaN
        raise ValueError(f"budget must be a non-negative amount of US dollars, not {budget_usd}")
    return budget_usd


def _validate_budget_period(budget_period: str) -> str:
    if budget_period not in BUDGET_PERIODS:
        raise ValueError(f"unknown budget period {budget_period!r}; choose one of: {', '.join(BUDGET_PERIODS)}")
    return budget_period


def _validate_rate(label: str, value: int | None) -> int | None:
    if value is not None and value <= 0:
        raise ValueError(f"{label} must be a positive number of {label}s per minute, not {value}")
    return value


def _validate_plan(plan: str | None) -> str | None:
    if plan is not None and plan not in PLANS:
        raise ValueError(f"unknown plan {plan!r}; choose one of: {', '.join(PLANS)}")
    return plan


def _validate_models(models: Iterable[str]) -> list[str]:
    patterns = [m.strip() for m in models]
    if any(not m for m in patterns):
        raise ValueError("an allowed-model pattern cannot be empty")
    return list(dict.fromkeys(patterns))


def _validate_endpoints(endpoints: Iterable[str]) -> list[str]:
    patterns = [e.strip() for e in endpoints]
    if any(not e or any(c.isspace() for c in e) for e in patterns):
        raise ValueError("an allowed-endpoint pattern is an endpoint id or glob such as 'chat.completions' or "
                         "'vector_stores' (`GET /v1/tokensense/endpoints` lists them); it cannot be empty")
    return list(dict.fromkeys(patterns))


def _validate_providers(providers: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(_provider_name(p) for p in providers))


def _validate_base_url(base_url: str | None) -> str | None:
    if base_url is None:
        return None
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base URL must be an http:// or https:// URL, not {base_url!r}")
    return base_url.strip().rstrip("/")


# --- TokenSense keys --------------------------------------------------------


def create_key(
    *,
    session: Session,
    name: str,
    budget_usd: float | None = None,
    budget_period: str = "total",
    rpm: int | None = None,
    tpm: int | None = None,
    plan: str | None = None,
    allowed_models: Sequence[str] = (),
    allowed_providers: Sequence[str] = (),
    project: str | None = None,
    admin: bool = False,
    max_call_usd: float | None = None,
    allowed_endpoints: Sequence[str] = (),
) -> tuple[ApiKey, str]:
    """Store a new key and return its row and the plaintext key (which is not kept anywhere).

    An `admin` key may also read every record (it opens the browser dashboard)."""
    name = _validate_name(name)
    if session.exec(select(ApiKey).where(ApiKey.name == name)).first() is not None:
        raise ValueError(f"a key named {name!r} already exists (names stay taken after revoking); choose another name")
    key = new_key()
    row = ApiKey(
        name=name,
        budget_usd=_validate_budget(budget_usd),
        budget_period=_validate_budget_period(budget_period),
        max_call_usd=_validate_max_call(max_call_usd),
        rpm=_validate_rate("request", rpm),
        tpm=_validate_rate("token", tpm),
        plan=_validate_plan(plan),
        allowed_models=_validate_models(allowed_models),
        allowed_providers=_validate_providers(allowed_providers),
        allowed_endpoints=_validate_endpoints(allowed_endpoints),
        project=project or None,
        admin=admin,
        key_hash=hash_key(key),
        key_prefix=key[:KEY_PREFIX_LENGTH],
        created_at=_now_for(ApiKey.__table__.c.created_at),
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError as e:  # another process created the same name since our check
        session.rollback()
        raise ValueError(f"a key named {name!r} already exists; choose another name") from e
    session.refresh(row)
    return row, key


def list_keys(*, session: Session, include_revoked: bool = True) -> list[ApiKey]:
    """All keys, oldest first."""
    statement = select(ApiKey).order_by(col(ApiKey.created_at), col(ApiKey.name))
    if not include_revoked:
        statement = statement.where(col(ApiKey.revoked_at).is_(None))
    return list(session.exec(statement).all())


def get_key_by_hash(*, session: Session, key_hash: str) -> ApiKey | None:
    """The key whose hash is `key_hash`, revoked or not (the caller checks `revoked_at`)."""
    return session.exec(select(ApiKey).where(ApiKey.key_hash == key_hash)).first()


def get_key(*, session: Session, name_or_id: str) -> ApiKey:
    """The key with this name, else with this id; `NotFoundError` when there is none."""
    row = session.exec(select(ApiKey).where(ApiKey.name == name_or_id)).first()
    if row is None:
        row = session.get(ApiKey, name_or_id)
    if row is None:
        raise NotFoundError(f"no key named or with id {name_or_id!r}; `tokensense keys list` shows the keys")
    return row


def revoke_key(*, session: Session, name_or_id: str) -> ApiKey:
    """Mark the key revoked (it stays listed, and its name stays taken); revoking twice keeps the first time."""
    row = get_key(session=session, name_or_id=name_or_id)
    if row.revoked_at is None:
        row.revoked_at = _now_for(ApiKey.__table__.c.revoked_at)
        session.add(row)
        session.commit()
        session.refresh(row)
    return row


def update_key(
    *,
    session: Session,
    name_or_id: str,
    budget_usd: float | None | _Unset = UNSET,
    budget_period: str | _Unset = UNSET,
    rpm: int | None | _Unset = UNSET,
    tpm: int | None | _Unset = UNSET,
    plan: str | None | _Unset = UNSET,
    allowed_models: Sequence[str] | _Unset = UNSET,
    allowed_providers: Sequence[str] | _Unset = UNSET,
    project: str | None | _Unset = UNSET,
    max_call_usd: float | None | _Unset = UNSET,
    allowed_endpoints: Sequence[str] | _Unset = UNSET,
) -> ApiKey:
    """Change the limits of a key; arguments left `UNSET` keep their value, `None` clears one."""
    row = get_key(session=session, name_or_id=name_or_id)
    if budget_usd is not UNSET:
        row.budget_usd = _validate_budget(budget_usd)
    if budget_period is not UNSET:
        row.budget_period = _validate_budget_period(budget_period)
    if rpm is not UNSET:
        row.rpm = _validate_rate("request", rpm)
    if tpm is not UNSET:
        row.tpm = _validate_rate("token", tpm)
    if plan is not UNSET:
        row.plan = _validate_plan(plan)
    if allowed_models is not UNSET:
        row.allowed_models = _validate_models(allowed_models)
    if allowed_providers is not UNSET:
        row.allowed_providers = _validate_providers(allowed_providers)
    if project is not UNSET:
        row.project = project or None
    if max_call_usd is not UNSET:
        row.max_call_usd = _validate_max_call(max_call_usd)
    if allowed_endpoints is not UNSET:
        row.allowed_endpoints = _validate_endpoints(allowed_endpoints)
    row.updated_at = datetime.now(UTC)
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


# --- provider credentials ---------------------------------------------------

_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def normalize_key_name(name: str | None) -> str:
    """A provider key's name in its pool (`default` when none is given), or `ValueError`."""
    name = DEFAULT_KEY_NAME if name is None else name.strip()
    if not _KEY_NAME.match(name):
        raise ValueError(f"a provider key name is 1 to 64 letters, digits, '.', '_' or '-', not {name!r}")
    return name


def _stored(session: Session, provider: str, name: str) -> ProviderCredential:
    row = session.get(ProviderCredential, (provider, name))
    if row is None:
        names = [r.name for r in list_providers(session=session) if r.provider == provider]
        if not names:
            raise NotFoundError(f"no key is stored for {provider}; `tokensense providers list` shows what is")
        raise NotFoundError(f"no {provider} key named {name!r} is stored; its pool has {', '.join(names)}")
    return row


def set_provider(*, session: Session, provider: str, api_key: str, base_url: str | None = None,
                 name: str | None = None) -> ProviderCredential:
    """Store (or replace) one key of the provider's pool, encrypted, and its optional base URL.

    Replacing a key that was taken out puts the new value back in the pool.
    """
    provider = _provider_name(provider)
    name = normalize_key_name(name)
    api_key = api_key.strip()
    if not api_key:
        raise ValueError(f"the API key for {provider} is empty")
    encrypted = encrypt_secret(api_key)
    row = session.get(ProviderCredential, (provider, name))
    if row is None:
        row = ProviderCredential(provider=provider, name=name, encrypted_key=encrypted)
    row.encrypted_key = encrypted
    row.base_url = _validate_base_url(base_url)
    row.updated_at = _now_for(ProviderCredential.__table__.c.updated_at)
    row.disabled_at = row.disabled_reason = None
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def list_providers(*, session: Session) -> list[ProviderCredential]:
    """The stored provider keys (still encrypted), by provider, then `default` first, then by name."""
    rows = session.exec(select(ProviderCredential).order_by(col(ProviderCredential.provider),
                                                            col(ProviderCredential.name))).all()
    return sorted(rows, key=lambda r: (r.provider, r.name != DEFAULT_KEY_NAME, r.name))


def remove_provider(*, session: Session, provider: str, name: str | None = None) -> None:
    """Delete one stored key (`default` unless named); `NotFoundError` when it is not stored."""
    row = _stored(session, _provider_name(provider), normalize_key_name(name))
    session.delete(row)
    session.commit()


def take_out_provider_key(*, session: Session, provider: str, name: str, reason: str) -> bool:
    """Mark a stored key taken out of its pool (the provider refused it); False when it is not stored.

    A key already taken out keeps its first time and reason.
    """
    row = session.get(ProviderCredential, (_provider_name(provider), normalize_key_name(name)))
    if row is None:
        return False
    if row.disabled_at is None:
        now = _now_for(ProviderCredential.__table__.c.disabled_at)
        row.disabled_at, row.disabled_reason, row.updated_at = now, reason[:500], now
        session.add(row)
        session.commit()
    return True


def restore_provider_key(*, session: Session, provider: str, name: str | None = None) -> ProviderCredential:
    """Put a key that was taken out back in its pool (a no-op for a key in use)."""
    row = _stored(session, _provider_name(provider), normalize_key_name(name))
    row.disabled_at = row.disabled_reason = None
    row.updated_at = _now_for(ProviderCredential.__table__.c.updated_at)
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def get_provider_secret(*, session: Session, provider: str, name: str | None = None) -> tuple[str, str | None] | None:
    """The decrypted API key and base URL stored for `provider` (its `default` key unless named), or None.

    Environment fallbacks (each provider's `env_key`) are the caller's business.
    Raises `SecretMismatchError` when the key was encrypted with another secret.
    """
    row = session.get(ProviderCredential, (_provider_name(provider), normalize_key_name(name)))
    if row is None:
        return None
    return decrypt_secret(row.encrypted_key), row.base_url


# --- usage ------------------------------------------------------------------


def _insert_usage_once(dialect: str) -> Any:
    """INSERT into usage that skips a record already stored (same request_id and attempt).

    So writing a record twice (a spool replayed after a crash, a batch retried
    after a commit whose answer was lost) stores it once.
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # no portable ON CONFLICT: a plain insert (the unique index still refuses a duplicate)
        return insert(Usage.__table__).execution_options(preserve_rowcount=True)
    # The row count says whether every record was inserted (`record_usages`); SQLAlchemy keeps it only when asked.
    return (dialect_insert(Usage.__table__).on_conflict_do_nothing(index_elements=["request_id", "attempt"])
            .execution_options(preserve_rowcount=True))


def record_usages(*, session: Session, usages: Sequence[UsageCreate]) -> int:
    """Insert the records in one batched statement (a record already stored is skipped) and add them to the
    rollups in the same transaction; return how many were given.

    Only the records this transaction inserted are added to the rollups: when the
    database says fewer rows were inserted than given (some were stored already: a
    spool replayed, a batch retried), the batch is written again row by row to learn
    which. So a record counts in the rollups exactly once, whichever instance wrote it.
    """
    if not usages:
        return 0
    created_at = Usage.__table__.c.created_at
    rows = [usage.model_dump() for usage in usages]
    for row in rows:
        row["created_at"] = _for_column(row["created_at"], created_at)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # Two instances writing the same record at once (a spool replayed while its first write commits)
        # wait on each other's unique index entry: in one key order they cannot wait in a circle. The
        # rollup rows are then locked in their own order (`rollups.rollup_deltas`), after every insert.
        rows.sort(key=lambda row: (row["request_id"], row["attempt"]))
    statement = _insert_usage_once(dialect)
    # On the table, not the ORM class: a Core executemany, without the ORM's bulk-insert bookkeeping per row.
    result = session.connection().execute(statement, rows)
    inserted = rows
    if result.rowcount != len(rows):
        session.rollback()
        connection = session.connection()
        inserted = [row for row in rows if connection.execute(statement, row).rowcount == 1]
    add_to_rollups(session.connection(), inserted)
    session.commit()
    return len(rows)


def update_usage_costs(*, session: Session, costs: Mapping[int, float | None]) -> int:
    """Set the cost of existing records (record id -> USD, None: unpriced), and move the rollups with them.

    For re-pricing stored records. In one transaction: the records are locked first (an
    UPDATE that changes nothing: SQLite's write lock, PostgreSQL's row locks), their old
    costs read, the new ones written, and the difference added to their rollup rows in
    one sorted pass, so writers adding new records meanwhile neither wait long nor
    deadlock, and the rollups stay exact. Records already pruned are not there to
    change; returns how many records were changed.
    """
    if not costs:
        return 0
    table = Usage.__table__
    ids = sorted(costs)
    connection = session.connection()
    updated = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        connection.execute(update(table).where(table.c.id.in_(chunk)).values(cost_usd=table.c.cost_usd))
        old = [dict(row._mapping) for row in connection.execute(select(table).where(table.c.id.in_(chunk)))]
        if not old:
            continue
        new = [{**row, "cost_usd": costs[row["id"]]} for row in old]
        connection.execute(update(table).where(table.c.id == bindparam("record_id"))
                           .values(cost_usd=bindparam("new_cost")),
                           [{"record_id": row["id"], "new_cost": row["cost_usd"]} for row in new])
        add_to_rollups(connection, new, removed=old)
        updated += len(old)
    session.commit()
    return updated


def usage_for_request(*, session: Session, request_id: str, key_id: str | None) -> list[dict[str, Any]]:
    """The records of one request (one per upstream attempt, oldest first), if `key_id` made it (None: whichever
    key made it); else []."""
    statement = select(Usage).where(Usage.request_id == request_id)
    if key_id is not None:
        statement = statement.where(Usage.key_id == key_id)
    statement = statement.order_by(col(Usage.attempt), col(Usage.id))
    return [usage_record_dict(row) for row in session.exec(statement).all()]


def iso_utc(moment: datetime) -> str:
    """ISO 8601 with an explicit `+00:00`, whether the database gave back a naive or an aware time."""
    return as_utc(moment).isoformat()


def usage_record_dict(row: Usage) -> dict[str, Any]:
    """One usage record as a JSON-ready dict; `created_at` is ISO 8601 in UTC."""
    data = row.model_dump()
    data["created_at"] = iso_utc(row.created_at)
    data["unpriced"] = row.cost_usd is None
    return {name: data[name] for name in USAGE_RECORD_FIELDS}


def query_usage(
    *,
    session: Session,
    since: datetime | None = None,
    by: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Usage since `since` (naive datetimes are UTC).

    Without `by`: one dict per record, newest first (`limit` keeps the newest).
    With `by`: one dict per group with the group fields and `requests`,
    `input_tokens`, `output_tokens`, `cost_usd`, `unpriced`, from the rollups
    (`tokensense.storage.analytics.grouped_totals`; execution ids from the records),
    costliest first (`limit` keeps the costliest groups).
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number, not {limit}")
    conditions = [] if since is None else [col(Usage.created_at) >= _for_column(since, Usage.__table__.c.created_at)]

    if not by:
        statement = select(Usage).where(*conditions).order_by(col(Usage.created_at).desc(), col(Usage.id).desc())
        if limit is not None:
            statement = statement.limit(limit)
        return [usage_record_dict(row) for row in session.exec(statement).all()]

    fields = normalize_group_fields(by)
    results = []
    for values, totals, _share in grouped_totals(session=session, fields=fields, since=since, limit=limit):
        results.append(
            {
                **dict(zip(fields, values, strict=True)),
                "requests": totals.requests,
                "input_tokens": totals.input_tokens,
                "output_tokens": totals.output_tokens,
                "cost_usd": totals.cost_usd,  # of the priced calls
                "unpriced": totals.unpriced,  # calls no price was known for (not in cost_usd)
            }
        )
    return results


def spent_since(*, session: Session, key_id: str, since: datetime | None) -> float:
    """What a key has spent (USD) since `since` (None: ever), from the rollups (its hour rows, and the
    minute rows and records of a window's partial first hour), plus what its batch jobs not booked yet hold
    (their largest cost, until their lines' records replace it). `key_id` may also be the subject of a
    budget on attribution (`tokensense.storage.budgets.spend_subject`)."""
    from tokensense.storage.budgets import subject_filters

    filters = subject_filters(key_id)
    spent = report_totals(session=session, since=since, filters=filters).cost_usd
    return spent + held_by_jobs(session=session, filters=filters, since=since)
