"""The metered passthrough: a provider's paths that no route serves, forwarded with the key swap and recorded.

Parse: the body's model (JSON bodies), the provider (the path's only owner, the
body model's, or the prefix's), how the call is paid for (`[passthrough]` of
config.toml), and the upstream request from the validated path. The police stage
then holds it like any call (access, endpoint rules, rate, budget); the forward
stage sends it. Answers: a binary body is streamed as it arrives; a JSON answer
with `usage` is priced from it, one without is recorded unpriced (cost NULL)
unless the call is free. Also answers `GET /v1/tokensense/endpoints`.
"""

from __future__ import annotations

import json

from mitmproxy import http

from addons.common import answer_error, answer_json, get_call, prepare_upstream, require_credential, response_body
from tokensense.core.errors import GatewayError
from tokensense.gateway.call import CallContext, Record
from tokensense.gateway.passthrough import endpoint_listing, parse_passthrough
from tokensense.gateway.routing import ENDPOINTS_LISTING
from tokensense.gateway.runtime import Runtime
from tokensense.metering.usage_extract import usage_from_answer
from tokensense.providers.base import Upstream
from tokensense.providers.passthrough import OTHER, family_endpoint
from tokensense.providers.routes import PassthroughPath


def _passthrough(call: CallContext | None) -> PassthroughPath | None:
    route = call.route if call is not None else None
    return route.passthrough if route is not None else None


class Passthrough:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if flow.response or flow.error or call is None or call.key is None or call.intercepted:
            return
        if call.route_endpoint is ENDPOINTS_LISTING:
            call.record_state = Record.NONE  # answered by TokenSense: not a provider call
            answer_json(flow, 200, endpoint_listing(self.runtime.config.passthrough))
            return
        path = _passthrough(call)
        if path is None:
            return
        try:
            self._prepare(flow, call, path)
        except GatewayError as e:
            answer_error(flow, call.fmt, e)

    def _prepare(self, flow: http.HTTPFlow, call: CallContext, path: PassthroughPath) -> None:
        req = flow.request
        parsed = parse_passthrough(
            self.runtime.config.passthrough, req.method, path, req.headers.get("content-type", ""), req.raw_content
        )
        assert call.route is not None
        call.route = call.route._replace(passthrough=parsed.path)
        if call.route.endpoint is OTHER or call.route.endpoint == path.family:  # a route's own (realtime.calls) stays
            call.route_endpoint = family_endpoint(path.family)  # the key is known: an unlisted family is named now
        call.free = parsed.path.kind == "free"
        call.provider = parsed.provider
        call.model = parsed.model or call.route.model  # a route's model when the body names none (not JSON)
        call.requested_model = parsed.requested or call.model
        call.sent_body = parsed.body
        credential = require_credential(self.runtime, parsed.provider)
        # The client's own bytes and query go; the path is the validated one, the auth the provider's key.
        prepare_upstream(call, parsed.provider, credential, Upstream(call.route_endpoint, parsed.path.path))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        response = flow.response
        if response is None or _passthrough(call) is None or response.stream:
            return
        media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type not in ("text/event-stream", "application/json"):
            response.stream = True  # a download (file content, media): passed on as it arrives, never buffered

    def response(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        response = flow.response
        if call is None or call.recorded or response is None or call.provider is None or _passthrough(call) is None:
            return
        if call.free or not 200 <= response.status_code < 300:
            return  # free calls cost 0; an error answer costs nothing
        if call.stream_usage is not None:
            usage = call.stream_usage.result()
        elif response.stream:
            usage = None
        else:
            content = response_body(response)
            usage = usage_from_answer(call.provider, content)
            call.usage = usage
            if usage is not None and usage.has_tokens and call.model is None:
                call.model = _answer_model(content)
        if usage is None or not usage.has_tokens or call.model is None:
            call.usage_unknown = True  # no usage, or no model, to price it by: unpriced (NULL), never a silent $0


def _answer_model(content: bytes) -> str | None:
    """The model an answer names (priced by it when the request named none)."""
    try:
        answer = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    model = (answer.get("model") or answer.get("modelVersion")) if isinstance(answer, dict) else None
    return model[:200] if isinstance(model, str) and model else None
