"""Parse stage: the body parsed once with limits, the model, the provider, and the upstream request prepared.

Nothing here points the flow upstream: the request the provider will get is
kept on the call (`call.pending`) and written to the flow by the forward stage,
after the police stage passed.
"""

from __future__ import annotations

import json

from mitmproxy import http

from addons.common import answer_error, answer_json, get_call, prepare_upstream, require_credential
from tokensense.core.endpoints import RESPONSES_ENDPOINTS, Endpoint
from tokensense.core.errors import GatewayError
from tokensense.gateway.body import optional_token_count, parse_json_body
from tokensense.gateway.call import CallContext
from tokensense.gateway.catalog import list_models
from tokensense.gateway.model_lists import find, listed, served_in, shape_for
from tokensense.gateway.policy import model_allowed
from tokensense.gateway.routing import MEDIA_ENDPOINTS, resolve_model
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stream import with_stream_usage
from tokensense.metering.pricing import PriceBook
from tokensense.providers import PROVIDERS, provider_for_model
from tokensense.providers.base import OPENAI_SDK_HEADER_PREFIXES  # `_route` (its rewrite asks the provider)
from tokensense.providers.translation import TranslationError

_COMPACT = (",", ":")


class Router:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if flow.response or flow.error or call is None or call.key is None or call.intercepted:
            return
        try:
            if call.route_endpoint in (Endpoint.MODELS, Endpoint.MODEL):
                self._answer_models(flow, call)
            elif call.route_endpoint not in MEDIA_ENDPOINTS and call.route_endpoint not in RESPONSES_ENDPOINTS:
                self._route(flow, call)  # the media and responses addons route the others
        except GatewayError as e:
            answer_error(flow, call.fmt, e)

    def _answer_models(self, flow: http.HTTPFlow, call: CallContext) -> None:
        assert self.runtime.keys is not None
        call.recorded = True
        key = call.key
        assert key is not None
        available = [name for name, p in PROVIDERS.items() if p.has_credentials(self.runtime.keys.credential(name).api_key)]
        media = self._media_models()
        media_names = {m for models in media.values() for m in models}
        prices = self.runtime.prices
        catalog = list_models(available, custom=prices.custom, extra=media,
                              allowed=lambda provider, model: model_allowed(key, provider, model),
                              pricing=lambda provider, model: "media" if model in media_names and
                              model not in prices.custom else
                              _pricing_kind(prices, provider, model))
        req = flow.request
        shape = shape_for(req.path.partition("?")[0], req.headers)
        models = served_in(shape, listed(catalog))
        if call.route_endpoint is Endpoint.MODELS:
            answer_json(flow, 200, shape.listing(models, req.query))
            return
        model = find(models, call.resource or "")
        if model is None:
            answer_error(flow, call.fmt, GatewayError(404, f"The model `{(call.resource or '')[:100]}` does not exist "
                                                      "or this key may not use it.", code="model_not_found"))
            return
        answer_json(flow, 200, shape.entry(model))

    def _media_models(self) -> dict[str, list[str]]:
        """Image and audio models from the media price table, by provider (the catalog lacks most)."""
        from tokensense.metering.media_prices import load_media_prices

        table, _ = load_media_prices(self.runtime.config.media_prices)
        by_provider: dict[str, list[str]] = {}
        for model in sorted(table.models):
            if adapter := provider_for_model(model):
                by_provider.setdefault(adapter.name, []).append(model)
        return by_provider

    def _route(self, flow: http.HTTPFlow, call: CallContext) -> None:
        endpoint, route = call.route_endpoint, call.route
        assert route is not None  # set by the admit stage with the endpoint
        body = parse_json_body(flow.request.raw_content)
        # The body names the model (and is rewritten to the provider's own name) unless the path does.
        model_in_body = route.model_in_body and call.path_provider is None
        if call.path_provider is not None:  # the cloud platforms' paths name their provider
            named = call.path_model or body.get("model")
            requested = f"{call.path_provider}/{named}" if isinstance(named, str) and named else None
        elif not model_in_body:
            requested = call.path_model
        else:
            requested = body.get("model")
        call.stream = route.stream or (route.body_streams and body.get("stream") is True)
        call.requested_model = requested if isinstance(requested, str) else None  # kept by a refused call's record
        if model_in_body:
            optional_token_count(body, "max_completion_tokens", "max_tokens", "max_output_tokens")
        adapter, model = resolve_model(requested, self.runtime.prices)
        call.provider, call.model = adapter, adapter.catalog_model(model)  # priced and policed by the model it runs

        if endpoint in adapter.native:
            credential = require_credential(self.runtime, adapter)
            params = {"params": dict(call.path_params)} if call.path_params else {}
            upstream = adapter.upstream(endpoint, model, stream=call.stream, action=call.action, version=call.version,
                                        **params)
            changed = False
            if requested != model and model_in_body:
                body["model"] = model  # `provider/model` names the provider; the provider wants its own name
                changed = True
            with_usage, call.client_wants_usage = with_stream_usage(call, body)
            if with_usage is not None:
                body, changed = with_usage, True
            call.sent_body = body
            prepare_upstream(call, adapter, credential, upstream,
                             body=json.dumps(body, separators=_COMPACT).encode() if changed else None)
            return

        translator = adapter.chat_translator() if endpoint is Endpoint.CHAT else None
        if translator is None:
            raise GatewayError(400, f"The model `{requested}` ({adapter.display_name}) is not served on "
                               f"{flow.request.path.partition('?')[0][:100]}.", code="unsupported_model_for_endpoint",
                               param="model")
        credential = require_credential(self.runtime, adapter)
        options = body.get("stream_options")
        call.client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        try:
            provider_body = translator.request(body)
        except TranslationError as e:
            raise GatewayError(400, e.message, code=e.code or "unsupported_parameter", param=e.param) from None
        except (TypeError, AttributeError, KeyError, ValueError, IndexError) as e:
            # A field of the wrong type that the translation met before a check of its own.
            raise GatewayError(400, f"The request has a field of the wrong type or shape for {adapter.display_name} "
                               f"({type(e).__name__}: {str(e)[:120]}).", code="invalid_request") from None
        upstream = adapter.upstream(Endpoint.CHAT, model, stream=call.stream)
        if translator.model_in_body:
            provider_body["model"] = model
        call.translator = translator
        call.sent_body = provider_body
        prepare_upstream(call, adapter, credential, upstream,
                         body=json.dumps(provider_body, separators=_COMPACT).encode(),
                         content_type="application/json", drop_header_prefixes=OPENAI_SDK_HEADER_PREFIXES)


def _pricing_kind(prices: PriceBook, provider: str, model: str) -> str:
    """Where a listed model's price comes from; `name/model` entries are priced by the model they run."""
    adapter = PROVIDERS[provider]
    return prices.pricing_kind(adapter.prices_id, adapter.catalog_model(model.removeprefix(f"{provider}/")))
