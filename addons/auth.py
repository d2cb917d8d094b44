"""Classifies each request, answers /health, and checks the TokenSense key."""

from __future__ import annotations

import asyncio

from mitmproxy import http

from addons.common import CALL, answer_error, answer_json, lookup_key
from tokensense.gateway.auth import client_key
from tokensense.gateway.errors import GatewayError, format_for_path
from tokensense.gateway.call import CallContext
from tokensense.metering.attribution import attribution
from tokensense.gateway.routing import Endpoint, classify
from tokensense.gateway.runtime import Runtime


class Auth:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or CALL in flow.metadata:
            return
        req = flow.request
        path = req.path.partition("?")[0]
        try:
            route = classify(req.method, path)
        except GatewayError as e:
            flow.metadata[CALL] = CallContext(Endpoint.HEALTH, format_for_path(path), recorded=True)
            answer_error(flow, format_for_path(path), e)
            return
        call = CallContext(route.endpoint, route.fmt, path_model=route.model, action=route.action)
        flow.metadata[CALL] = call
        if route.endpoint is Endpoint.HEALTH:
            call.recorded = True  # a health check is not a provider call
            ok = self.runtime.started and await asyncio.to_thread(self.runtime.database_ok)
            answer_json(flow, 200 if ok else 503, {"status": "ok" if ok else "degraded",
                                                   "database": "ok" if ok else "unreachable"})
            return
        if not self.runtime.started or self.runtime.keys is None:
            answer_error(flow, route.fmt, GatewayError(503, "TokenSense is starting; retry in a moment."))
            return
        call.attribution = attribution(req.headers, None)
        has_query_key = "key=" in req.path  # building req.query costs; most clients send a header
        key = client_key(req.headers, req.query if has_query_key else {})
        if has_query_key:
            # Out of the URL at once, so no log line or saved flow shows it, even for refused calls.
            req.query.pop("key", None)
        if not key:
            answer_error(flow, route.fmt, GatewayError(
                401, "No TokenSense key: send it as `Authorization: Bearer tsk_...` (or x-api-key, x-goog-api-key, ?key=).",
                code="missing_api_key"))
            return
        try:
            info = await lookup_key(self.runtime, key)
        except GatewayError as e:
            answer_error(flow, route.fmt, e)
            return
        call.key = info
        if not call.attribution["project"]:
            call.attribution["project"] = info.project


