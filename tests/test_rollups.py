"""Usage rollups give exactly the numbers of the raw records: random records (unpriced, refused, retried,
written twice), random windows, groupings and filters, re-pricing and pruning; SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, Integer, String, delete, func, literal, select
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine

from tests.conftest import service_missing
from tokensense.storage import analytics, lite, repo, retention, rollups
from tokensense.storage.db import make_engine, normalize_database_url
from tokensense.storage.models import ApiKey, Usage, UsageCreate, UsageRetention, UsageRollup

BASE = datetime(2025, 6, 30, 22, 0, tzinfo=UTC)  # the records span a day and a month boundary
SPAN_US = 4 * 3600 * 10**6
NOW = BASE + timedelta(hours=4)
PG_URL = os.environ.get("TOKENSENSE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def _engine(backend: str) -> Iterator[Engine]:
    if backend == "sqlite":
        engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
        SQLModel.metadata.create_all(engine)
        yield engine
        engine.dispose()
        return
    try:
        admin = create_engine(normalize_database_url(PG_URL), connect_args={"connect_timeout": 3})
        schema = f"test_rollups_{uuid.uuid4().hex[:12]}"
        with admin.begin() as connection:
            connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except Exception as e:
        service_missing(f"PostgreSQL at {PG_URL} is not reachable ({type(e).__name__})")
    engine = create_engine(normalize_database_url(PG_URL), connect_args={"options": f"-csearch_path={schema}"})
    SQLModel.metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    with _engine(request.param) as engine:
        yield engine


def _empty(engine: Engine) -> None:
    with Session(engine) as session:
        for table in (Usage, UsageRollup, UsageRetention, ApiKey):
            session.exec(delete(table))  # type: ignore[call-overload]
        for key in ("k1", "k2"):
            session.add(ApiKey(id=key, name=f"name-{key}", key_hash=f"hash-{key}", key_prefix="tsk_x",
                               budget_usd=10.0, budget_period={"k1": "daily", "k2": "monthly"}[key],
                               created_at=BASE - timedelta(days=40)))
        session.commit()


# --- random records ------------------------------------------------------------------------

costs = st.one_of(
    st.none(),  # unpriced
    st.just(0.0),  # free, or refused before the provider (402, 429, 403)
    st.floats(0, 3, allow_nan=False).map(lambda c: round(c, 10)),  # as call_cost rounds
    st.floats(0, 1e-6, allow_nan=False),  # any float, rounding edges
    st.sampled_from([5e-11, 1.5e-10, 0.1, 0.2, 0.3]),  # half units, and sums that floats get wrong
)
optional_ms = st.one_of(st.none(), st.floats(0, 1e5, allow_nan=False))
records = st.fixed_dictionaries({
    "offset_us": st.one_of(st.integers(0, SPAN_US), st.sampled_from([0, 59_999_999, 60_000_000, 3_599_999_999,
                                                                        3_600_000_000, 7_200_000_000])),
    "request_id": st.sampled_from([f"r{i}" for i in range(12)]),  # few ids: retries share one, some repeat exactly
    "attempt": st.integers(1, 3),
    "key": st.sampled_from([(None, None), ("k1", "name-k1"), ("k2", "name-k2"), ("k3", "gone")]),
    "project": st.sampled_from([None, "", "web", "mobile"]),
    "workflow": st.sampled_from([None, "", "support", "summarize"]),
    "step": st.sampled_from([None, "classify", "answer"]),
    "execution_id": st.sampled_from([None, "e1", "e2"]),
    "source": st.sampled_from([None, "api", "cron"]),
    "model": st.sampled_from([(None, None), ("openai", "gpt-4o"), ("anthropic", "claude-x"), ("openai", "unknown-1")]),
    "endpoint": st.sampled_from(["/v1/chat/completions", "/v1/messages", ""]),
    "status": st.sampled_from([200, 200, 200, 400, 402, 429, 500, 502]),
    "input_tokens": st.integers(0, 10**6),
    "output_tokens": st.integers(0, 10**5),
    "cached_input_tokens": st.integers(0, 1000),
    "images": st.integers(0, 3),
    "seconds": st.floats(0, 600, allow_nan=False),
    "cost_usd": costs,
    "latency_ms": optional_ms,
    "ttft_ms": optional_ms,
})


def _usage(fields: dict[str, Any]) -> UsageCreate:
    key_id, key_name = fields["key"]
    provider, model = fields["model"]
    return UsageCreate(
        created_at=BASE + timedelta(microseconds=fields["offset_us"]), request_id=fields["request_id"],
        attempt=fields["attempt"], key_id=key_id, key_name=key_name, provider=provider, model=model,
        **{name: fields[name] for name in ("project", "workflow", "step", "execution_id", "source", "endpoint",
                                           "status", "input_tokens", "output_tokens", "cached_input_tokens",
                                           "images", "seconds", "cost_usd", "latency_ms", "ttft_ms")},
    )


def _write(engine: Engine, batches: list[list[UsageCreate]]) -> list[UsageCreate]:
    """Write the batches as the recorder does; return the records stored (the first of each request and attempt)."""
    with Session(engine) as session:
        for batch in batches:
            repo.record_usages(session=session, usages=batch)
    stored: dict[tuple[str, int], UsageCreate] = {}
    for batch in batches:
        for record in batch:
            stored.setdefault((record.request_id, record.attempt), record)
    return list(stored.values())


# --- the oracle: plain Python over the records -------------------------------------------------


def _oracle(stored: list[UsageCreate], *, fields: list[str], since: datetime | None,
            filters: dict[str, Any]) -> dict[tuple, tuple[int, int, int, int, int, int]]:
    groups: dict[tuple, list[int]] = defaultdict(lambda: [0] * 6)
    for record in stored:
        if since is not None and record.created_at < since:
            continue
        if any(getattr(record, name) != value for name, value in filters.items()):
            continue
        sums = groups[tuple(getattr(record, name) for name in fields)]
        sums[0] += 1
        sums[1] += record.input_tokens
        sums[2] += record.output_tokens
        sums[3] += rollups.to_units(record.cost_usd, rollups.COST_UNITS_PER_USD)
        sums[4] += record.cost_usd is None
        sums[5] += record.status >= 400
    return {key: tuple(value) for key, value in groups.items()}  # type: ignore[misc]


def _as_oracle(rows: list[tuple[tuple, analytics.Totals, float]]) -> dict[tuple, tuple[int, ...]]:
    return {values: (t.requests, t.input_tokens, t.output_tokens, round(t.cost_usd * rollups.COST_UNITS_PER_USD),
                     t.unpriced, t.errors) for values, t, _ in rows}


GROUPINGS = [["workflow"], ["step"], ["workflow", "step"], ["key_name"], ["model"], ["provider"], ["project"],
             ["source"], ["endpoint"], ["status"], ["model", "project"], ["key_id", "status"], ["execution_id"],
             ["workflow", "execution_id"], ["provider", "status"], ["source", "endpoint"], ["workflow", "model"],
             ["project", "workflow", "step"]]
FILTERS = [{}, {"workflow": "support"}, {"workflow": None}, {"workflow": ""}, {"workflow": "support", "step": "answer"},
           {"key_id": "k1"}, {"model": "gpt-4o"}, {"status": 402}, {"execution_id": "e1"}]
windows = st.one_of(st.none(), st.integers(-10 * 60 * 10**6, SPAN_US + 60 * 10**6).map(
    lambda us: BASE + timedelta(microseconds=us)), st.sampled_from([BASE + timedelta(minutes=m) for m in (0, 1, 59, 60, 61, 150)]))


def test_every_usage_field_and_the_common_pairs_read_a_small_cut() -> None:
    """`tokensense usage --by F` for every field but the execution id and batch (which only records have), and the common
    pairs, reads a cut with few rows per hour and day, never the `all` cut (one row per combination of every field)."""
    pairs = [["workflow", "step"], ["model", "project"], ["workflow", "model"], ["provider", "status"],
             ["model", "status"], ["source", "status"], ["endpoint", "status"], ["project", "workflow"]]
    records_only = {"execution_id", "batch"}  # read from the records: no rollup holds them
    for fields in [[name] for name in repo.USAGE_GROUP_FIELDS if name not in records_only] + pairs:
        cut = rollups.cut_for(fields)
        assert cut is not None and cut.name != "all" and len(cut.dims) <= 5, fields
    assert rollups.cut_for(["status"]).name == "outcome"  # type: ignore[union-attr]
    assert rollups.cut_for(["model", "project"]).name == "attribution"  # type: ignore[union-attr]
    assert rollups.cut_for(["model"]).name == "model"  # type: ignore[union-attr]  # the smallest that has it


def _lite(engine: Engine, fields: list[str], since: datetime | None, limit: int | None = None) -> list[dict]:
    """`tokensense usage --by` through the driver alone (storage/lite.py), on the engine's database."""
    connection = engine.raw_connection()
    try:
        rows, _ = lite.grouped_report(connection, engine.dialect.name, fields=fields, since=since, limit=limit)
        return rows
    finally:
        connection.close()


def _check_lite(engine: Engine, session: Session, fields: list[str], since: datetime | None) -> None:
    """The driver-only path gives `analytics.grouped_totals`'s groups exactly: values, sums, floats, order, limit
    (and `repo.query_usage`'s, which `tokensense usage --by` printed before)."""
    if rollups.cut_for(fields) is None:
        with pytest.raises(lite.Unsupported):
            _lite(engine, fields, since)
        return
    for limit in (None, 2):
        expected = [{**dict(zip(fields, values, strict=True)), "requests": t.requests, "input_tokens": t.input_tokens,
                     "output_tokens": t.output_tokens, "cost_usd": t.cost_usd, "unpriced": t.unpriced}
                    for values, t, _ in analytics.grouped_totals(session=session, fields=fields, since=since,
                                                                 limit=limit)]
        assert _lite(engine, fields, since, limit) == expected
        if set(fields) <= set(repo.USAGE_GROUP_FIELDS):
            assert expected == repo.query_usage(session=session, since=since, by=fields, limit=limit)


def _check_everything(engine: Engine, stored: list[UsageCreate], since: datetime | None, fields: list[str],
                      filters: dict[str, Any]) -> None:
    """Every report, from the rollups and from the records, against the oracle (and each other, exactly)."""
    with Session(engine) as session:
        expected = _oracle(stored, fields=fields, since=since, filters=filters)
        from_rollups = analytics.grouped_totals(session=session, fields=fields, since=since, filters=filters)
        from_records = analytics.grouped_totals(session=session, fields=fields, since=since, filters=filters,
                                                from_records=True)
        assert _as_oracle(from_rollups) == expected
        assert from_rollups == from_records  # same order, same floats, same shares
        if not filters:
            _check_lite(engine, session, fields, since)

        (everything,) = _oracle(stored, fields=[], since=since, filters=filters).values() or [(0, 0, 0, 0, 0, 0)]
        for source in (False, True):
            totals = analytics.report_totals(session=session, since=since, filters=filters, from_records=source)
            assert (totals.requests, totals.input_tokens, totals.output_tokens,
                    round(totals.cost_usd * rollups.COST_UNITS_PER_USD), totals.unpriced, totals.errors) == everything
            assert totals.cost_usd == everything[3] / rollups.COST_UNITS_PER_USD

        start = since or BASE - timedelta(minutes=5)
        series = [analytics.spend_series(session=session, start=start, end=NOW, buckets=b, filters=filters,
                                         include_earlier=since is None, from_records=source)
                  for source in (False, True) for b in (7, 68)]
        assert series[0] == series[2] and series[1] == series[3]
        assert round(sum(series[1].values) * rollups.COST_UNITS_PER_USD) == everything[3]

        assert (analytics.key_budgets(session=session, now=NOW)
                == analytics.key_budgets(session=session, now=NOW, from_records=True))
        assert (analytics.first_usage_at(session=session, filters=filters)
                == analytics.first_usage_at(session=session, filters=filters, from_records=True))


@settings(max_examples=int(os.environ.get("ROLLUP_EXAMPLES", "24")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.lists(records, min_size=0, max_size=60), cuts=st.lists(st.integers(0, 60), max_size=4),
       replay=st.booleans(), since=windows, fields=st.sampled_from(GROUPINGS), filters=st.sampled_from(FILTERS))
def test_rollups_equal_the_records(engine: Engine, data: list[dict], cuts: list[int], replay: bool,
                                   since: datetime | None, fields: list[str], filters: dict[str, Any]) -> None:
    """Records written in batches (a batch written twice when `replay`: a spool replayed) give the same
    groups, totals, sparkline, budgets and first time from the rollups as from the records and from Python."""
    _empty(engine)
    usages = [_usage(fields) for fields in data]
    bounds = sorted({0, len(usages), *(c for c in cuts if c < len(usages))})
    batches = [usages[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    if replay and batches:
        batches.append(batches[0])
    stored = _write(engine, batches)
    _check_everything(engine, stored, since, fields, filters)


@settings(max_examples=int(os.environ.get("ROLLUP_EXAMPLES", "24")) // 2, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.lists(records, min_size=1, max_size=40), new_costs=st.lists(costs, min_size=1, max_size=40),
       since=windows, fields=st.sampled_from(GROUPINGS))
def test_repricing_moves_the_rollups(engine: Engine, data: list[dict], new_costs: list[float | None],
                                     since: datetime | None, fields: list[str]) -> None:
    """`update_usage_costs` changes records and rollups together: still equal, unpriced counts included."""
    _empty(engine)
    stored = _write(engine, [[_usage(fields) for fields in data]])
    with Session(engine) as session:
        ids = {(request_id, attempt): record_id for request_id, attempt, record_id
               in session.execute(select(Usage.request_id, Usage.attempt, Usage.id))}
        changes = {}
        for record, cost in zip(stored, new_costs, strict=False):
            changes[ids[(record.request_id, record.attempt)]] = cost
            record.cost_usd = cost
        assert repo.update_usage_costs(session=session, costs=changes) == len(changes)
    _check_everything(engine, stored, since, fields, {})


@settings(max_examples=int(os.environ.get("ROLLUP_EXAMPLES", "24")) // 2, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.lists(records, min_size=1, max_size=60), prune_hours=st.integers(1, 3), since=windows,
       fields=st.sampled_from([f for f in GROUPINGS if "execution_id" not in f]))
def test_pruned_records_leave_the_reports_exact(engine: Engine, data: list[dict], prune_hours: int,
                                                since: datetime | None, fields: list[str]) -> None:
    """After records before a whole hour are pruned, every rollup report over a window starting at or after
    that hour, or on a whole hour, or over everything, is what it was with every record."""
    _empty(engine)
    stored = _write(engine, [[_usage(fields) for fields in data]])
    horizon = BASE + timedelta(hours=prune_hours)
    result = retention.prune_usage(engine, older_than=NOW - horizon, now=NOW, batch=7, pause=0)
    assert result.raw_before == horizon
    assert result.records == sum(1 for r in stored if r.created_at < horizon)
    with Session(engine) as session:
        assert session.execute(select(func.count()).select_from(Usage).where(Usage.created_at < horizon)).scalar() == 0
        assert analytics.raw_records_before(session=session) == horizon
        effective = analytics.effective_start(session=session, since=since)
        if since is not None and since < horizon:
            assert effective == since.replace(minute=0, second=0, microsecond=0)
        expected = _oracle(stored, fields=fields, since=effective, filters={})
        assert _as_oracle(analytics.grouped_totals(session=session, fields=fields, since=since)) == expected
        _check_lite(engine, session, fields, since)
        (everything,) = _oracle(stored, fields=[], since=effective, filters={}).values() or [(0, 0, 0, 0, 0, 0)]
        totals = analytics.report_totals(session=session, since=since)
        assert (totals.requests, round(totals.cost_usd * rollups.COST_UNITS_PER_USD)) == (everything[0], everything[3])


def test_dims_key_tells_null_from_empty_and_is_the_same_in_sql(engine: Engine) -> None:
    _empty(engine)
    values: list[Any] = [None, "", "a", "a:1", "~", "ünï", 200]
    with engine.connect() as connection:
        for value in values:
            column = literal(value, Integer() if isinstance(value, int) else String())
            assert connection.execute(select(rollups.dims_key_sql([column]))).scalar() == rollups.dims_key([value])
    assert len({rollups.dims_key([v]) for v in values}) == len(values)
    assert rollups.dims_key(["1:a", None]) != rollups.dims_key(["1", ":a"])


def test_writers_at_once_add_exactly_and_never_deadlock(engine: Engine, tmp_path: Path) -> None:
    """Four writers (as four gateway instances on PostgreSQL) add batches to the same rollup rows at once,
    each record written by two of them (a spool replayed while the batch's first write commits): every
    record counts once, the rollups equal the records, and no batch fails (no deadlock)."""
    import random
    import threading

    if engine.dialect.name == "sqlite":  # the in-memory database has one connection: a file, one engine per writer
        engine = make_engine(f"sqlite:///{tmp_path / 'writers.db'}")
        SQLModel.metadata.create_all(engine)
    _empty(engine)
    rng = random.Random(28)
    minute = BASE + timedelta(minutes=30)
    pool = [UsageCreate(request_id=f"c{n}", created_at=minute + timedelta(seconds=rng.random() * 120),
                        workflow=rng.choice(["a", "b", None]), step=rng.choice(["x", "y"]),
                        key_id=rng.choice(["k1", "k2"]), model=rng.choice(["m1", "m2"]), status=rng.choice([200, 500]),
                        cost_usd=rng.choice([None, 0.1, 0.2, 1e-10]), input_tokens=n) for n in range(600)]
    shares: list[list[UsageCreate]] = [[] for _ in range(4)]
    for record in pool:
        for writer in rng.sample(range(4), 2):
            shares[writer].append(record)
    errors: list[BaseException] = []
    url = engine.url.render_as_string(hide_password=False)

    def write(records: list[UsageCreate]) -> None:
        own = make_engine(url) if engine.dialect.name == "sqlite" else create_engine(
            url, connect_args={"options": f"-csearch_path={_schema(engine)}"})
        try:
            shuffled = records[:]
            rng_local = random.Random(len(records))
            rng_local.shuffle(shuffled)
            with Session(own) as session:
                for start in range(0, len(shuffled), 40):
                    repo.record_usages(session=session, usages=shuffled[start:start + 40])
        except BaseException as e:  # reported by the assertion below
            errors.append(e)
        finally:
            if own is not engine:
                own.dispose()

    threads = [threading.Thread(target=write, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    _check_everything(engine, pool, None, ["workflow", "step"], {})
    _check_everything(engine, pool, minute + timedelta(seconds=61.5), ["key_id", "status"], {})
    with Session(engine) as session:
        assert analytics.report_totals(session=session).requests == len(pool)


def _schema(engine: Engine) -> str:
    with engine.connect() as connection:
        return str(connection.exec_driver_sql("SELECT current_schema()").scalar())


def test_any_text_in_a_field_reaches_its_rollup_row(engine: Engine) -> None:
    """Quotes, backslashes, commas, braces, the word NULL, spaces and non-ASCII text in attribution fields (sent
    to PostgreSQL as array literals) land in rollup rows of exactly that value, apart from NULL and ''."""
    _empty(engine)
    names = ['a"b', "back\\slash", "x,y", "{z}", "NULL", "null", " ", "", None, "ünï ✓", "'q'", "\\\"", "tab\there"]
    usages = [UsageCreate(request_id=f"t{n}", created_at=BASE + timedelta(minutes=n), workflow=name, step=name,
                          project=name, source=name, endpoint=name or "", model=name, key_id=name, key_name=name,
                          input_tokens=n + 1, cost_usd=n / 10) for n, name in enumerate(names)]
    stored = _write(engine, [usages])
    with Session(engine) as session:
        for fields in (["workflow"], ["workflow", "step"], ["project"], ["source"], ["endpoint"], ["model"],
                       ["key_name"], ["status"], ["model", "project"], ["key_id", "status"]):
            expected = _oracle(stored, fields=fields, since=None, filters={})
            assert _as_oracle(analytics.grouped_totals(session=session, fields=fields)) == expected, fields
            _check_lite(engine, session, fields, BASE + timedelta(minutes=2, seconds=30))
