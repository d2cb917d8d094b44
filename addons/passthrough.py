"""The metered passthrough: a provider's paths that no route serves, forwarded with the key swap and recorded.

Parse: the body's model (JSON bodies), the provider (the path's only owner, the
body model's, or the prefix's), how the call is paid for (`[passthrough]` of
config.toml), and the upstream request from the validated path. The police stage
then holds it like any call (access, endpoint rules, rate, budget); the forward
stage sends it. An upload (a body that is not JSON: multipart, raw bytes) is parsed
and policed on its headers and streamed to the provider as it arrives, bounded by
TOKENSENSE_MAX_UPLOAD_MB. Client-only headers (Proxy-Authorization, Cookie) and every
key header stay behind. Answers: a binary body is streamed as it arrives; a JSON answer
with `usage` is priced from it, one without is recorded unpriced (cost NULL)
unless the call is free. Also answers `GET /v1/tokensense/endpoints`.
"""

from __future__ import annotations

import json

from mitmproxy import http

from addons.common import (
    answer_error,
    answer_json,
    apply_upstream,
    get_call,
    prepare_upstream,
    require_credential,
    response_body,
)
from tokensense.core.errors import GatewayError
from tokensense.gateway.call import CallContext, Record
from tokensense.gateway.flowmeta import BODY_LIMIT, RATE, refuse_body
from tokensense.gateway.passthrough import (
    CLIENT_ONLY_HEADERS,
    UploadLimit,
    endpoint_listing,
    parse_passthrough,
    streams_upload,
)
from tokensense.gateway.reliability import prepare_first_attempt
from tokensense.gateway.routing import ENDPOINTS_LISTING
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stages.police import Refused, Target, police
from tokensense.metering.usage_extract import usage_from_answer
from tokensense.providers.base import Upstream
from tokensense.providers.passthrough import OTHER, family_endpoint
from tokensense.providers.routes import PassthroughPath

UPLOAD = "tokensense.passthrough_upload"  # the UploadLimit of a streamed upload


def _passthrough(call: CallContext | None) -> PassthroughPath | None:
    route = call.route if call is not None else None
    return route.passthrough if route is not None else None


class Passthrough:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """An upload (a body that is not JSON): parsed and policed on the headers, then streamed to the provider."""
        call = get_call(flow)
        if flow.response or flow.error or call is None or call.key is None or call.intercepted:
            return
        path = _passthrough(call)
        if path is None or not streams_upload(flow.request.method, flow.request.headers):
            return
        runtime = self.runtime
        try:
            self._prepare(flow, call, path)
            assert call.provider is not None
            call.policed = await police(
                call,
                Target(call.provider, call.model or "", call.requested_model),
                prices=runtime.prices,
                counters=runtime.counters,
                spent_since=runtime.spent_since,
                guard=runtime.guard,
                budgets=runtime.budgets,
                typical=runtime.typical,
            )
        except GatewayError as e:
            answer_error(flow, call.fmt, e)
            refuse_body(flow)
            return
        except Refused as refused:
            call.policed = refused.held  # a rate entry it took is settled with its record
            if refused.held is not None and refused.held.rate is not None:
                flow.metadata[RATE] = refused.held.rate
            answer_error(flow, call.fmt, refused.error, headers=refused.headers)
            refuse_body(flow)
            return
        if call.policed.rate is not None:
            flow.metadata[RATE] = call.policed.rate
        assert call.pending is not None
        await prepare_first_attempt(runtime, flow, call)  # the pool's key, as the forward stage picks it
        apply_upstream(flow, call.pending)
        call.forwarded = True  # the forward stage leaves it: written here, after every gate passed
        limit = UploadLimit(flow.metadata.get(BODY_LIMIT))
        flow.request.stream = limit
        flow.metadata[UPLOAD] = limit

    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if flow.response or flow.error or call is None or call.key is None or call.intercepted or call.forwarded:
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
        raw = None if req.stream else req.raw_content  # a streamed upload: no body here, none needed
        parsed = parse_passthrough(
            self.runtime.config.passthrough, req.method, path, req.headers.get("content-type", ""), raw
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
        prepare_upstream(
            call,
            parsed.provider,
            credential,
            Upstream(call.route_endpoint, parsed.path.path),
            drop_header_prefixes=CLIENT_ONLY_HEADERS,
        )

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
        upload = flow.metadata.get(UPLOAD)
        if isinstance(upload, UploadLimit) and upload.too_large:
            answer_error(flow, call.fmt, upload.too_large_refusal())
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
