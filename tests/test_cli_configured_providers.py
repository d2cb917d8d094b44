"""`tokensense providers` with the cloud providers and the OpenAI-compatible ones config.toml declares."""
# ruff: noqa: F811  (fixtures imported from test_cli are used as test arguments)

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from sqlmodel import Session
from test_cli import _assert_user_error, home, run  # noqa: F401

from tokensense import providers
from tokensense.storage import db, repo


@pytest.fixture(autouse=True)
def registry():
    saved = dict(providers.PROVIDERS)
    yield
    providers.PROVIDERS.clear()
    providers.PROVIDERS.update(saved)


def _config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)


def test_a_configured_provider_key_is_stored_and_listed(run, home: Path, monkeypatch) -> None:
    _config(home, '[providers.deepseek]\nbase_url = "https://api.deepseek.com"\napi_key_env = "DEEPSEEK_API_KEY"\n')
    assert run("providers", "set", "deepseek", "--api-key", "sk-deepseek-SECRET-1234").code == 0
    entries = {e["provider"]: e for e in json.loads(run("providers", "list", "--json").out)}
    assert entries["deepseek"]["source"] == "stored" and "SECRET" not in entries["deepseek"]["key"]
    assert entries["deepseek"]["env_var"] == "DEEPSEEK_API_KEY"
    assert {"azure", "bedrock", "vertex"} <= set(entries)
    assert run("providers", "remove", "deepseek").code == 0


def test_undeclared_names_and_bad_tables_are_clear_errors(run, home: Path) -> None:
    _assert_user_error(run("providers", "set", "groq", "--api-key", "x"), "declare it under [providers.NAME]")
    _config(home, '[providers.groq]\napi_key_env = "GROQ_API_KEY"\n')
    _assert_user_error(run("providers", "set", "groq", "--api-key", "x"), "base_url is required")


def test_vertex_takes_a_multi_line_service_account_json_from_stdin(run, monkeypatch) -> None:
    key = json.dumps({"type": "service_account", "project_id": "p", "client_email": "a@b"}, indent=2)
    monkeypatch.setattr(sys, "stdin", io.StringIO(key + "\n"))
    assert run("providers", "set", "vertex", "--api-key", "-").code == 0
    with Session(db.get_engine()) as session:
        stored, _ = repo.get_provider_secret(session=session, provider="vertex")
    assert json.loads(stored)["client_email"] == "a@b"


def test_bedrock_keys_are_stored_like_any_provider_key(run) -> None:
    assert run("providers", "set", "bedrock", "--api-key", "AKIAEXAMPLE:secret/value").code == 0
    with Session(db.get_engine()) as session:
        assert repo.get_provider_secret(session=session, provider="bedrock")[0] == "AKIAEXAMPLE:secret/value"
