"""The `tokensense` command line, run in-process against a temporary TOKENSENSE_HOME."""

from __future__ import annotations

import csv
import io
import json
import sys
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import pytest
from sqlmodel import Session, select

from tokensense import crypto
from tokensense import providers as registry
from tokensense.cli import commands as cli
from tokensense.settings import reset_settings
from tokensense.storage import db, repo
from tokensense.storage.models import ApiKey, ProviderCredential, UsageCreate

ENV_VARS = [
    "TOKENSENSE_DATABASE_URL",
    "TOKENSENSE_SECRET",
    *(registry.env_var(p) for p in registry.names()),
    *(f"TOKENSENSE_{p.upper()}_BASE_URL" for p in registry.names()),
]


class Result(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    monkeypatch.setenv("TOKENSENSE_HOME", str(home))
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    reset_settings()
    crypto.reset_fernet_cache()
    db.reset_engine()
    yield home
    db.reset_engine()
    reset_settings()
    crypto.reset_fernet_cache()


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    def run(*argv: str) -> Result:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return Result(code, captured.out, captured.err)

    return run


def _json(result: Result):
    assert result.code == 0, result.err
    return json.loads(result.out)


def _assert_user_error(result: Result, message: str) -> None:
    assert result.code == 2
    assert result.err.startswith("error: ")
    assert result.err.count("\n") == 1, result.err  # one line
    assert message in result.err


# --- help ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["keys", "--help"],
        ["keys", "create", "--help"],
        ["keys", "update", "--help"],
        ["providers", "set", "--help"],
        ["usage", "--help"],
        ["serve", "--help"],
        ["dashboard", "--help"],
        ["demo", "--help"],
    ],
)
def test_help_is_printed_and_exits_zero(run, argv: list[str]) -> None:
    result = run(*argv)
    assert result.code == 0
    assert result.out.startswith("usage: tokensense")


def test_no_command_shows_help(run) -> None:
    result = run()
    assert result.code == 2
    assert "commands:" in result.err
    assert "keys" in result.err and "providers" in result.err and "usage" in result.err


def test_bad_arguments_are_one_line_errors(run) -> None:
    _assert_user_error(run("frobnicate"), "invalid choice")
    _assert_user_error(run("keys", "create", "k", "--plan", "gold"), "argument --plan: invalid choice 'gold'")
    _assert_user_error(run("keys", "create", "k", "--rpm", "-3"), "--rpm")
    _assert_user_error(run("usage", "--json", "--csv"), "not allowed with argument")


# --- keys ---------------------------------------------------------------------


def test_keys_create_json_is_exactly_id_name_key(run, home: Path) -> None:
    created = _json(run("keys", "create", "ci", "--json", "--budget-usd", "5", "--allow-model", "gpt-4o*"))
    assert set(created) == {"id", "name", "key"}
    assert created["name"] == "ci"
    assert created["key"].startswith("tsk_")
    with Session(db.get_engine()) as session:
        row = session.exec(select(ApiKey)).one()
    assert row.id == created["id"]
    assert row.key_hash == crypto.hash_key(created["key"])
    assert created["key"] not in row.model_dump_json()


def test_keys_create_plain_shows_the_key_once_with_a_warning(run) -> None:
    result = run("keys", "create", "ci", "--budget-usd", "20", "--budget-period", "monthly", "--rpm", "60")
    assert result.code == 0
    key = next(word for word in result.out.split() if word.startswith("tsk_"))
    assert result.out.count(key) == 1
    assert "not shown again" in result.out
    assert "$20.00 (monthly)" in result.out
    listed = run("keys", "list")
    assert "ci" in listed.out and key not in listed.out
    assert key[: repo.KEY_PREFIX_LENGTH] in listed.out


def test_keys_create_duplicate_name(run) -> None:
    assert run("keys", "create", "ci").code == 0
    _assert_user_error(run("keys", "create", "ci"), "a key named 'ci' already exists")


def test_keys_list_never_shows_the_key_or_its_hash(run) -> None:
    created = _json(run("keys", "create", "ci", "--json", "--tpm", "1000", "--plan", "pro",
                        "--allow-provider", "openai", "--allow-provider", "anthropic", "--project", "billing"))
    listed = _json(run("keys", "list", "--json"))
    assert len(listed) == 1
    entry = listed[0]
    assert "key" not in entry and "key_hash" not in entry
    assert created["key"] not in json.dumps(listed)
    assert crypto.hash_key(created["key"]) not in json.dumps(listed)
    assert entry["id"] == created["id"]
    assert entry["key_prefix"] == created["key"][: repo.KEY_PREFIX_LENGTH]
    assert (entry["tpm"], entry["plan"], entry["project"]) == (1000, "pro", "billing")
    assert entry["allowed_providers"] == ["openai", "anthropic"]
    assert entry["budget_period"] == "total"
    assert entry["revoked_at"] is None
    assert datetime.fromisoformat(entry["created_at"]).tzinfo is not None


def test_keys_list_when_empty(run) -> None:
    assert _json(run("keys", "list", "--json")) == []
    assert "No keys yet" in run("keys", "list").out


def test_keys_revoke(run) -> None:
    created = _json(run("keys", "create", "ci", "--json"))
    result = run("keys", "revoke", "ci")
    assert result.code == 0 and "Revoked key 'ci'" in result.out
    assert _json(run("keys", "list", "--json"))[0]["revoked_at"] is not None
    again = run("keys", "revoke", created["id"])  # by id; revoking twice is not an error
    assert again.code == 0 and "already revoked" in again.out
    assert _json(run("keys", "revoke", "ci", "--json"))["revoked_at"] is not None
    _assert_user_error(run("keys", "revoke", "nope"), "no key named or with id 'nope'")


def test_keys_update(run) -> None:
    _json(run("keys", "create", "ci", "--json", "--budget-usd", "5", "--rpm", "10", "--allow-model", "gpt-*"))
    updated = _json(run("keys", "update", "ci", "--json", "--rpm", "120", "--budget-usd", "none",
                        "--budget-period", "daily", "--plan", "enterprise", "--allow-provider", "gemini"))
    assert (updated["rpm"], updated["budget_usd"], updated["budget_period"], updated["plan"]) == (120, None, "daily", "enterprise")
    assert updated["allowed_models"] == ["gpt-*"]  # not given: kept
    assert updated["allowed_providers"] == ["gemini"]
    cleared = _json(run("keys", "update", "ci", "--json", "--allow-any-model", "--plan", "none", "--project", "p1"))
    assert (cleared["allowed_models"], cleared["plan"], cleared["project"], cleared["rpm"]) == ([], None, "p1", 120)
    assert "Updated key 'ci'" in run("keys", "update", "ci", "--tpm", "99").out
    _assert_user_error(run("keys", "update", "ci"), "nothing to change")


def test_keys_endpoint_rules(run) -> None:
    """`--allow-endpoint` limits a key to endpoints as `--allow-model` does to models (issue 25)."""
    created = run("keys", "create", "ep", "--allow-endpoint", "chat.completions", "--allow-endpoint", "vector_*")
    assert "endpoints chat.completions, vector_*" in created.out
    assert _json(run("keys", "list", "--json"))[0]["allowed_endpoints"] == ["chat.completions", "vector_*"]
    updated = _json(run("keys", "update", "ep", "--json", "--allow-endpoint", "messages"))
    assert updated["allowed_endpoints"] == ["messages"]
    assert _json(run("keys", "update", "ep", "--json", "--allow-any-endpoint"))["allowed_endpoints"] == []
    _assert_user_error(run("keys", "update", "ep", "--allow-endpoint", " "), "allowed-endpoint pattern")
    _assert_user_error(run("keys", "update", "nope", "--rpm", "1"), "no key named or with id 'nope'")
    _assert_user_error(run("keys", "update", "ci", "--allow-provider", "openia"), "unknown provider 'openia'")
    _assert_user_error(run("keys", "update", "ci", "--allow-model", "x", "--allow-any-model"), "not allowed with argument")


# --- providers ----------------------------------------------------------------


def _provider(entries: list[dict], name: str) -> dict:
    return next(e for e in entries if e["provider"] == name)


def test_providers_set_list_remove(run, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-proj-THIS-IS-SECRET-abcdefghij9876"
    result = run("providers", "set", "openai", "--api-key", secret, "--base-url", "https://gw.example.com")
    assert result.code == 0
    assert secret not in result.out and "sk-…9876" in result.out

    monkeypatch.setenv("FAL_KEY", "fal-ENV-SECRET-abcdefgh1234")
    listed = run("providers", "list", "--json")
    entries = _json(listed)
    assert [e["provider"] for e in entries] == list(registry.names())
    openai = _provider(entries, "openai")
    assert (openai["source"], openai["key"], openai["base_url"]) == ("stored", "sk-…9876", "https://gw.example.com")
    fal = _provider(entries, "fal")
    assert (fal["source"], fal["key"], fal["env_var"]) == ("env", "fal…1234", "FAL_KEY")
    gemini = _provider(entries, "gemini")
    assert (gemini["source"], gemini["key"], gemini["env_var"]) == (None, None, "GEMINI_API_KEY")
    assert secret not in listed.out and "fal-ENV-SECRET" not in listed.out

    table = run("providers", "list")
    assert table.code == 0
    assert "env FAL_KEY" in table.out and "sk-…9876" in table.out and secret not in table.out

    # The database holds ciphertext only, in the table and anywhere in its files.
    with Session(db.get_engine()) as session:
        row = session.exec(select(ProviderCredential)).one()
    assert secret not in row.encrypted_key
    assert crypto.decrypt_secret(row.encrypted_key) == secret
    db.reset_engine()
    for path in home.glob("tokensense.db*"):
        assert secret.encode() not in path.read_bytes()

    removed = run("providers", "remove", "openai")
    assert removed.code == 0 and "Removed" in removed.out
    assert _provider(_json(run("providers", "list", "--json")), "openai")["source"] is None
    _assert_user_error(run("providers", "remove", "openai"), "no key is stored for openai")


def test_providers_set_reads_the_key_from_stdin(run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("sk-ant-FROM-STDIN-abcdef4321\n"))
    result = run("providers", "set", "Anthropic", "--api-key", "-")
    assert result.code == 0
    assert "FROM-STDIN" not in result.out
    with Session(db.get_engine()) as session:
        assert repo.get_provider_secret(session=session, provider="anthropic") == ("sk-ant-FROM-STDIN-abcdef4321", None)


def test_providers_errors(run, monkeypatch: pytest.MonkeyPatch) -> None:
    _assert_user_error(run("providers", "set", "cohere", "--api-key", "x"), "unknown provider 'cohere'")
    _assert_user_error(run("providers", "remove", "cohere"), "unknown provider 'cohere'")
    _assert_user_error(run("providers", "set", "xai", "--api-key", ""), "is empty")
    _assert_user_error(run("providers", "set", "xai", "--api-key", "k", "--base-url", "nope"), "base URL must be")
    _assert_user_error(run("providers", "set", "xai"), "--api-key")


def test_providers_list_after_the_secret_changed(run, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("providers", "set", "mistral", "--api-key", "mistral-key-abcdef123456").code == 0
    monkeypatch.setenv("TOKENSENSE_SECRET", "a new secret")
    reset_settings()
    crypto.reset_fernet_cache()
    result = run("providers", "list")
    assert result.code == 0
    assert "(cannot decrypt)" in result.out
    assert "secret changed" in result.err


# --- usage --------------------------------------------------------------------


def _record(*usages: UsageCreate) -> None:
    with Session(db.get_engine()) as session:
        repo.record_usages(session=session, usages=list(usages))


def _usage(**fields) -> UsageCreate:
    defaults = {"provider": "openai", "model": "gpt-4o-mini", "endpoint": "/v1/chat/completions", "status": 200}
    return UsageCreate(**(defaults | fields))


@pytest.fixture
def usage_records() -> None:
    now = datetime.now(UTC)
    _record(
        _usage(key_name="ci", workflow="triage", step="classify", input_tokens=100, output_tokens=10,
               cost_usd=0.001, latency_ms=250.0, ttft_ms=90.0, created_at=now - timedelta(minutes=10)),
        _usage(key_name="ci", workflow="triage", step="summarise", input_tokens=300, output_tokens=30,
               cost_usd=0.003, created_at=now - timedelta(minutes=5)),
        _usage(key_name="batch", workflow="report", provider="anthropic", model="claude-3-5-haiku",
               input_tokens=1000, output_tokens=100, cost_usd=0.01, created_at=now - timedelta(days=3)),
    )


@pytest.mark.usefixtures("usage_records")
def test_usage_json_records(run) -> None:
    records = _json(run("usage", "--json"))
    assert len(records) == 3
    assert [r["step"] for r in records] == ["summarise", "classify", None]
    first = records[1]
    for name in ("id", "created_at", "key_name", "latency_ms", "ttft_ms", "input_tokens", "output_tokens",
                 "cached_input_tokens", "reasoning_tokens", "cost_usd", "stream", "workflow", "step",
                 "execution_id", "source", "project", "provider", "model", "endpoint", "status"):
        assert name in first
    assert (first["latency_ms"], first["ttft_ms"]) == (250.0, 90.0)
    assert len(_json(run("usage", "--since", "1h", "--json"))) == 2
    assert len(_json(run("usage", "--since", "30m", "--json", "--limit", "1"))) == 1
    since = (datetime.now(UTC) - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert len(_json(run("usage", "--since", since, "--json"))) == 3


@pytest.mark.usefixtures("usage_records")
def test_usage_by_fields(run) -> None:
    groups = _json(run("usage", "--by", "workflow,step", "--since", "24h", "--json"))
    assert groups == [
        {"workflow": "triage", "step": "summarise", "requests": 1, "input_tokens": 300, "output_tokens": 30, "cost_usd": 0.003, "unpriced": 0},
        {"workflow": "triage", "step": "classify", "requests": 1, "input_tokens": 100, "output_tokens": 10, "cost_usd": 0.001, "unpriced": 0},
    ]
    by_key = _json(run("usage", "--by", "key", "--json"))
    assert {g["key_name"]: g["requests"] for g in by_key} == {"ci": 2, "batch": 1}


@pytest.mark.usefixtures("usage_records")
def test_usage_csv(run) -> None:
    result = run("usage", "--by", "provider", "--by", "model", "--csv")
    assert result.code == 0
    rows = list(csv.DictReader(io.StringIO(result.out)))
    assert list(rows[0]) == ["provider", "model", "requests", "input_tokens", "output_tokens", "cost_usd", "unpriced"]
    assert rows[0] == {"provider": "anthropic", "model": "claude-3-5-haiku", "requests": "1",
                       "input_tokens": "1000", "output_tokens": "100", "cost_usd": "0.01", "unpriced": "0"}
    assert rows[1]["requests"] == "2"

    records = list(csv.DictReader(io.StringIO(run("usage", "--csv").out)))
    assert len(records) == 3
    assert list(records[0]) == list(repo.USAGE_RECORD_FIELDS)


@pytest.mark.usefixtures("usage_records")
def test_usage_tables(run) -> None:
    table = run("usage", "--since", "1h")
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].split()[:3] == ["TIME", "(UTC)", "KEY"]
    assert "summarise" in table.out and "report" not in table.out
    assert "2 requests" in table.out
    grouped = run("usage", "--by", "workflow")
    assert grouped.out.splitlines()[0].split() == ["WORKFLOW", "REQUESTS", "IN", "OUT", "COST"]
    assert grouped.out.splitlines()[1].split()[0] == "report"  # costliest first


def test_usage_when_empty(run) -> None:
    assert _json(run("usage", "--json")) == []
    assert run("usage", "--csv").out.startswith("id,created_at,")
    assert "No usage recorded" in run("usage", "--since", "1h").out


def test_usage_errors(run) -> None:
    _assert_user_error(run("usage", "--since", "yesterday"), "cannot read --since 'yesterday'")
    _assert_user_error(run("usage", "--by", "colour"), "allowed fields: workflow, step, execution_id, source")
    _assert_user_error(run("usage", "--limit", "0"), "--limit")


def test_parse_since() -> None:
    now = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    assert cli.parse_since("30m", now=now) == datetime(2025, 1, 31, 11, 30, tzinfo=UTC)
    assert cli.parse_since("1h", now=now) == datetime(2025, 1, 31, 11, 0, tzinfo=UTC)
    assert cli.parse_since("24h", now=now) == datetime(2025, 1, 30, 12, 0, tzinfo=UTC)
    assert cli.parse_since("7d", now=now) == datetime(2025, 1, 24, 12, 0, tzinfo=UTC)
    assert cli.parse_since("2025-01-01T08:00:00Z") == datetime(2025, 1, 1, 8, 0, tzinfo=UTC)
    assert cli.parse_since("2025-01-01T10:00:00+02:00") == datetime(2025, 1, 1, 8, 0, tzinfo=UTC)
    assert cli.parse_since("2025-01-01") == datetime(2025, 1, 1, tzinfo=UTC)  # naive is UTC


def test_database_url_option(run, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'other.db'}"
    assert _json(run("keys", "create", "there", "--json", "--database-url", url))["name"] == "there"
    assert [k["name"] for k in _json(run("keys", "list", "--json", "--database-url", url))] == ["there"]
    assert _json(run("keys", "list", "--json")) == []


# --- serve, dashboard, demo ---------------------------------------------------


def test_serve_passes_its_options_and_mitmproxy_args(run, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def run_server(args) -> int:
        seen["args"] = args
        return 0

    monkeypatch.setitem(sys.modules, "tokensense.serve.server", types.SimpleNamespace(run_server=run_server))
    assert run("serve", "--port", "9000", "--intercept", "--record", "flows.mitm", "--", "--set", "flow_detail=2").code == 0
    args = seen["args"]
    assert (args.host, args.port, args.intercept, args.intercept_port, args.record, args.redact_bodies) == (
        "127.0.0.1", 9000, True, None, "flows.mitm", False,
    )
    assert args.mitm_args == ["--set", "flow_detail=2"]
    assert run("serve").code == 0
    assert seen["args"].mitm_args == [] and seen["args"].port == 8080


def test_demo_options(run, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    monkeypatch.setitem(sys.modules, "tokensense.demo.traffic", types.SimpleNamespace(run_demo=lambda args: seen.setdefault("args", args) and 0))
    assert run("demo", "--rate", "5", "--duration", "3").code == 0
    assert (seen["args"].port, seen["args"].rate, seen["args"].duration) == (8080, 5.0, 3.0)
    _assert_user_error(run("demo", "--rate", "0"), "--rate")


def test_missing_module_fails_only_that_command(run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tui.app", None)  # makes `from tui.app import run` raise ImportError
    result = run("dashboard")
    assert result.code == 1
    assert result.err.startswith("error: `tokensense dashboard` is not available")
    assert run("keys", "list").code == 0


def test_usage_shows_unpriced_calls_as_unpriced(run) -> None:
    """Issue 13: a call no price was known for is `unpriced` (cost NULL), not $0."""
    now = datetime.now(UTC)
    _record(_usage(key_name="ci", workflow="w", model="my-local", input_tokens=10, output_tokens=5, cost_usd=None,
                   created_at=now - timedelta(minutes=2)),
            _usage(key_name="ci", workflow="w", input_tokens=10, output_tokens=5, cost_usd=0.002,
                   created_at=now - timedelta(minutes=1)))
    records = _json(run("usage", "--json"))
    assert [(r["cost_usd"], r["unpriced"]) for r in records] == [(0.002, False), (None, True)]
    text = run("usage").out
    assert "unpriced" in text and "2 requests, $0.002000, 1 unpriced" in text
    [group] = _json(run("usage", "--by", "workflow", "--json"))
    assert (group["requests"], group["cost_usd"], group["unpriced"]) == (2, 0.002, 1)
    assert "+1 unpriced" in run("usage", "--by", "workflow").out


def test_prices_shows_the_price_in_force_and_its_source(run) -> None:
    result = run("prices", "mistral-large-latest")
    assert result.code == 0
    assert "Mistral Large 3" in result.out and "TokenSense override" in result.out and "$0.5 per 1M input" in result.out
    priced = _json(run("prices", "claude-sonnet-4-5", "--json"))
    keys = {r["key"]: r for r in priced["rates"]}
    assert priced["source"] == "catalog" and keys["cache_write_1h_mtok"]["usd"] == "6"
    assert keys["web_searches_kcount"]["per"] == "1K web searches" and keys["input_mtok"]["tiers"]
    tiers = _json(run("prices", "gpt-5", "--json"))["variants"]
    assert {"service_tier": "priority"} in [v["when"] for v in tiers]
    unknown = run("prices", "gpt-nonexistent-9")
    assert unknown.code == 1 and "unpriced" in unknown.out
    offline = run("prices", "update", "--url", "http://127.0.0.1:9/data.json", "--timeout", "2")
    assert offline.code == 1 and offline.err.count("\n") == 1 and "could not reach" in offline.err


def test_the_installed_command_runs_as_its_own_process(home: Path) -> None:
    """The tests above and tests/conftest.py's `Gateway.cli` call `main` in-process; this runs the console script a
    user runs, in a process of its own: the same output and exit statuses."""
    from conftest import clean_env, cli_subprocess

    env = {**clean_env(), "TOKENSENSE_HOME": str(home)}
    created = json.loads(cli_subprocess(["keys", "create", "proc", "--json"], env).stdout)
    assert set(created) == {"id", "name", "key"}
    assert [k["name"] for k in json.loads(cli_subprocess(["keys", "list", "--json"], env).stdout)] == ["proc"]
    again = cli_subprocess(["keys", "create", "proc"], env, check=False)
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "already exists" in again.stderr
