"""The long-lived services one gateway process shares: settings, storage, caches, recorder."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Engine

from tokensense.config import FileConfig, load_config
from tokensense.gateway.budgets import BudgetBook
from tokensense.gateway.guards import LoopGuard, SharedLoopCounts
from tokensense.gateway.keys import KeyStore
from tokensense.gateway.limits import CounterStore
from tokensense.gateway.shared_counters import hub_socket_from_env, make_counters
from tokensense.gateway.shutdown import InFlight
from tokensense.gateway.typical_output import OutputHistory, SharedOutputs, recent_outputs
from tokensense.metering.hub_recorder import HubRecorder
from tokensense.metering.pricing import PriceBook
from tokensense.metering.recorder import UsageRecorder, describe_error, usage_recorder
from tokensense.settings import Settings, get_settings
from tokensense.storage.retention import RetentionWorker

if TYPE_CHECKING:
    from tokensense.gateway.key_pool import KeyPools
    from tokensense.gateway.upstream_client import UpstreamClient
    from tokensense.storage.models import UsageCreate

log = logging.getLogger(__name__)

# `tokensense serve` exits with this status when the database is unavailable at start
# (sysexits' EX_TEMPFAIL: a supervisor may retry).
EXIT_DATABASE_UNAVAILABLE = 75


class StartupError(RuntimeError):
    """The gateway cannot start; the message is one line that says why."""


class Runtime:
    """Created once per gateway process, started when the proxy starts, closed at shutdown."""

    def __init__(self, settings: Settings | None = None, engine: Engine | None = None) -> None:
        self.settings = settings or get_settings()
        self._engine = engine
        self.config: FileConfig = FileConfig()
        self.prices = PriceBook()
        self.guard = LoopGuard(repeat_limit=None)  # the runaway guard ([guards] of config.toml, set at start)
        self.typical: OutputHistory | None = None  # the outputs seen per model with [budgets] reserve = "typical"
        self.keys: KeyStore | None = None
        self.recorder: UsageRecorder | HubRecorder | None = None
        self.retention: RetentionWorker | None = None  # prunes old records where this process writes them
        self.counters: CounterStore | None = None
        self.budgets: BudgetBook | None = None  # budgets on attribution (config.toml and `tokensense budgets set`)
        self.inflight = InFlight()
        self.open_sessions = 0  # realtime WebSocket sessions open now (addons/realtime.py): /health and metrics
        self.pools: KeyPools | None = None  # the provider-key pools' health (retries, cool-downs, breakers)
        self.upstream: UpstreamClient | None = None  # retries and fallbacks are made with it (created lazily)
        self._take_outs: set[asyncio.Future] = set()
        # Observers of records written outside the recorder (batch lines the follower booked): metrics, alerts.
        self.on_booked: list[Callable[[list[UsageCreate]], None]] = []
        self.started = False
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "runtime not started"
        return self._engine

    def start(self) -> None:
        with self._lock:
            if self.started:
                return
            from tokensense.storage.db import init_db, make_engine

            self.config = load_config(self.settings)
            from tokensense.providers.compatible import register_configured

            register_configured(self.config)  # [providers.NAME] of config.toml join the registry
            from tokensense.metering.catalog_update import install_catalog
            from tokensense.storage.probe import database_problem

            guards = self.config.guards
            self.guard = LoopGuard(repeat_limit=guards.repeat_limit, repeat_window_s=guards.repeat_window_s,
                                   max_calls_per_execution=guards.max_calls_per_execution,
                                   shared=self._shared_loop_counts())
            self.prices = PriceBook(self.config.models, snapshot=install_catalog(self.settings.home))
            try:
                if self._engine is None:
                    self._engine = make_engine(self.settings.effective_database_url)
                problem = database_problem(self._engine)
                if problem is None:
                    init_db(self._engine)
                    self.keys = KeyStore(self._engine, self.settings)
                    self.keys.start()
                    self.budgets = BudgetBook(self._engine, self.config.budgets.limits).start()
            except Exception as e:
                problem = describe_error(e)
            if problem is not None:
                raise StartupError(f"the database is unavailable, not starting: {problem}")
            hub = hub_socket_from_env()  # a worker of `serve --workers N`: the supervisor writes the records
            self.recorder = HubRecorder(hub) if hub else usage_recorder(self.engine, self.settings)
            if not hub and self.config.retention.raw_days is not None:
                self.retention = RetentionWorker(self.engine, raw_days=self.config.retention.raw_days).start()
            self.counters = make_counters(self.settings.redis_url, settings=self.settings)
            self._start_typical()
            from tokensense.gateway.key_pool import KeyPools
            from tokensense.gateway.retry import pool_policy

            self.pools = KeyPools(pool_policy(self.config.routing), redis_url=self.settings.redis_url,
                                  on_take_out=self._take_out)
            self.started = True

    def _shared_loop_counts(self) -> SharedLoopCounts | None:
        """The loop guard's counts in Redis when it is configured (and the guard is on): shared by every instance."""
        guards = self.config.guards
        if not self.settings.redis_url or (guards.repeat_limit is None and guards.max_calls_per_execution is None):
            return None
        return SharedLoopCounts(self.settings.redis_url, timeout=self.settings.redis_timeout)

    def _start_typical(self) -> None:
        """`[budgets] reserve = "typical"`: the outputs seen per model, seeded from the recent records in a thread."""
        if self.config.budgets.reserve == "typical":
            engine = self.engine
            shared = SharedOutputs(self.settings.redis_url, timeout=self.settings.redis_timeout) \
                if self.settings.redis_url else None
            self.typical = OutputHistory(shared=shared)
            self.typical.start_seeding(lambda: recent_outputs(engine))

    def upstream_client(self) -> UpstreamClient:
        """The httpx client of retries and fallbacks (made on first use, on the event loop)."""
        if self.upstream is None:
            from tokensense.gateway.upstream_client import UpstreamClient

            self.upstream = UpstreamClient()
        return self.upstream

    def _take_out(self, provider: str, name: str, reason: str) -> None:
        """A provider refused a key (401/403): write its take-out for every instance, off the event loop."""
        assert self.keys is not None
        future = asyncio.ensure_future(asyncio.to_thread(self.keys.take_out, provider, name, reason))
        self._take_outs.add(future)
        future.add_done_callback(self._took_out)

    def _took_out(self, future: asyncio.Future) -> None:
        self._take_outs.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.warning("could not store a provider key's take-out: %s", type(future.exception()).__name__)

    def spent_since(self, key_id: str, since: datetime | None) -> float:
        """The key's settled spend in the window, the seed of its budget counters (blocking: call from a thread).
        `key_id` may be the spend subject of a budget on attribution (`tokensense.storage.budgets`).

        Settled means recorded: the database's sum, plus the records this process has
        submitted that the database has not committed yet (the recorder's queue, the
        batch being written, the spool during a database outage). A worker of
        `serve --workers N` asks the supervisor's hub, which writes its records.
        """
        from sqlmodel import Session

        from tokensense.storage.repo import spent_since

        def database_sum() -> float:
            with Session(self.engine) as session:
                return spent_since(session=session, key_id=key_id, since=since)

        recorder = self.recorder
        if isinstance(recorder, UsageRecorder):
            return recorder.settled_spend(key_id, since, database_sum)
        if isinstance(recorder, HubRecorder):
            return recorder.settled_spend(key_id, since, database_sum)
        return database_sum()

    def database_ok(self) -> bool:
        """A cheap round trip to the database (blocking: call from a thread)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception as e:
            log.warning("database check failed: %s", e)
            return False

    def health(self) -> tuple[int, dict[str, object]]:
        """(HTTP status, body) of /health (blocking: call from a thread).

        200 "ok"; 200 "degraded" while the database is unreachable but records go
        to the spool (calls are served with the keys in memory); 503 when not
        started or when records cannot be kept (spool full or failing).
        """
        if not self.started:
            return 503, {"status": "starting", "database": "unknown"}
        database = self.database_ok()
        body: dict[str, object] = {"status": "ok" if database else "degraded",
                                   "database": "ok" if database else "unreachable"}
        status = 200
        if isinstance(self.recorder, UsageRecorder):  # a worker's HubRecorder: the supervisor spools
            recorder = self.recorder.status()
            body.update(recorder.as_dict())
            if recorder.dropped:
                body["status"], status = "failing", 503
        if self.counters is not None and hasattr(self.counters, "status"):
            body["limits"] = self.counters.status()
        body["realtime_sessions"] = self.open_sessions
        if self.inflight.draining:
            body["status"], status = "shutting_down", 503
        return status, body

    def close(self, timeout: float = 30.0) -> None:
        if self.retention:
            self.retention.close()
        if self.recorder:
            self.recorder.close(timeout=timeout)
        if self.keys:
            self.keys.stop()
        if self.budgets:
            self.budgets.stop()

    async def aclose(self, grace: float = 30.0) -> None:
        if self._take_outs:
            await asyncio.wait(list(self._take_outs), timeout=5)
        # The recorder's close waits for the database (or the spool): off the event loop.
        await asyncio.to_thread(self.close, grace)
        if self.counters is not None:
            await self.counters.close()
        await self.guard.aclose()
        if self.typical is not None and self.typical.shared is not None:
            await self.typical.shared.close()
        if self.pools is not None:
            await self.pools.close()
        if self.upstream is not None:
            await self.upstream.close()
