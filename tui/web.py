"""`tokensense dashboard --web`: the same dashboard app, served to browsers by textual-serve, behind a token.

Each browser tab gets its own dashboard process (textual-serve runs `tokensense dashboard --read-only` with
Textual's web driver), reading the database through a read-only connection. Nothing is served to a request
without the dashboard token: `TOKENSENSE_DASHBOARD_TOKEN`, or an admin key (`tokensense keys create NAME
--admin`). The token is given once, as `?token=` or `Authorization: Bearer`; the answer sets a session cookie
(HttpOnly, SameSite=Strict) and sends the browser on to the page without the token in its address.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import logging
import os
import re
import secrets
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import Engine
from textual_serve.server import Server, to_int

TOKEN_ENV = "TOKENSENSE_DASHBOARD_TOKEN"
COOKIE = "tokensense_dashboard"
SESSION_SECONDS = 12 * 3600
MIN_TOKEN_LENGTH = 16
DEFAULT_PORT = 8090

_BUSY = """<!DOCTYPE html><html><head><title>TokenSense dashboard</title></head><body>
<h1>TokenSense dashboard</h1><p>The dashboard is open in {count} tabs already, the most this server runs at once
(<code>TOKENSENSE_DASHBOARD_MAX_PROCESSES</code>, each tab is a process of its own). Close a tab and reload this
page.</p></body></html>"""

_DENIED = """<!DOCTYPE html><html><head><title>TokenSense dashboard</title></head><body>
<h1>TokenSense dashboard</h1><p>{reason}</p>
<p>Open this page with <code>?token=</code> and the dashboard token (<code>TOKENSENSE_DASHBOARD_TOKEN</code> of the
server), or an admin key made by <code>tokensense keys create NAME --admin</code>.</p></body></html>"""


@dataclass
class Holder:
    """Who a session belongs to: the dashboard token, or an admin key (re-checked on every connection)."""

    key_id: str | None
    expires: float


class TokenCheck:
    """Whether a presented token opens the dashboard. `check` reads the database: call it in a thread."""

    def __init__(self, engine: Engine, dashboard_token: str | None) -> None:
        self.engine = engine
        self.dashboard_token = dashboard_token

    def check(self, token: str) -> Holder | None:
        if self.dashboard_token and hmac.compare_digest(token.encode(), self.dashboard_token.encode()):
            return Holder(None, time.monotonic() + SESSION_SECONDS)
        key_id = self._admin_key_id(hash_of=token)
        return None if key_id is None else Holder(key_id, time.monotonic() + SESSION_SECONDS)

    def still_admin(self, key_id: str) -> bool:
        """The key is still an admin key and not revoked."""
        from sqlmodel import Session

        from tokensense.storage.models import ApiKey

        with Session(self.engine) as session:
            key = session.get(ApiKey, key_id)
            return key is not None and key.admin and key.revoked_at is None

    def any_admin_key(self) -> bool:
        from sqlmodel import Session, col, select

        from tokensense.storage.models import ApiKey

        with Session(self.engine) as session:
            statement = select(ApiKey.id).where(col(ApiKey.admin).is_(True), col(ApiKey.revoked_at).is_(None))
            return session.exec(statement).first() is not None

    def _admin_key_id(self, *, hash_of: str) -> str | None:
        from sqlmodel import Session, col, select

        from tokensense.crypto import hash_key
        from tokensense.storage.models import ApiKey

        with Session(self.engine) as session:
            statement = select(ApiKey).where(col(ApiKey.key_hash) == hash_key(hash_of))
            key = session.exec(statement).first()
            return key.id if key is not None and key.admin and key.revoked_at is None else None


_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"']+")


def _hide_tokens(record: logging.LogRecord) -> bool:
    """A log filter: `?token=...` in a record's message (the access log's request line) becomes `[redacted]`."""
    message = record.getMessage()
    if "token=" in message:
        record.msg, record.args = _TOKEN_IN_QUERY.sub(r"\1[redacted]", message), ()
    return True


def _presented_token(request: web.Request) -> str | None:
    token = request.query.get("token")
    if token:
        return token
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _same_origin(request: web.Request) -> bool:
    """A WebSocket handshake from a page of this server (browsers send `Origin`; other clients may not)."""
    origin = request.headers.get("Origin")
    return origin is None or origin.split("://", 1)[-1] == request.host


class DashboardServer(Server):
    """textual-serve's server with the dashboard token in front of every route."""

    def __init__(self, command: str, *, host: str, port: int, tokens: TokenCheck, max_processes: int = 8) -> None:
        super().__init__(command, host=host, port=port, title="TokenSense",
                         templates_path=Path(__file__).resolve().parent / "templates")
        self.tokens = tokens
        self.sessions: dict[str, Holder] = {}
        self.max_processes = max_processes
        self.processes = 0  # dashboard processes running: one per open WebSocket (a browser tab)

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._require_token)
        return app

    def _busy(self) -> web.Response:
        return web.Response(status=503, text=_BUSY.format(count=self.processes), content_type="text/html",
                            headers={"Cache-Control": "no-store", "Retry-After": "30"})

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        """One dashboard process per WebSocket, at most `max_processes` at once (the check and the count are on
        the event loop, with no wait between them: a burst of tabs cannot overshoot it)."""
        if self.processes >= self.max_processes:
            return self._busy()  # type: ignore[return-value]  (aiohttp answers the handshake with the 503)
        self.processes += 1
        try:
            return await super().handle_websocket(request)
        finally:
            self.processes -= 1

    def _denied(self, reason: str) -> web.Response:
        return web.Response(status=401, text=_DENIED.format(reason=reason), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    @web.middleware
    async def _require_token(self, request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        token = _presented_token(request)
        if token is not None:
            holder = await asyncio.to_thread(self.tokens.check, token)
            if holder is None:
                return self._denied("That token does not open this dashboard.")
            if request.path != "/" or request.method != "GET":
                return await handler(request)  # a script with the token on every request: no session
            now = time.monotonic()
            self.sessions = {sid: held for sid, held in self.sessions.items() if held.expires > now}
            session = secrets.token_urlsafe(32)
            self.sessions[session] = holder
            if "token" in request.query:
                # leave the token out of the address bar and the history
                rest = [(name, value) for name, value in request.query.items() if name != "token"]
                response: web.StreamResponse = web.Response(
                    status=302, headers={"Location": str(request.rel_url.with_query(rest))})
            else:
                response = await handler(request)
            response.set_cookie(COOKIE, session, httponly=True, samesite="Strict", max_age=SESSION_SECONDS,
                                secure=request.secure)
            return response
        holder = self.sessions.get(request.cookies.get(COOKIE, ""))
        if holder is None or holder.expires < time.monotonic():
            return self._denied("No token given (or the session has expired).")
        if request.path == "/ws":
            if not _same_origin(request):
                return web.Response(status=403, text="cross-origin WebSocket refused")
            if holder.key_id is not None and not await asyncio.to_thread(self.tokens.still_admin, holder.key_id):
                self.sessions.pop(request.cookies.get(COOKIE, ""), None)
                return self._denied("The admin key of this session was revoked.")
        return await handler(request)

    async def handle_index(self, request: web.Request) -> web.StreamResponse:
        """textual-serve's page, with its URLs on the host the browser used (so the session cookie goes along); a
        page that says so when every dashboard process is taken."""
        import aiohttp_jinja2

        if self.processes >= self.max_processes:
            return self._busy()

        origin = f"{request.scheme}://{request.host}"
        context: dict[str, Any] = {
            "font_size": to_int(request.query.get("fontsize", "16"), 16),
            "app_websocket_url": ("wss://" if request.scheme == "https" else "ws://") + request.host + "/ws",
            "config": {"static": {"url": f"{origin}/static/"}},
            "application": {"name": self.title},
        }
        response = aiohttp_jinja2.render_template("app_index.html", request, context)
        response.headers["Cache-Control"] = "no-store"
        return response

    def initialize_logging(self) -> None:
        """Plain log lines (textual-serve's show tracebacks with their locals: a token among them), and no
        token or key in any of them (the access log has the query string)."""
        from tokensense.gateway import redact

        redact.install()
        handler = logging.StreamHandler()
        handler.addFilter(_hide_tokens)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)

    async def on_startup(self, app: web.Application) -> None:
        print(f"TokenSense dashboard on http://{self.host}:{self.port}/ (open it with ?token=...; Ctrl+C stops it)",
              flush=True)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_web(args: argparse.Namespace) -> int:
    """Serve the dashboard at http://HOST:PORT/ until Ctrl+C; 2 when no token could open it."""
    from sqlalchemy.exc import SQLAlchemyError

    from tokensense.settings import get_settings
    from tokensense.storage.db import display_url, init_db, make_engine

    token = get_settings().dashboard_token or None
    os.environ.pop(TOKEN_ENV, None)  # not passed on to the dashboard processes
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        print(f"tokensense dashboard: {TOKEN_ENV} is shorter than {MIN_TOKEN_LENGTH} characters; use a long "
              "random value (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)", file=sys.stderr)
        return 2
    url = getattr(args, "database_url", None) or get_settings().effective_database_url
    try:
        engine = make_engine(url)
        init_db(engine)
        tokens = TokenCheck(engine, token)
        admin_keys = tokens.any_admin_key()
    except SQLAlchemyError as error:
        print(f"tokensense dashboard: cannot open the database {display_url(url)}: {str(error).splitlines()[0]}",
              file=sys.stderr)
        return 1
    if token is None and not admin_keys:
        print(f"tokensense dashboard: --web serves nobody without a token: set {TOKEN_ENV}, or create an admin "
              "key with `tokensense keys create NAME --admin`", file=sys.stderr)
        return 2
    if not _is_loopback(args.host):
        print(f"tokensense dashboard: listening on {args.host}: the token and the page travel unencrypted over "
              "HTTP; put a TLS proxy in front of it", file=sys.stderr)
    os.environ["TOKENSENSE_DATABASE_URL"] = url  # the dashboard processes read it from there, not from `ps`
    command = shlex.join([sys.executable, "-m", "tokensense.cli", "dashboard", "--read-only"])
    server = DashboardServer(command, host=args.host, port=args.port, tokens=tokens,
                             max_processes=get_settings().dashboard_max_processes)
    try:
        server.serve()
    finally:
        engine.dispose()
    return 0
