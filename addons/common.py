"""Small helpers the addons share: the per-flow call context and answering a flow ourselves."""

from __future__ import annotations

import json

from mitmproxy import http

from tokensense.errors import ErrorFormat, GatewayError, error_bytes
from tokensense.metering import CallContext

CALL = "tokensense.call"
JSON_HEADERS = {"content-type": "application/json"}


def get_call(flow: http.HTTPFlow) -> CallContext | None:
    return flow.metadata.get(CALL)


def answer_error(flow: http.HTTPFlow, fmt: ErrorFormat, error: GatewayError, headers: dict[str, str] | None = None) -> None:
    """Answer the flow with `error` in the endpoint's error shape; nothing goes upstream."""
    call = get_call(flow)
    if call is not None:
        call.status = error.status
        call.error = error.message
    flow.response = http.Response.make(
        error.status,
        error_bytes(fmt, error.status, error.message, code=error.code, param=error.param),
        {**JSON_HEADERS, **(headers or {})},
    )


def answer_json(flow: http.HTTPFlow, status: int, body: object) -> None:
    flow.response = http.Response.make(status, json.dumps(body).encode(), JSON_HEADERS)
