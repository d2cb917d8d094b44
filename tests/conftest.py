"""Shared fixtures: the fake provider and the gateway as real processes on loopback."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PROVIDER_PREFIXES = {"openai": "openai", "anthropic": "anthropic", "gemini": "gemini", "xai": "xai",
                     "mistral": "mistral", "fal": "fal"}
PROVIDER_KEYS = {"openai": "sk-test-openai", "gemini": "gm-test-gemini", "xai": "xai-test-key",
                 "mistral": "mis-test-key", "fal": "fal-test-key"}
ENV_KEYS = {"openai": "OPENAI_API_KEY", "gemini": "GEMINI_API_KEY", "xai": "XAI_API_KEY",
            "mistral": "MISTRAL_API_KEY", "fal": "FAL_KEY"}
STORED_ANTHROPIC_KEY = "sk-ant-stored-key"


def _share_the_default_ssl_context(transports_module: str) -> None:
    """Build httpx's default SSL context once per test process instead of once per client.

    Each `httpx.get(...)`, `httpx.Client()` and SDK client (openai and anthropic, on httpx or httpx2) loads a CA
    bundle into a new SSLContext: 30 ms on an idle machine, 250 ms on a loaded one, for calls that are plain HTTP to
    127.0.0.1 here. Only the default (`verify=True`, no client certificate) is shared, one per SSL_CERT_FILE/
    SSL_CERT_DIR; any other `verify` (the intercept tests' own CA, `verify=False`) is built as before.
    """
    try:
        transports = importlib.import_module(transports_module)
        build = transports.create_ssl_context
    except (ImportError, AttributeError):  # not installed, or another layout: each client builds its own
        return
    shared: dict[tuple, ssl.SSLContext] = {}

    def create_ssl_context(verify: object = True, cert: object = None, trust_env: bool = True) -> ssl.SSLContext:
        if verify is not True or cert is not None:
            return build(verify=verify, cert=cert, trust_env=trust_env)
        where = (trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        if where not in shared:
            shared[where] = build(verify=True, cert=None, trust_env=trust_env)
        return shared[where]

    transports.create_ssl_context = create_ssl_context


for _module in ("httpx._transports.default", "httpx2._transports.default"):
    _share_the_default_ssl_context(_module)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    """The environment for child processes, without any real provider key or TokenSense setting."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TOKENSENSE_") and k not in ENV_KEYS.values() and k != "ANTHROPIC_API_KEY"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_healthy(url: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    """Poll `url` until it answers 200; fail if `proc` exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit status {proc.poll()})")
        time.sleep(0.1)


_CLI_LOCK = threading.Lock()


def cli_subprocess(args: tuple[str, ...] | list[str], env: dict[str, str], *, check: bool = True,
                   timeout: float = 60) -> subprocess.CompletedProcess:
    """`tokensense ARGS` as its own process (what a user runs): for the tests of the command itself."""
    result = subprocess.run([str(BIN / "tokensense"), *args], capture_output=True, text=True, env=env,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"tokensense {' '.join(args)} failed: {result.stderr}")
    return result


def cli_in_process(args: tuple[str, ...] | list[str], env: dict[str, str], *,
                   check: bool = True) -> subprocess.CompletedProcess:
    """`tokensense ARGS` run by `tokensense.cli.main` in this process, as a child with environment `env` would run it.

    Saves a second of imports per call. The process's environment, settings and database engine are swapped for
    the call and put back afterwards, so in-process tests around it see what they saw before. The answer has the
    shape of `subprocess.run(..., capture_output=True, text=True)`'s.
    """
    from tokensense import crypto
    from tokensense.cli import main
    from tokensense.settings import reset_settings
    from tokensense.storage import db

    out, err = io.StringIO(), io.StringIO()
    with _CLI_LOCK:
        saved_env = dict(os.environ)
        saved_engine = db._engine
        db._engine = None
        try:
            _set_environ(env)
            reset_settings()
            crypto.reset_fernet_cache()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                    _stdin(io.StringIO()):
                try:
                    code = main(list(args))
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                except Exception:
                    traceback.print_exc()
                    code = 1
        finally:
            db.reset_engine()
            db._engine = saved_engine
            _set_environ(saved_env)
            reset_settings()
            crypto.reset_fernet_cache()
    result = subprocess.CompletedProcess(["tokensense", *args], code, out.getvalue(), err.getvalue())
    if check and result.returncode != 0:
        raise AssertionError(f"tokensense {' '.join(args)} failed: {result.stderr}")
    return result


def _set_environ(env: dict[str, str]) -> None:
    """Make os.environ equal to `env`, one variable at a time (never empty in between)."""
    for name in [n for n in os.environ if n not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


@contextlib.contextmanager
def _stdin(stream: io.StringIO) -> Iterator[None]:
    saved, sys.stdin = sys.stdin, stream
    try:
        yield
    finally:
        sys.stdin = saved


@dataclass
class FakeProvider:
    url: str
    process: subprocess.Popen

    def requests(self) -> list[dict]:
        return httpx.get(f"{self.url}/_fake/requests", timeout=10).json()

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_fake/requests", timeout=10)

    def program_faults(self, *rules: dict) -> None:
        """Program failures (`/_fake/faults`: status, delay, reset, broken; matched by provider, prefix, key, model)."""
        assert httpx.post(f"{self.url}/_fake/faults", json=list(rules), timeout=10).status_code == 200

    def clear_faults(self) -> None:
        httpx.delete(f"{self.url}/_fake/faults", timeout=10)

    def last(self, prefix: str | None = None) -> dict:
        reqs = [r for r in self.requests() if prefix is None or r.get("prefix", "").strip("/") == prefix]
        assert reqs, f"the fake provider received no request (prefix {prefix})"
        return reqs[-1]


def start_fake_provider(extra_args: list[str] | None = None) -> FakeProvider:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokensense.demo.fakeprovider", "--host", "127.0.0.1", "--port", "0", *(extra_args or [])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=clean_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"fake provider did not start: {line!r}")
    return FakeProvider(url=line.rsplit(" ", 1)[-1], process=proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Gateway:
    url: str
    home: Path
    env: dict[str, str]
    process: subprocess.Popen
    key: str
    fake: FakeProvider
    log_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        return self.home / "tokensense.db"

    def cli(self, *args: str, check: bool = True, as_process: bool = False) -> subprocess.CompletedProcess:
        """`tokensense ARGS` with this gateway's environment: in-process (fast), or as its own process."""
        if as_process:
            return cli_subprocess(args, self.env, check=check)
        return cli_in_process(args, self.env, check=check)

    def records(self, **where: object) -> list[dict]:
        if not self.db_path.exists():
            return []
        conn = sqlite3.connect(self.db_path)
        conn.row_factory = sqlite3.Row
        try:
            clause = " AND ".join(f"{k} = ?" for k in where) or "1=1"
            rows = conn.execute(f"SELECT * FROM usage WHERE {clause} ORDER BY id", tuple(where.values())).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()
        return [dict(r) for r in rows]

    def wait_records(self, count: int = 1, timeout: float = 15.0, **where: object) -> list[dict]:
        """Poll until `count` records match (records are written in batches off the proxy's loop)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.records(**where)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_gateway(tmp: Path, fake: FakeProvider, *, extra_env: dict[str, str | None] | None = None,
                  key_name: str = "e2e", serve_args: list[str] | None = None,
                  prepare: Callable[[Gateway], object] | None = None) -> Gateway:
    """`tokensense serve` on a free port with its own home, a stored Anthropic key and a key `key_name`.

    `prepare(gateway)` runs before the process starts (its `cli` works, its `url` is empty): keys and providers set
    up there are loaded at start, with no wait for the gateway's key cache; what it puts in `extra` is kept.
    """
    home = tmp / "home"
    env = clean_env()
    env["TOKENSENSE_HOME"] = str(home)
    env["TOKENSENSE_UPSTREAM_TIMEOUT"] = "3"
    env["TOKENSENSE_FLUSH_INTERVAL"] = "0.05"
    for provider, prefix in PROVIDER_PREFIXES.items():
        env[f"TOKENSENSE_{provider.upper()}_BASE_URL"] = f"{fake.url}/{prefix}"
    for provider, var in ENV_KEYS.items():
        env[var] = PROVIDER_KEYS[provider]
    for name, value in (extra_env or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    pre = Gateway(url="", home=home, env=env, process=None, key="", fake=fake, log_path=tmp / "gateway.log")  # type: ignore[arg-type]
    pre.cli("providers", "set", "anthropic", "--api-key", STORED_ANTHROPIC_KEY)
    created = json.loads(pre.cli("keys", "create", key_name, "--project", "proj-default", "--json").stdout)
    if prepare is not None:
        prepare(pre)
    port = free_port()
    log_path = tmp / "gateway.log"
    log = log_path.open("w")
    proc = subprocess.Popen([str(BIN / "tokensense"), "serve", "--port", str(port), *(serve_args or [])], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/health", proc, "the gateway")
    except RuntimeError as e:
        stop(proc)
        raise RuntimeError(f"{e}:\n{log_path.read_text()}") from None
    return Gateway(url=url, home=home, env=env, process=proc, key=created["key"], fake=fake, log_path=log_path,
                   extra=pre.extra)


# About how long each slow file takes (seconds, run alone on this 2-core machine under load, its start-up included).
# Under pytest-xdist (scripts/test runs `-n 2 --dist loadfile --no-loadscope-reorder`) the slowest files go first, so
# that the short ones fill in at the end rather than one worker finishing a long file alone. A file not listed counts
# as quick; the order of the tests within a file is kept. Only the order of the files changes, and only under xdist.
FILE_SECONDS = {
    "test_bench_smoke.py": 48, "test_e2e_errors.py": 28, "test_e2e_nothing_lost.py": 26, "test_e2e_reliability.py": 26,
    "test_e2e_responses.py": 22, "test_dashboard.py": 22, "test_e2e_responses_ws.py": 21, "test_workers.py": 19,
    "test_fake_provider.py": 17, "test_e2e_translation.py": 16, "test_e2e_policy.py": 16, "test_cli.py": 15,
    "test_demo.py": 13, "test_migrations.py": 13, "test_e2e_cloud_providers.py": 13, "test_e2e_agent_calls.py": 12,
    "test_e2e_observability.py": 12, "test_e2e_multi.py": 30, "test_e2e_hostile.py": 11, "test_e2e_intercept.py": 11,
    "test_responses_ws.py": 10, "test_e2e_pricing_golden.py": 10, "test_stream_framing.py": 9, "test_e2e_media.py": 9,
    "test_e2e_native.py": 9, "test_e2e_openai.py": 9, "test_e2e_batches.py": 60, "test_recorder.py": 9, "test_analytics.py": 9,
    "test_e2e_mitmdump.py": 8, "test_fake_cloud_providers.py": 8,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    first_seen: dict[Path, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(item.path, index)
    items.sort(key=lambda item: (-FILE_SECONDS.get(item.path.name, 0), first_seen[item.path]))


@pytest.fixture(scope="session")
def shared_fake_provider() -> Iterator[FakeProvider]:
    """The one fake provider process of the session (of each xdist worker): the gateways' upstream and the fake's
    own tests (tests/fakeprovider_fixture.py) share it. Tests find their calls by marker or clear its log first."""
    fake = start_fake_provider()
    yield fake
    stop(fake.process)


@pytest.fixture(scope="session")
def fake_provider(shared_fake_provider: FakeProvider) -> FakeProvider:
    return shared_fake_provider


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), fake_provider)
    yield gw
    stop(gw.process)


@pytest.fixture
def no_faults(fake: FakeProvider) -> Iterator[None]:
    """The module's `fake` with no programmed fault and an empty request log before a test, no fault after it
    (use with `pytest.mark.usefixtures("no_faults")` in a module that defines `fake`)."""
    fake.clear_faults()
    fake.clear()
    yield
    fake.clear_faults()


@pytest.fixture
def exec_id() -> str:
    """A unique `x-execution-id`, to find this test's usage records."""
    return f"exec-{uuid.uuid4().hex[:12]}"


def service_missing(message: str) -> None:
    """A test's service (PostgreSQL, Redis, nginx) is missing: a skip on a laptop, a failure in CI.

    CI (and `TOKENSENSE_REQUIRE_SERVICES=1`) must not pass by skipping the multi-instance paths silently.
    """
    if os.environ.get("CI") or os.environ.get("TOKENSENSE_REQUIRE_SERVICES"):
        pytest.fail(f"{message} (required in CI)")
    pytest.skip(message)
