"""Answers of translated calls (OpenAI chat for Claude and Gemini models): bodies, streams and errors."""

from __future__ import annotations

import logging

from mitmproxy import http

from addons.common import get_call, write_translated_answer
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
        model = call.requested_model or call.model or ""
        translator = call.translator
        write_translated_answer(flow, call, lambda answer: translator.answer(answer, model=model), translator.error)
