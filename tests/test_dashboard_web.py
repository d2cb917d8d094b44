"""`tokensense dashboard --web`: the dashboard in headless Chromium, behind the dashboard token.

Traffic goes through a real gateway to the fake provider first; the browser then opens the page with an admin
key, reads the spend table off the page's terminal, and switches the grouping with a key press.
Set TOKENSENSE_SCREENSHOT_DIR to keep the screenshots (docs/dashboard-web.png is one of them).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from tests.browser import chromium
from tests.conftest import BIN, FakeProvider, Gateway, free_port, start_gateway, stop

DASHBOARD_TOKEN = "dashboard-token-for-the-test-0123456789"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def traffic_gateway(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    """A gateway with calls from two workflows over two models already recorded."""
    gw = start_gateway(tmp_path_factory.mktemp("web-gateway"), fake_provider)
    calls = [("lead-enrichment", "gpt-4o-mini"), ("lead-enrichment", "gpt-4o-mini"), ("lead-enrichment", "gpt-4o"),
             ("support-bot", "gpt-4o")]
    try:
        for workflow, model in calls:
            answer = httpx.post(f"{gw.url}/v1/chat/completions", timeout=30,
                                headers={"Authorization": f"Bearer {gw.key}", "x-workflow-tag": workflow},
                                json={"model": model, "messages": [{"role": "user", "content": "hello there"}]})
            assert answer.status_code == 200, answer.text
        assert len(gw.wait_records(len(calls))) == len(calls)
        yield gw
    finally:
        stop(gw.process)


@pytest.fixture(scope="module")
def web(traffic_gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`tokensense dashboard --web` on a free port, with the dashboard token and an admin key."""
    gw = traffic_gateway
    admin = json.loads(gw.cli("keys", "create", "ops", "--admin", "--json").stdout)["key"]
    port = free_port()
    log_path = tmp_path_factory.mktemp("web") / "dashboard-web.log"
    env = {**gw.env, "TOKENSENSE_DASHBOARD_TOKEN": DASHBOARD_TOKEN}
    with log_path.open("w") as log:
        process = subprocess.Popen([str(BIN / "tokensense"), "dashboard", "--web", "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_listening(url, process, log_path)
        yield {"url": url, "admin": admin, "log": log_path, "gateway": gw}
    finally:
        stop(process)


def _wait_listening(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the web dashboard did not start:\n{log_path.read_text()}")
        time.sleep(0.1)


def test_no_token_no_page(web: dict) -> None:
    url = web["url"]
    for path in ("/", "/ws", "/static/js/textual.js", "/download/x"):
        answer = httpx.get(url + path, timeout=10)
        assert answer.status_code == 401, path
        assert "textual.js" not in answer.text and "dashboard token" in answer.text
    assert httpx.get(f"{url}/?token=not-the-token", timeout=10).status_code == 401
    gateway_key = web["gateway"].key  # an ordinary key is not an admin key
    assert httpx.get(f"{url}/?token={gateway_key}", timeout=10).status_code == 401
    assert httpx.get(f"{url}/", headers={"Authorization": f"Bearer {gateway_key}"}, timeout=10).status_code == 401

    # the dashboard token as a Bearer header opens the page, and the session cookie opens it again
    with httpx.Client(base_url=url, timeout=10) as client:
        page = client.get("/", headers={"Authorization": f"Bearer {DASHBOARD_TOKEN}"})
        assert page.status_code == 200 and "textual.js" in page.text
        assert "https://" not in page.text  # nothing loaded from outside the server (no web font)
        assert client.cookies.get("tokensense_dashboard")
        assert client.get("/static/js/textual.js").status_code == 200
        # a WebSocket from another site's page is refused even with the cookie
        assert client.get("/ws", headers={"Origin": "http://evil.example"}).status_code == 403


def test_token_in_the_address_is_traded_for_a_cookie_and_kept_out_of_the_log(web: dict) -> None:
    answer = httpx.get(f"{web['url']}/?token={web['admin']}&fontsize=18", timeout=10)
    assert answer.status_code == 302 and answer.headers["location"] == "/?fontsize=18"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    log = web["log"].read_text()
    assert "token=[redacted]" in log
    assert web["admin"] not in log and DASHBOARD_TOKEN not in log


def test_browser_shows_the_spend_table_and_switches_grouping(web: dict, tmp_path: Path) -> None:
    with chromium(tmp_path) as page:
        page.send("Page.navigate", url=f"{web['url']}/?token={web['admin']}")
        screen = page.wait_for_text("lead-enrichment", "support-bot", "Workflow")
        assert page.evaluate("location.pathname + location.search") == "/"  # the token left the address
        assert "4 req" in screen
        page.screenshot(tmp_path / "dashboard-web.png")

        page.evaluate("document.querySelector('.xterm-helper-textarea').focus()")
        page.press("m")
        screen = page.wait_for_text("Model", "gpt-4o-mini", "gpt-4o ")
        assert "lead-enrichment" not in screen  # the table is grouped by model now
        page.screenshot(tmp_path / "dashboard-web-by-model.png")
    keep = os.environ.get("TOKENSENSE_SCREENSHOT_DIR")
    if keep:
        for name in ("dashboard-web.png", "dashboard-web-by-model.png"):
            shutil.copy(tmp_path / name, Path(keep) / name)


def test_a_revoked_admin_key_loses_its_session(web: dict) -> None:
    gw = web["gateway"]
    second = json.loads(gw.cli("keys", "create", "ops-2", "--admin", "--json").stdout)["key"]
    with httpx.Client(base_url=web["url"], timeout=10) as client:
        assert client.get(f"/?token={second}").status_code == 302
        assert client.get("/").status_code == 200
        gw.cli("keys", "revoke", "ops-2")
        assert client.get("/ws").status_code == 401


def test_web_sessions_read_through_a_read_only_connection(tmp_path: Path) -> None:
    from tokensense.storage.db import make_engine
    from tui.app import read_only

    path = tmp_path / "ro.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x INTEGER)").connection.commit()
    engine = make_engine(f"sqlite:///{path}")
    read_only(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM t")).scalar() == 0
        with pytest.raises(OperationalError, match="readonly"):
            connection.execute(text("INSERT INTO t VALUES (1)"))
    engine.dispose()


def test_web_refuses_to_serve_without_any_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSENSE_")}
    env["TOKENSENSE_HOME"] = str(tmp_path / "home")
    result = subprocess.run([str(BIN / "tokensense"), "dashboard", "--web", "--port", str(free_port())],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "serves nobody without a token" in result.stderr


@pytest.mark.postgres
def test_web_sessions_read_postgresql_read_only() -> None:
    from tests.conftest import service_missing
    from tokensense.storage.db import make_engine
    from tui.app import read_only

    engine = make_engine("postgresql://postgres@127.0.0.1:5432/test")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError:
        engine.dispose()
        service_missing("PostgreSQL is not running on 127.0.0.1:5432")
    engine.dispose()
    read_only(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
        with pytest.raises(Exception, match="read-only transaction"):
            connection.execute(text("CREATE TABLE ts_dashboard_read_only_probe (x integer)"))
    engine.dispose()


def test_dashboard_processes_are_capped_with_a_clear_page(tmp_path: Path) -> None:
    """Each tab is a dashboard process: beyond TOKENSENSE_DASHBOARD_MAX_PROCESSES a tab gets a 503 page saying so,
    and its WebSocket a 503, until a tab closes."""
    import asyncio

    import aiohttp

    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSENSE_")}
    env.update(TOKENSENSE_HOME=str(tmp_path / "home"), TOKENSENSE_DASHBOARD_TOKEN=DASHBOARD_TOKEN,
               TOKENSENSE_DASHBOARD_MAX_PROCESSES="1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "web.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([str(BIN / "tokensense"), "dashboard", "--web", "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)

    async def tabs() -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:  # an IP host
            assert (await session.get(f"{url}/?token={DASHBOARD_TOKEN}")).status == 200  # redirected, cookie kept
            origin = {"Origin": url}
            first = await session.ws_connect(f"{url}/ws?width=80&height=24", headers=origin)
            await first.receive(timeout=30)  # the first tab's process is up and drawing
            busy = await session.get(f"{url}/")
            assert busy.status == 503 and "TOKENSENSE_DASHBOARD_MAX_PROCESSES" in await busy.text()
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{url}/ws", headers=origin)
            assert refused.value.status == 503
            await first.close()
            for _ in range(100):  # the process stops once its tab has gone
                if (await session.get(f"{url}/")).status == 200:
                    return
                await asyncio.sleep(0.1)
            raise AssertionError("the page stayed busy after the tab closed")

    try:
        _wait_listening(url, process, log_path)
        asyncio.run(tabs())
    finally:
        stop(process)
