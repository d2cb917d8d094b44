"""Provider-key pools in storage, the key store and the command line: several named keys per provider."""

from __future__ import annotations

import io
import sys
import uuid

import pytest
from sqlmodel import Session
from test_cli import _assert_user_error, _json, home, run  # noqa: F401 - fixtures

from tests.conftest import service_missing
from tokensense.gateway.key_pool import KeyPools, Outcome, PoolPolicy, RedisHealth
from tokensense.gateway.keys import KeyStore
from tokensense.settings import get_settings, reset_settings
from tokensense.storage import db, repo


def _openai(entries: list[dict]) -> dict:
    return next(e for e in entries if e["provider"] == "openai")


def test_pool_set_list_take_out_restore_remove(run, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    assert run("providers", "set", "openai", "--api-key", "sk-first-key-aaaa1111").code == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("sk-second-key-bbbb2222\n"))
    stored = run("providers", "set", "openai", "--api-key", "-", "--name", "backup",
                 "--base-url", "https://backup.example.com")
    assert stored.code == 0 and "'backup'" in stored.out and "bbbb2222" not in stored.out.replace("…2222", "")

    openai = _openai(_json(run("providers", "list", "--json")))
    assert [(k["name"], k["key"], k["state"], k["base_url"]) for k in openai["keys"]] == [
        ("default", "sk-…1111", "ready", None), ("backup", "sk-…2222", "ready", "https://backup.example.com")]
    assert (openai["source"], openai["key"]) == ("stored", "sk-…1111")

    # The gateway took `backup` out after a 401.
    with Session(db.get_engine()) as session:
        assert repo.take_out_provider_key(session=session, provider="openai", name="backup", reason="401: bad key")
    listed = run("providers", "list")
    line = next(x for x in listed.out.splitlines() if "backup" in x)
    assert "out (since" in line and "401: bad key" in line
    assert "sk-second-key" not in listed.out

    restored = run("providers", "restore", "openai", "--name", "backup")
    assert restored.code == 0 and "back in the pool" in restored.out
    assert [k["state"] for k in _openai(_json(run("providers", "list", "--json")))["keys"]] == ["ready", "ready"]

    assert "its pool has default" in run("providers", "remove", "openai", "--name", "backup").out
    _assert_user_error(run("providers", "remove", "openai", "--name", "backup"),
                       "no openai key named 'backup' is stored; its pool has default")
    _assert_user_error(run("providers", "restore", "openai", "--name", "nope"), "no openai key named 'nope'")
    _assert_user_error(run("providers", "set", "openai", "--api-key", "k", "--name", "two words"),
                       "a provider key name is 1 to 64 letters")


def test_replacing_a_key_that_was_taken_out_puts_it_back(run) -> None:  # noqa: F811
    assert run("providers", "set", "anthropic", "--api-key", "sk-ant-old-1234").code == 0
    with Session(db.get_engine()) as session:
        repo.take_out_provider_key(session=session, provider="anthropic", name="default", reason="403")
    assert run("providers", "set", "anthropic", "--api-key", "sk-ant-new-5678").code == 0
    anthropic = next(e for e in _json(run("providers", "list", "--json")) if e["provider"] == "anthropic")
    assert [(k["key"], k["state"]) for k in anthropic["keys"]] == [("sk-…5678", "ready")]


def test_list_shows_the_cool_downs_gateways_share_in_redis(run, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    import asyncio
    import socket

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
    except OSError:
        service_missing("Redis at 127.0.0.1:6379 is not reachable")
    # The command line reads the state under the default prefix; a fresh provider-key name keeps tests apart.
    name = f"k{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("TOKENSENSE_REDIS_URL", "redis://127.0.0.1:6379/0")
    reset_settings()
    assert run("providers", "set", "gemini", "--api-key", "gm-key-12345678", "--name", name).code == 0

    async def fail() -> None:
        pools = KeyPools(PoolPolicy(breaker_failures=2), shared=RedisHealth("redis://127.0.0.1:6379/0"))
        for _ in range(2):
            await pools.report("gemini", name, Outcome.FAILED)
        await pools.close()

    asyncio.run(fail())
    key = _json(run("providers", "list", "--json"))[2]["keys"][0]
    assert (key["name"], key["state"]) == (name, "open") and "2 failures in a row" in key["detail"]
    assert run("providers", "restore", "gemini", "--name", name).code == 0
    assert _json(run("providers", "list", "--json"))[2]["keys"][0]["state"] == "ready"


def test_key_store_gives_each_provider_its_pool(run, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("TOKENSENSE_SECRET", "pool-secret")
    monkeypatch.setenv("XAI_API_KEY", "xai-env-key")
    reset_settings()
    engine = db.get_engine()
    db.init_db(engine)
    with Session(engine) as session:
        repo.set_provider(session=session, provider="openai", api_key="sk-b", name="backup")
        repo.set_provider(session=session, provider="openai", api_key="sk-a")
        repo.set_provider(session=session, provider="openai", api_key="sk-c", name="azure",
                          base_url="https://c.example.com")
        repo.take_out_provider_key(session=session, provider="openai", name="backup", reason="401 invalid")
    store = KeyStore(engine, get_settings())
    store.refresh(force=True)
    pool = store.credentials("openai")
    assert [(c.name, c.api_key, c.disabled, c.source) for c in pool] == [
        ("default", "sk-a", False, "stored"), ("azure", "sk-c", False, "stored"), ("backup", "sk-b", True, "stored")]
    assert pool[1].base_url == "https://c.example.com" and pool[2].disabled_reason == "401 invalid"
    assert store.credential("openai").api_key == "sk-a"
    env = store.credentials("xai")
    assert [(c.name, c.api_key, c.source) for c in env] == [("env", "xai-env-key", "env")]

    with Session(engine) as session:
        repo.restore_provider_key(session=session, provider="openai", name="backup")
    store.refresh()
    assert not store.credentials("openai")[2].disabled


def test_key_store_take_out_is_written_for_every_instance(run, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("TOKENSENSE_SECRET", "pool-secret")
    reset_settings()
    engine = db.get_engine()
    db.init_db(engine)
    with Session(engine) as session:
        repo.set_provider(session=session, provider="openai", api_key="sk-a")
        repo.set_provider(session=session, provider="openai", api_key="sk-b", name="backup")
    this, other = KeyStore(engine, get_settings()), KeyStore(engine, get_settings())
    this.refresh(force=True)
    other.refresh(force=True)
    this.take_out("openai", "backup", "401: Incorrect API key provided")
    this.take_out("openai", "env", "401")  # the environment's key is not stored: nothing to write
    other.refresh()
    assert [(c.name, c.disabled_reason) for c in other.credentials("openai")] == [
        ("default", None), ("backup", "401: Incorrect API key provided")]
    listed = run("providers", "list")
    assert "401: Incorrect API key provided" in listed.out
