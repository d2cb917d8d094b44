"""In-memory view of keys and provider credentials, refreshed off the event loop.

The proxy never reads the database or decrypts a provider key while it handles
a request: a background thread reloads both every `refresh_interval` seconds
(so a revoked key stops working within that time), and a key the cache has not
seen yet is looked up once in a worker thread.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from tokensense.providers import PROVIDERS
from tokensense.settings import Settings
from tokensense.storage.models import DEFAULT_KEY_NAME, ApiKey, ProviderCredential

log = logging.getLogger(__name__)

ENV_KEY_NAME = "env"  # the pool member that comes from the provider's environment variable


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the proxy needs to know about a TokenSense key."""

    id: str
    name: str
    revoked: bool
    project: str | None
    budget_usd: float | None
    budget_period: str
    rpm: int | None
    tpm: int | None
    plan: str | None
    allowed_models: tuple[str, ...]
    allowed_providers: tuple[str, ...]
    created_at: datetime | None = None
    max_call_usd: float | None = None  # the largest cost (reservation) one call of the key may have
    admin: bool = False  # may read every record (`keys create --admin`): the web dashboard, any request's record
    allowed_endpoints: tuple[str, ...] = ()  # endpoint patterns it may call (`keys create --allow-endpoint`); empty: any

    @classmethod
    def from_row(cls, row: ApiKey) -> KeyInfo:
        return cls(
            id=row.id,
            name=row.name,
            revoked=row.revoked_at is not None,
            project=row.project,
            budget_usd=row.budget_usd,
            budget_period=row.budget_period,
            rpm=row.rpm,
            tpm=row.tpm,
            plan=row.plan,
            allowed_models=tuple(row.allowed_models or ()),
            allowed_providers=tuple(row.allowed_providers or ()),
            created_at=row.created_at,
            max_call_usd=row.max_call_usd,
            admin=bool(row.admin),
            allowed_endpoints=tuple(row.allowed_endpoints or ()),
        )


@dataclass(frozen=True, slots=True)
class Credential:
    """A provider key ready to use, and where to send requests.

    A provider has a pool of them (`KeyStore.credentials`): the stored keys by name,
    else the one from its environment variable, named `env`.
    """

    api_key: str | None
    base_url: str
    source: str  # "stored", "env" or "none"
    name: str = DEFAULT_KEY_NAME
    disabled_reason: str | None = None  # taken out of the pool after a 401/403, until restored
    changed_at: datetime | None = None  # when the stored row last changed (set, taken out, restored)

    @property
    def disabled(self) -> bool:
        return self.disabled_reason is not None


class KeyStore:
    def __init__(self, engine: Engine, settings: Settings, refresh_interval: float = 1.0) -> None:
        self.engine = engine
        self.settings = settings
        self.refresh_interval = refresh_interval
        self._keys: dict[str, KeyInfo] = {}
        self._credentials: dict[str, tuple[Credential, ...]] = {}
        self._env_credentials: dict[str, Credential] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self._last_fingerprint: tuple | None = None

    # -- read by the proxy (no I/O) -------------------------------------------------
    def key(self, key_hash: str) -> KeyInfo | None:
        return self._keys.get(key_hash)

    def credentials(self, provider: str) -> tuple[Credential, ...]:
        """The provider's key pool: its stored keys (`default` first), else the environment's key."""
        stored = self._credentials.get(provider)
        if stored:
            return stored
        env = self._env_credentials.get(provider)
        if env is None:  # the environment does not change while the process runs
            env = self._env_credentials[provider] = self._env_credential(provider)
        return (env,)

    def credential(self, provider: str) -> Credential:
        """One key of the pool: the first one not taken out (else the first)."""
        pool = self.credentials(provider)
        return next((c for c in pool if not c.disabled), pool[0])

    # -- loading (blocking; run in threads) -----------------------------------------
    def load_key(self, key_hash: str) -> KeyInfo | None:
        """Look one key up in the database (for keys created since the last refresh)."""
        with Session(self.engine) as session:
            row = session.exec(select(ApiKey).where(ApiKey.key_hash == key_hash)).first()
            if row is None:
                return None
            info = KeyInfo.from_row(row)
        self._keys = {**self._keys, key_hash: info}
        return info

    def _fingerprint(self, session: Session) -> tuple:
        """Changes whenever a key or provider credential is created, updated or revoked."""
        keys = session.exec(select(func.count(), func.max(ApiKey.created_at), func.max(ApiKey.updated_at),
                                   func.max(ApiKey.revoked_at), func.count(ApiKey.revoked_at))).one()
        creds = session.exec(select(func.count(), func.max(ProviderCredential.updated_at))).one()
        return (*keys, *creds)

    def refresh(self, *, force: bool = False) -> None:
        """Reload keys and provider credentials if anything changed since the last load."""
        from tokensense.crypto import decrypt_secret

        with Session(self.engine) as session:
            fingerprint = self._fingerprint(session)
            if not force and fingerprint == self._last_fingerprint:
                return
            rows = session.exec(select(ApiKey)).all()
            keys = {row.key_hash: KeyInfo.from_row(row) for row in rows}
            creds_rows = [] if self.settings.ignore_stored_providers else session.exec(select(ProviderCredential)).all()
            stored = [(c.provider, c.name, c.encrypted_key, c.base_url, c.disabled_at, c.disabled_reason, c.updated_at)
                      for c in creds_rows]
        pools: dict[str, list[Credential]] = {}
        for provider, name, encrypted, base_url, disabled_at, disabled_reason, updated_at in stored:
            if provider not in PROVIDERS:
                continue
            try:
                api_key = decrypt_secret(encrypted, settings=self.settings)
            except Exception as e:
                log.error("cannot decrypt the stored %s key %r: %s", provider, name, e)
                continue
            reason = (disabled_reason or "taken out") if disabled_at is not None else None
            pools.setdefault(provider, []).append(
                Credential(api_key, base_url or self._base_url(provider), "stored", name, reason, updated_at))
        credentials = {provider: tuple(sorted(pool, key=lambda c: (c.name != DEFAULT_KEY_NAME, c.name)))
                       for provider, pool in pools.items()}
        self._keys = keys
        self._credentials = credentials
        self._last_fingerprint = fingerprint

    def take_out(self, provider: str, name: str, reason: str) -> None:
        """Record that the provider refused key `name` (401/403), so that every instance leaves it out
        until an operator restores it. Blocking: the gateway runs it in a worker thread (`KeyPools.on_take_out`).
        The environment's key is not stored: it stays out of this process's pool until a restart."""
        from tokensense.storage.repo import take_out_provider_key

        if name == ENV_KEY_NAME:
            return
        with Session(self.engine) as session:
            take_out_provider_key(session=session, provider=provider, name=name, reason=reason)
        log.warning("the %s key %r was refused by the provider (%s) and is taken out of its pool; "
                    "`tokensense providers restore %s --name %s` puts it back", provider, name, reason, provider, name)

    def _base_url(self, provider: str) -> str:
        return self.settings.base_url_override(provider) or PROVIDERS[provider].default_base_url

    def _env_credential(self, provider: str) -> Credential:
        adapter = PROVIDERS[provider]
        api_key = os.environ.get(adapter.env_key) or None
        return Credential(api_key, self._base_url(provider), "env" if api_key else "none", ENV_KEY_NAME)

    # -- background refresh ------------------------------------------------------------
    def start(self) -> None:
        self.refresh(force=True)
        self._thread = threading.Thread(target=self._run, name="tokensense-keystore", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                self.refresh()
                self.last_error = None
            except Exception as e:  # the database may be briefly unavailable
                self.last_error = str(e)
                log.warning("key refresh failed: %s", e)
            self.refresh_cloud_credentials()

    def refresh_cloud_credentials(self) -> None:
        """AWS chain credentials and Vertex access tokens, fetched here, off the event loop, before they expire."""
        for name, adapter in PROVIDERS.items():
            refresh = getattr(adapter, "refresh_in_background", None)
            if refresh is None:
                continue
            try:
                refresh(self.credential(name).api_key)
            except Exception as e:  # no network, a revoked service account: the calls answer 503 until fixed
                log.warning("cannot refresh the %s credentials: %s", name, type(e).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
