"""The long-lived services one gateway process shares: settings, storage, caches, recorder."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import text
from sqlalchemy.engine import Engine

from tokensense.config import FileConfig, load_config
from tokensense.gateway.keys import KeyStore
from tokensense.gateway.limits import CounterStore, make_counters
from tokensense.gateway.shared_counters import hub_socket_from_env
from tokensense.metering.hub_recorder import HubRecorder
from tokensense.metering.pricing import PriceBook
from tokensense.metering.recorder import UsageRecorder
from tokensense.settings import Settings, get_settings

log = logging.getLogger(__name__)


class Runtime:
    """Created once per gateway process, started when the proxy starts, closed at shutdown."""

    def __init__(self, settings: Settings | None = None, engine: Engine | None = None) -> None:
        self.settings = settings or get_settings()
        self._engine = engine
        self.config: FileConfig = FileConfig()
        self.prices = PriceBook()
        self.keys: KeyStore | None = None
        self.recorder: UsageRecorder | HubRecorder | None = None
        self.counters: CounterStore | None = None
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

            self.prices = PriceBook(self.config.models, snapshot=install_catalog(self.settings.home))
            if self._engine is None:
                self._engine = make_engine(self.settings.effective_database_url)
            init_db(self._engine)
            self.keys = KeyStore(self._engine, self.settings)
            self.keys.start()
            hub = hub_socket_from_env()  # a worker of `serve --workers N`: the supervisor writes the records
            self.recorder = (HubRecorder(hub) if hub
                             else UsageRecorder(self._engine, interval=self.settings.flush_interval))
            self.counters = make_counters(self.settings.redis_url)
            self.started = True

    def spent_since(self, key_id: str, since):
        """What the key spent in the window, from the database (blocking: call from a thread)."""
        from sqlmodel import Session

        from tokensense.storage.repo import spent_since

        with Session(self.engine) as session:
            return spent_since(session=session, key_id=key_id, since=since)

    def database_ok(self) -> bool:
        """A cheap round trip to the database (blocking: call from a thread)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception as e:
            log.warning("database check failed: %s", e)
            return False

    def close(self) -> None:
        if self.recorder:
            self.recorder.close()
        if self.keys:
            self.keys.stop()

    async def aclose(self) -> None:
        self.close()
        if self.counters is not None:
            await self.counters.close()
