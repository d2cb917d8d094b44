"""Reads the model, picks the provider, and rewrites the request for it (key, URL, usage option)."""

from __future__ import annotations

import json

from mitmproxy import http

from addons.common import answer_error, answer_json, get_call, require_credential, send_upstream
from tokensense.gateway.catalog import list_models
from tokensense.gateway.errors import GatewayError
from tokensense.metering.stream import with_stream_usage
from tokensense.gateway.policy import model_allowed
from tokensense.providers import PROVIDERS, provider_for_model
from tokensense.gateway.routing import MEDIA_ENDPOINTS, PASSTHROUGH, Endpoint, parse_json_body, resolve_model
from tokensense.gateway.runtime import Runtime

TRANSLATED = "tokensense.translated"  # metadata flag: the translation addon owns this chat call
BODY = "tokensense.body"  # the parsed JSON request body, for later addons (no second parse)


class Router:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if flow.response or flow.error or call is None or call.key is None or call.intercepted:
            return
        try:
            if call.route_endpoint is Endpoint.MODELS:
                self._answer_models(flow)
                return
            self._route(flow)
        except GatewayError as e:
            answer_error(flow, call.fmt, e)

    def _answer_models(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        assert call is not None and self.runtime.keys is not None
        call.recorded = True
        key = call.key
        assert key is not None
        available = [name for name in PROVIDERS if self.runtime.keys.credential(name).api_key]
        answer_json(flow, 200, list_models(available, custom=self.runtime.prices.custom, extra=self._media_models(),
                                           allowed=lambda provider, model: model_allowed(key, provider, model)))

    def _media_models(self) -> dict[str, list[str]]:
        """Image and audio models from the media price table, by provider (the catalog lacks most)."""
        from tokensense.metering.media_prices import load_media_prices

        table, _ = load_media_prices(self.runtime.config.media_prices)
        by_provider: dict[str, list[str]] = {}
        for model in sorted(table.models):
            if adapter := provider_for_model(model):
                by_provider.setdefault(adapter.name, []).append(model)
        return by_provider

    def _route(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        assert call is not None and self.runtime.keys is not None
        req = flow.request
        endpoint = call.route_endpoint
        if endpoint in MEDIA_ENDPOINTS:
            return  # the media addon routes these
        path = req.path.partition("?")[0]
        body = parse_json_body(req.raw_content)
        if endpoint is Endpoint.GEMINI:
            requested = call.path_model
            call.stream = call.action == "streamGenerateContent"
        else:
            requested = body.get("model")
            call.stream = body.get("stream") is True
        adapter, model = resolve_model(requested, self.runtime.prices)
        call.provider, call.model, call.requested_model = adapter, model, requested
        flow.metadata[BODY] = body

        translated = False
        if adapter.name not in PASSTHROUGH.get(endpoint, frozenset()):
            if endpoint is Endpoint.CHAT and adapter.name in ("anthropic", "gemini"):
                translated = True
            else:
                raise GatewayError(400, f"The model `{requested}` ({adapter.display_name}) is not served on "
                                   f"{path}.", code="unsupported_model_for_endpoint", param="model")

        credential = require_credential(self.runtime, adapter)

        changed = False
        if requested != model and endpoint is not Endpoint.GEMINI:
            body["model"] = model  # `provider/model` names the provider; the provider wants its own name
            changed = True
        if translated:
            # The translation addon rewrites and sends it.
            flow.metadata[TRANSLATED] = body
            call.client_wants_usage = isinstance(body.get("stream_options"), dict) and \
                body["stream_options"].get("include_usage") is True
            return
        with_usage, call.client_wants_usage = with_stream_usage(call, body)
        if with_usage is not None:
            body, changed = with_usage, True
            flow.metadata[BODY] = body
        if changed:
            req.content = json.dumps(body, separators=(",", ":")).encode()

        upstream_path = "/v1" + path if endpoint in (Endpoint.CHAT, Endpoint.EMBEDDINGS) and \
            not path.startswith("/v1/") else path
        send_upstream(flow, adapter, credential, upstream_path)
