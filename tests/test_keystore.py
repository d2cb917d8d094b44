"""The gateway's in-memory key cache: reloads when keys change, and only then."""

from __future__ import annotations

from sqlmodel import Session

from tokensense.crypto import hash_key, reset_fernet_cache
from tokensense.gateway.keys import KeyStore
from tokensense.settings import get_settings, reset_settings
from tokensense.storage import repo
from tokensense.storage.db import init_db, make_engine


def test_refresh_sees_updates_and_revocations_and_skips_when_nothing_changed(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TOKENSENSE_SECRET", "test-secret")
    monkeypatch.setenv("TOKENSENSE_HOME", str(tmp_path))
    reset_settings()
    reset_fernet_cache()
    settings = get_settings()  # the same settings repo.set_provider encrypts with
    engine = make_engine(f"sqlite:///{tmp_path / 'ks.db'}")
    init_db(engine)
    store = KeyStore(engine, settings)
    with Session(engine) as session:
        row, key = repo.create_key(session=session, name="a", rpm=5)
    store.refresh(force=True)
    assert store.key(hash_key(key)).rpm == 5

    loads = []
    original = store._fingerprint
    monkeypatch.setattr(store, "_fingerprint", lambda s: loads.append(1) or original(s))
    keys_before = store._keys
    store.refresh()
    assert store._keys is keys_before, "nothing changed: no reload"

    with Session(engine) as session:
        repo.update_key(session=session, name_or_id="a", rpm=7)
    store.refresh()
    assert store.key(hash_key(key)).rpm == 7

    with Session(engine) as session:
        repo.revoke_key(session=session, name_or_id="a")
    store.refresh()
    assert store.key(hash_key(key)).revoked

    with Session(engine) as session:
        repo.set_provider(session=session, provider="openai", api_key="sk-stored-123456")
    store.refresh()
    assert store.credential("openai").api_key == "sk-stored-123456"
    assert store.credential("openai").source == "stored"
    reset_settings()
    reset_fernet_cache()
