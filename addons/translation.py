"""Answers of translated calls (OpenAI chat for Claude and Gemini models): bodies, streams and errors."""

from __future__ import annotations

import json
import logging

from mitmproxy import http

from addons.common import answer_error, get_call, response_body
from tokensense.gateway.errors import GatewayError
from tokensense.gateway.runtime import Runtime
from tokensense.providers.chat_stream import TranslatingStream

log = logging.getLogger(__name__)


class Translation:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        response = flow.response
        if call is None or call.translator is None or response is None or not call.forwarded:
            return
        if not (200 <= response.status_code < 300
                and response.headers.get("content-type", "").startswith(call.translator.stream_content_type)):
            return
        call.stream = True
        adapter = call.provider
        assert adapter is not None
        translator = call.translator.stream(model=call.requested_model or call.model or "",
                                            include_usage=call.client_wants_usage)
        response.headers.pop("content-length", None)
        response.headers["content-type"] = "text/event-stream; charset=utf-8"  # OpenAI chunks, whatever came in

        def on_end(usage: dict) -> None:
            call.usage = adapter.usage_from_object(usage) if usage else None

        make_stream = call.translator.stream_reader or TranslatingStream
        response.stream = make_stream(translator, on_first=call.mark_first_token, on_end=on_end)

    def response(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        response = flow.response
        if call is None or call.translator is None or response is None or response.stream or not call.forwarded:
            return
        content = response_body(response)
        model = call.requested_model or call.model or ""
        assert call.provider is not None
        try:
            if 200 <= response.status_code < 300:
                provider_answer = json.loads(content)
                call.usage = call.provider.usage_from_body(provider_answer)
                translated = call.translator.answer(provider_answer, model=model)
            else:
                translated = call.translator.error(response.status_code, content)
                call.error = str(translated.get("error", {}).get("message", ""))[:300] or None
        except Exception as e:  # an answer the translation cannot read: never the raw provider body
            log.warning("request %s: %s answer could not be translated (%s)", call.request_id,
                        call.provider.display_name, type(e).__name__)
            answer_error(flow, call.fmt, GatewayError(
                502, f"{call.provider.display_name} answered in a shape TokenSense could not translate.",
                code="upstream_error"))
            return
        response.headers.pop("content-encoding", None)
        response.content = json.dumps(translated).encode()
        response.headers["content-type"] = "application/json"
