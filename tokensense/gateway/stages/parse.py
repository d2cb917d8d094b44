"""Parse stage: the one function that turns a client's request into the request an attempt sends upstream.

`read_request` parses what the client asked (the body once, with limits; the
model it names; whether it streams). `resolve` finds the provider and model.
`parse_call` builds the attempt's upstream request for that provider and model:
natively, or translated from the OpenAI chat format. The first attempt
(addons/routing.py), each fallback (gateway/reliability.py) and an intercepted
call (addons/intercept.py) use these same functions; the Responses and media
addons use `read_json`/`resolve` and hand their result to the same police stage.
All of it is pure: values in, values out, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import GatewayError
from tokensense.gateway.body import optional_token_count, parse_json_body
from tokensense.gateway.call import CallContext
from tokensense.gateway.routing import resolve_model
from tokensense.gateway.stages.police import Target
from tokensense.gateway.stream import stream_usage_option
from tokensense.metering.pricing import PriceBook
from tokensense.providers import ProviderAdapter, Translator
from tokensense.providers.base import Upstream
from tokensense.providers.translation import TranslationError

_COMPACT = (",", ":")
_OUTPUT_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """What the client asked for: its JSON body (parsed once), the model it named, whether it wants a stream."""

    body: dict[str, Any]
    requested: str | None
    stream: bool


@dataclass(frozen=True, slots=True)
class Parsed:
    """The parse stage's value: one attempt's provider, model and upstream request, before anything is sent."""

    provider: ProviderAdapter
    model: str  # as priced and policed (the catalog's name for the model it runs)
    upstream_model: str  # as the provider is asked for it
    requested: str | None  # as the client named it (`provider/model` included)
    stream: bool
    client_wants_usage: bool  # False: TokenSense asked for the stream's usage chunk and drops it again
    upstream: Upstream
    sent_body: dict[str, Any]  # the JSON body as it goes upstream (the police stage reserves from it)
    body: bytes | None  # the bytes to send; None: the client's own bytes go unchanged
    request: ClientRequest | None = None  # what the client asked, which this attempt was parsed from
    translator: Translator | None = None  # OpenAI-format chat translated to the provider's format
    content_type: str | None = None
    drop_header_prefixes: tuple[str, ...] = ()  # client headers that mean nothing upstream (another format's SDK)

    @property
    def target(self) -> Target:
        """What the police stage checks."""
        return Target(self.provider, self.model, self.requested, self.sent_body)

    @property
    def drops_usage_chunk(self) -> bool:
        return self.stream and not self.client_wants_usage and self.translator is None \
            and self.provider.usage_chunk_on_request


def read_json(raw: bytes | None) -> dict[str, Any]:
    """The request body as a JSON object, parsed once with depth and size limits; a 400 that says what is wrong."""
    return parse_json_body(raw)


@dataclass(frozen=True, slots=True)
class RouteReading:
    """What the route the path matched says about reading the request: where the model is, what streams."""

    endpoint: Endpoint
    action: str | None = None
    version: str | None = None
    path_model: str | None = None  # the model the path names
    path_provider: str | None = None  # the provider the path names: the model is `provider/model`
    path_params: tuple[tuple[str, str], ...] | None = None  # other path parts that provider needs upstream
    model_in_body: bool = True  # the body names the model (and is rewritten to the provider's own name)
    streams: bool = False  # the path itself asks for a stream (a streaming action)
    body_streams: bool = True  # `"stream": true` in the body asks for one
    default_model: str | None = None  # the model when the body names none (the provider's own default)


def reading_of(call: CallContext, *, fallback: bool = False) -> RouteReading:
    """The reading of `call`'s route (the providers' route table says where its model is and what streams);
    `fallback`: of the same endpoint for another model (no path of its own)."""
    route = call.route
    if route is None:  # a call made without a path (the gateway's own requests): the body says it all
        return RouteReading(call.route_endpoint, call.action, call.version, call.path_model, call.path_provider,
                            call.path_params)
    if fallback:
        return RouteReading(route.endpoint, route.action, route.version, model_in_body=route.model_in_body,
                            streams=route.stream, body_streams=route.body_streams)
    return RouteReading(route.endpoint, route.action, route.version, route.model, route.provider, route.params,
                        model_in_body=route.model_in_body and route.provider is None, streams=route.stream,
                        body_streams=route.body_streams, default_model=route.default_model)


def read_request(route: RouteReading, body: dict[str, Any], *, check_caps: bool = True) -> ClientRequest:
    """The model the client asked for and whether it streams, from the path (where the route says) or the body.

    `check_caps`: an output cap that is no token count is a 400 (the gateway reserves budget from it).
    """
    if route.path_provider is not None:  # a path that names its provider (a cloud platform's own path)
        named = route.path_model or body.get("model") or route.default_model
        if isinstance(named, str) and named.startswith(f"{route.path_provider}/"):  # `/openai/...` with `openai/gpt-4o`
            named = named[len(route.path_provider) + 1:]
        requested = f"{route.path_provider}/{named}" if isinstance(named, str) and named else None
    elif not route.model_in_body:
        requested = route.path_model
    else:
        named = route.path_model or body.get("model")
        if named is None:  # the provider's default model, sent explicitly (the record names what was priced)
            named = route.default_model
        requested = named if isinstance(named, str) else None
    if check_caps:
        check_output_caps(route, body)
    stream = route.streams or (route.body_streams and body.get("stream") is True)
    return ClientRequest(body, requested if isinstance(requested, str) else None, stream)


def check_output_caps(route: RouteReading, body: dict[str, Any]) -> None:
    """A 400 when the body's output cap is no token count (the gateway reserves budget from it), where the body
    is in the client's own format (the cloud platforms' paths and the path-named models are the provider's to judge)."""
    if route.model_in_body and route.path_provider is None:
        optional_token_count(body, *_OUTPUT_CAPS)


def resolve(requested: object, prices: PriceBook, media_models: frozenset[str] = frozenset(), *,
            free: bool = False) -> tuple[ProviderAdapter, str]:
    """The provider for a model name and the name to ask it for (404 if no provider or catalog knows it; a
    `free` route's model needs no price)."""
    return resolve_model(requested, prices, media_models=media_models, free=free)


def parse_call(route: RouteReading, request: ClientRequest, adapter: ProviderAdapter, model: str, *,
               where: str | None = None) -> Parsed:
    """The upstream request of one attempt of `request` to `adapter`'s `model` (a 400 if it cannot be made).

    Natively when the provider serves the endpoint; chat is translated for a
    provider of another format. `where` names the client's path in errors.
    """
    endpoint = route.endpoint
    if endpoint in adapter.native:
        body = request.body
        changed = False
        if route.model_in_body and body.get("model") != model:
            body = {**body, "model": model}  # `provider/model` (or a fallback) names it; the provider wants its own
            changed = True
        with_usage, wants_usage = stream_usage_option(endpoint, request.stream, adapter.usage_chunk_on_request, body)
        if with_usage is not None:
            body, changed = with_usage, True
        params = {"params": dict(route.path_params)} if route.path_params else {}
        upstream = adapter.upstream(endpoint, model, stream=request.stream, action=route.action,
                                    version=route.version, **params)
        return Parsed(adapter, adapter.catalog_model(model), model, request.requested, request.stream, wants_usage,
                      upstream, body, json.dumps(body, separators=_COMPACT).encode() if changed else None, request)
    translator = adapter.chat_translator() if endpoint is Endpoint.CHAT else None
    if translator is None:
        raise GatewayError(400, f"The model `{request.requested}` ({adapter.display_name}) is not served on "
                           f"{where or endpoint.value}.", code="unsupported_model_for_endpoint", param="model")
    options = request.body.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    try:
        provider_body = translator.request(request.body)
    except TranslationError as e:
        raise GatewayError(400, e.message, code=e.code or "unsupported_parameter", param=e.param) from None
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as e:
        # A field of the wrong type that the translation met before a check of its own.
        raise GatewayError(400, f"The request has a field of the wrong type or shape for {adapter.display_name} "
                           f"({type(e).__name__}: {str(e)[:120]}).", code="invalid_request") from None
    if translator.model_in_body:
        provider_body["model"] = model
    upstream = adapter.upstream(Endpoint.CHAT, model, stream=request.stream)
    return Parsed(adapter, adapter.catalog_model(model), model, request.requested, request.stream, wants_usage,
                  upstream, provider_body, json.dumps(provider_body, separators=_COMPACT).encode(), request, translator,
                  content_type="application/json",
                  drop_header_prefixes=adapter.translation_drop_headers())
