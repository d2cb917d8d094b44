"""Parse stage: the body parsed once with limits, the model, the provider, and the upstream request prepared.

Nothing here points the flow upstream: the request the provider will get is
kept on the call (`call.pending`) and written to the flow by the forward stage,
after the police stage passed.
"""

from __future__ import annotations

from mitmproxy import http

from addons.common import answer_error, answer_json, get_call, prepare_upstream, require_credential
from tokensense.core.endpoints import BATCH_ENDPOINTS, RESPONSES_ENDPOINTS, Endpoint
from tokensense.core.errors import GatewayError
from tokensense.gateway.call import CallContext, Record
from tokensense.gateway.catalog import list_models
from tokensense.gateway.model_lists import find, listed, served_in, shape_for
from tokensense.gateway.passthrough import endpoint_listing
from tokensense.gateway.policy import model_allowed
from tokensense.gateway.routing import ENDPOINTS_LISTING, MEDIA_ENDPOINTS, model_route
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stages.parse import (
    check_output_caps,
    parse_call,
    read_json,
    read_request,
    reading_of,
    resolve,
)
from tokensense.metering.pricing import PriceBook
from tokensense.providers import PROVIDERS, provider_for_model

# The extra top-level field of `GET /v1/models` (OpenAI's list shape) that mirrors `GET /v1/tokensense/endpoints`;
# SDKs read `data` and keep or ignore other fields.
ENDPOINTS_FIELD = "tokensense_endpoints"


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
            elif call.route_endpoint not in MEDIA_ENDPOINTS and call.route_endpoint not in RESPONSES_ENDPOINTS \
                    and call.route_endpoint not in BATCH_ENDPOINTS \
                    and (call.route is None or call.route.owned is None) and not routed_by_passthrough(call):
                self._route(flow, call)  # the media, responses, batches, owned-resources and passthrough addons route the others
        except GatewayError as e:
            answer_error(flow, call.fmt, e)

    def _answer_models(self, flow: http.HTTPFlow, call: CallContext) -> None:
        assert self.runtime.keys is not None
        call.record_state = Record.NONE  # answered by TokenSense: not a provider call
        key = call.key
        assert key is not None
        available = [name for name, p in PROVIDERS.items() if p.has_credentials(self.runtime.keys.credential(name).api_key)]
        media = self._media_models()
        media_names = {m for models in media.values() for m in models}
        free = {name: list(p.free_models) for name, p in PROVIDERS.items() if p.free_models}  # moderations
        free_names = {m for models in free.values() for m in models}
        extra = {name: media.get(name, []) + free.get(name, []) for name in media.keys() | free.keys()}
        prices = self.runtime.prices
        catalog = list_models(available, custom=prices.custom, extra=extra,
                              allowed=lambda provider, model: model_allowed(key, provider, model),
                              pricing=lambda provider, model: "media" if model in media_names and
                              model not in prices.custom else "free" if model in free_names else
                              _pricing_kind(prices, provider, model))
        req = flow.request
        shape = shape_for(req.path.partition("?")[0], req.headers)
        models = served_in(shape, listed(catalog))
        if call.route_endpoint is Endpoint.MODELS:
            listing = shape.listing(models, req.query)
            if shape.fallback:  # the catalog's own list: what is served, priced, free or passed through, too
                listing[ENDPOINTS_FIELD] = endpoint_listing(self.runtime.config.passthrough)
            answer_json(flow, 200, listing)
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
        body = read_json(flow.request.raw_content)
        if call.route is not None and call.route.prefix is not None and (rerouted := model_route(
                call.method, call.route, flow.request.path.partition("?")[0], body.get("model"))) is not None:
            call.route, call.path_provider, call.path_model, call.path_params = \
                rerouted, rerouted.provider, rerouted.model, rerouted.params  # another provider's own path
        route = reading_of(call)
        request = read_request(route, body, check_caps=False)
        call.stream = request.stream
        call.requested_model = request.requested  # kept by a refused call's record (a bad output cap's 400 too)
        check_output_caps(route, request.body)
        adapter, model = resolve(request.requested, self.runtime.prices, free=call.free)
        call.provider, call.model = adapter, adapter.catalog_model(model)  # priced and policed by the model it runs
        parsed = parse_call(route, request, adapter, model, where=flow.request.path.partition("?")[0][:100])
        credential = require_credential(self.runtime, adapter)
        call.parsed = parsed
        call.client_wants_usage, call.translator, call.sent_body = \
            parsed.client_wants_usage, parsed.translator, parsed.sent_body
        prepare_upstream(call, adapter, credential, parsed.upstream, body=parsed.body,
                         content_type=parsed.content_type, drop_header_prefixes=parsed.drop_header_prefixes)


def routed_by_passthrough(call: CallContext) -> bool:
    """A path passed through, or the endpoint listing: addons/passthrough.py handles it."""
    return call.route_endpoint is ENDPOINTS_LISTING or (call.route is not None and call.route.passthrough is not None)


def _pricing_kind(prices: PriceBook, provider: str, model: str) -> str:
    """Where a listed model's price comes from; `name/model` entries are priced by the model they run."""
    adapter = PROVIDERS[provider]
    return prices.pricing_kind(adapter.prices_id, adapter.catalog_model(model.removeprefix(f"{provider}/")))
