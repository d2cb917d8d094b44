"""Admit stage, on the request headers: request id, client keys out of the request, key check, route, body limit.

Everything here runs before mitmproxy reads the request body: a client without a
valid key (or on an unknown path, or over the size limit) is answered at once and
its body is read and dropped, never buffered (see addons/mitmproxy_compat.py).
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import ctx, http

from addons.common import answer_error, answer_json, intercepting, lookup_key, strip_client_keys
from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import GatewayError
from tokensense.gateway.auth import client_key
from tokensense.gateway.call import CallContext, Record
from tokensense.gateway.flowmeta import BODY_LIMIT, CALL, refuse_body, set_call
from tokensense.gateway.guards import take_max_cost_header
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.model_lists import shape_for
from tokensense.gateway.passthrough import streams_upload
from tokensense.gateway.routing import route_request
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stages import admit as admit_stage
from tokensense.gateway.stages.admit import Admitted, oversize_refusal
from tokensense.metering.attribution import attribution
from tokensense.providers import error_shape_for_path

log = logging.getLogger(__name__)


class Admit:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or CALL in flow.metadata or intercepting(flow.client_conn.proxy_mode):
            return
        req = flow.request
        # The key leaves the request before anything (a log line, a saved flow, an error page) can show it.
        has_query_key = b"key=" in req.data.path
        presented = client_key(req.headers, req.query if has_query_key else {})
        strip_client_keys(req)
        path = req.path.partition("?")[0]
        try:
            route = route_request(req.method, path, req.headers)
        except GatewayError as e:
            await self._unknown_endpoint(flow, path, presented, e)
            return
        if route.prefix is not None:  # `/mistral/v1/...`: the stages see the provider's own path
            path = path.removeprefix(f"/{route.prefix}")
            query = req.data.path.partition(b"?")[2]
            req.data.path = path.encode() + (b"?" + query if query else b"")
        fmt = route.fmt
        if route.endpoint in (Endpoint.MODELS, Endpoint.MODEL):  # one path, three SDKs: errors in the asking SDK's shape
            fmt = shape_for(path, req.headers).error_format
        call = CallContext.of_route(route, method=req.method, fmt=fmt)
        set_call(flow, call)
        if "x-tokensense-transport" in req.headers:
            # Set by the Responses WebSocket on the HTTP call of each response (addons/responses_ws.py):
            # a label of the record only (a client setting it labels its own calls), never sent upstream.
            if req.headers.pop("x-tokensense-transport") == "websocket" and route.endpoint is Endpoint.RESPONSES:
                call.transport = "websocket"
        if route.endpoint is Endpoint.HEALTH:
            call.record_state = Record.NONE  # a health check is not a provider call
            answer_json(flow, *await asyncio.to_thread(self.runtime.health))
            refuse_body(flow)
            return
        call.attribution = attribution(req.headers)  # refused calls are attributed too
        if await admit(self.runtime, flow, call, presented) is not None:
            take_cost_cap(flow, call)

    async def _unknown_endpoint(self, flow: http.HTTPFlow, path: str, presented: str | None, error: GatewayError) -> None:
        """404 for a path TokenSense does not serve; with a valid key the call is recorded (endpoint `unknown`)."""
        call = CallContext(Endpoint.UNKNOWN, error_shape_for_path(path), method=flow.request.method)
        set_call(flow, call)
        call.attribution = attribution(flow.request.headers)
        try:
            call.key = await admitted_key(self.runtime, presented) if presented else None
        except GatewayError:
            call.key = None
        if call.key is None:
            call.record_state = Record.NONE  # nobody to attribute it to: not a usage record
        answer_error(flow, call.fmt, error)
        refuse_body(flow)


def take_cost_cap(flow: http.HTTPFlow, call: CallContext) -> bool:
    """Take the x-tokensense-max-cost-usd header off the request onto the call; False if it was answered 400."""
    try:
        call.max_cost_usd = take_max_cost_header(flow.request.headers)
    except GatewayError as e:
        answer_error(flow, call.fmt, e)
        refuse_body(flow)
        return False
    return True


# --- the admit gate, shared by the gateway and intercept mode (addons/intercept.py) ------------------

MISSING_KEY = "No TokenSense key: send it as `Authorization: Bearer tsk_...` (or x-api-key, x-goog-api-key, ?key=)."


async def admit(runtime: Runtime, flow: http.HTTPFlow, call: CallContext, presented: str | None, *,
                require_key: bool = True, missing: str = MISSING_KEY, where: str = "") -> Admitted | None:
    """The admit gate on the request headers: the key (when required) and the body limit, before any body byte.

    Answers 401/503/413 itself and has the body read and dropped, never buffered; the `Admitted` value when the
    call may go on (its key is on `call`; the body is then limited while it arrives), else None.
    """
    if require_key:
        try:
            call.key = await admitted_key(runtime, presented, missing=missing, where=where)
        except GatewayError as e:
            answer_error(flow, call.fmt, e)
            refuse_body(flow)
            return None
        if not call.attribution.get("project"):
            call.attribution["project"] = call.key.project
    route = call.route
    upload = route is not None and route.passthrough is not None and streams_upload(flow.request.method,
                                                                                     flow.request.headers)
    admitted = Admitted(call.key, body_limit(runtime, call.route_endpoint, upload=upload))
    refusal = oversize_refusal(flow.request.headers.get("content-length", ""), admitted.body_limit,
                               call.route_endpoint, upload=upload)
    if refusal is not None:
        answer_error(flow, call.fmt, refusal)
        refuse_body(flow)
        return None
    flow.metadata[BODY_LIMIT] = admitted.body_limit
    return admitted


async def admitted_key(runtime: Runtime, presented: str | None, *, missing: str = MISSING_KEY,
                       where: str = "") -> KeyInfo:
    """The TokenSense key presented (memory first, the database once); 503 while starting, 401 missing or unknown."""
    if not runtime.started or runtime.keys is None:
        raise GatewayError(503, "TokenSense is starting; retry in a moment.", code="starting")
    presented = (presented or "").strip()
    if not presented:
        raise GatewayError(401, missing, code="missing_api_key")
    return await lookup_key(runtime, presented, where=where)


def body_limit(runtime: Runtime, endpoint: Endpoint, *, upload: bool = False) -> int:
    """Bytes a request body of `endpoint` (an `upload`: streamed) may have: the options, else the settings."""
    max_upload = getattr(ctx.options, "tokensense_max_upload_mb", None) if hasattr(ctx, "options") else None
    return admit_stage.body_limit(endpoint, max_body_mb=runtime.settings.max_body_mb,
                                  max_upload_mb=max_upload or runtime.settings.max_upload_mb, upload=upload)
