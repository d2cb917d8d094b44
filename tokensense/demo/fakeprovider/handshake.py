"""The checks every fake WebSocket handshake makes before it upgrades: the provider key, then the control headers."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from aiohttp import web

from tokensense.demo.fakeprovider.replies import BodyReply, FakeRequest
from tokensense.demo.fakeprovider.textgen import ControlError, Controls, parse_controls


def refusal(reply: BodyReply) -> web.Response:
    """A handshake refused with the format's error body (no upgrade)."""
    return web.Response(status=reply.status, body=reply.body, content_type="application/json")


def check(request: web.Request, fmt: ModuleType, *, prefix: str, state: dict[str, Any],
          other_key: bool = False) -> Controls | web.Response:
    """The handshake's controls (`x-fake-*` headers), or the refusal to answer: 401 without the format's key
    (`other_key`: the socket found one elsewhere, e.g. a subprotocol), 400 for a malformed control header."""
    handshake = FakeRequest(method="GET", path=request.path, prefix=prefix, query=request.query,
                            headers=request.headers, body=None, controls=parse_controls({}),
                            origin=f"{request.scheme}://{request.host}", state=state)
    if not (fmt.authenticated(handshake) or other_key):
        return refusal(fmt.error(401, fmt.MISSING_KEY))
    try:
        return parse_controls(request.headers)
    except ControlError as e:
        return refusal(fmt.error(400, str(e)))
