"""OpenAI chat completions for Claude and Gemini models: requests, answers and streams translated."""

from __future__ import annotations

import json
from types import ModuleType

from mitmproxy import http

from addons.common import answer_error, get_call, require_credential, response_body, send_upstream
from addons.routing import TRANSLATED
from tokensense.gateway.errors import GatewayError
from tokensense.gateway.runtime import Runtime
from tokensense.providers.translation import TranslationError
from tokensense.providers.anthropic import chat as anthropic_translation
from tokensense.providers.gemini import chat as gemini_translation
from tokensense.providers.chat_stream import TranslatingStream

TRANSLATIONS: dict[str, ModuleType] = {"anthropic": anthropic_translation, "gemini": gemini_translation}


class Translation:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        body = flow.metadata.get(TRANSLATED)
        if flow.response or flow.error or call is None or body is None or call.provider is None:
            return
        module = TRANSLATIONS[call.provider.name]
        try:
            provider_body = module.chat_request_to_provider(body)
            credential = require_credential(self.runtime, call.provider)
        except TranslationError as e:
            answer_error(flow, call.fmt, GatewayError(400, e.message, code="unsupported_parameter", param=e.param))
            return
        except GatewayError as e:
            answer_error(flow, call.fmt, e)
            return
        call.translator = module
        req = flow.request
        req.query.clear()
        if call.provider.name == "gemini":
            action = "streamGenerateContent" if call.stream else "generateContent"
            path = f"/v1beta/models/{call.model}:{action}"
            if call.stream:
                req.query["alt"] = "sse"
        else:
            provider_body["model"] = call.model
            path = "/v1/messages"
        req.content = json.dumps(provider_body, separators=(",", ":")).encode()
        req.headers["content-type"] = "application/json"
        for header in [h for h in req.headers if h.lower().startswith(("openai-", "x-stainless-"))]:
            req.headers.pop(header, None)
        send_upstream(flow, call.provider, credential, path)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        response = flow.response
        if call is None or call.translator is None or response is None:
            return
        if not (200 <= response.status_code < 300
                and response.headers.get("content-type", "").startswith("text/event-stream")):
            return
        call.stream = True
        adapter = call.provider
        assert adapter is not None
        translator = call.translator.ChatStreamTranslator(model=call.requested_model or call.model or "",
                                                          include_usage=call.client_wants_usage)
        response.headers.pop("content-length", None)

        def on_end(usage: dict) -> None:
            call.usage = adapter.usage_from_object(usage) if usage else None

        response.stream = TranslatingStream(translator, on_first=call.mark_first_token, on_end=on_end)

    def response(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        response = flow.response
        if call is None or call.translator is None or response is None or response.stream:
            return
        content = response_body(response)
        model = call.requested_model or call.model or ""
        if 200 <= response.status_code < 300:
            try:
                provider_answer = json.loads(content)
            except (ValueError, UnicodeDecodeError):
                answer_error(flow, call.fmt, GatewayError(502, "The provider answered with invalid JSON.",
                                                          code="upstream_error"))
                return
            assert call.provider is not None
            call.usage = call.provider.usage_from_body(provider_answer)
            translated = call.translator.chat_response_from_provider(provider_answer, model=model)
        else:
            translated = call.translator.error_from_provider(response.status_code, content)
            call.error = str(translated.get("error", {}).get("message", ""))[:300] or None
        response.headers.pop("content-encoding", None)
        response.content = json.dumps(translated).encode()
        response.headers["content-type"] = "application/json"
