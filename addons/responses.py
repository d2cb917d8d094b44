"""The Responses API: passthrough where a provider serves it, translated where it has a translation, owned per key.

Parse stage (request): `POST /v1/responses`, `/v1/responses/input_tokens` and `/compact` are parsed and
prepared like the Router does for chat; the routes naming a response (`GET`/`DELETE /v1/responses/{id}`,
`/cancel`, `/input_items`) and every `previous_response_id` are checked against the owner TokenSense
recorded for that id: another key's id, or one TokenSense never saw, is a 404. Answers (responseheaders,
response): passthrough streams are metered from their terminal event; translated answers and streams are
turned into Responses objects and events; every new response id is recorded with its owner (translated
ones with their conversation, so `previous_response_id` and `GET` are served from the store).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from mitmproxy import http

from addons.common import (
    answer_error,
    answer_json,
    get_call,
    prepare_upstream,
    require_credential,
    response_body,
    write_translated_answer,
)
from tokensense.core.endpoints import RESPONSE_ID_ENDPOINTS, RESPONSES_ENDPOINTS, Endpoint
from tokensense.core.errors import GatewayError
from tokensense.core.paths import path_segment
from tokensense.gateway.call import CallContext
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stages.parse import parse_call, read_json, read_request, reading_of, resolve
from tokensense.gateway.stream import PassthroughStream
from tokensense.providers import PROVIDERS, get_provider
from tokensense.providers import responses_format as rf
from tokensense.providers.base import Upstream
from tokensense.providers.responses_stream import ResponsesTranslatingStream
from tokensense.providers.translation import TranslationError
from tokensense.storage.responses import ResponseStore

log = logging.getLogger(__name__)

META = "tokensense.responses"
_COMPACT = (",", ":")
_SUFFIX = {Endpoint.RESPONSES_CANCEL: "/cancel", Endpoint.RESPONSES_INPUT_ITEMS: "/input_items"}


@dataclass(slots=True)
class ResponsesCall:
    """What the answer hooks need to know about a Responses API call."""

    translator: Any | None = None  # providers/*/responses.py ResponsesTranslation, for a translated model
    request: dict = field(default_factory=dict)  # the client's body (echoed in translated answers)
    previous: str | None = None
    stored: bool = True  # `store` was not false: the new response id is recorded
    response_id: str | None = None  # the id a translated response gets
    counting: bool = False  # input_tokens, translated to the provider's free token count


def _not_found(response_id: str, param: str | None = None) -> GatewayError:
    return GatewayError(404, f"No response with id '{response_id[:100]}' was made with this TokenSense key.",
                        code="response_not_found", param=param)


class Responses:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._store: ResponseStore | None = None

    @property
    def store(self) -> ResponseStore:
        if self._store is None:
            self._store = ResponseStore(self.runtime.engine, ttl_days=self.runtime.settings.responses_ttl_days)
        return self._store

    async def done(self) -> None:
        if self._store is not None:
            await self._store.drain()

    # --- parse stage ---------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if flow.response or flow.error or call is None or call.key is None or call.intercepted:
            return
        if call.route_endpoint not in RESPONSES_ENDPOINTS:
            return
        try:
            if call.route_endpoint in RESPONSE_ID_ENDPOINTS:
                await self._stored_route(flow, call)
            else:
                await self._create(flow, call)
        except GatewayError as e:
            answer_error(flow, call.fmt, e)

    async def _create(self, flow: http.HTTPFlow, call: CallContext) -> None:
        endpoint = call.route_endpoint
        route = reading_of(call)
        request = read_request(route, read_json(flow.request.raw_content))
        call.stream = endpoint is Endpoint.RESPONSES and request.stream  # compact and input_tokens never stream
        request = replace(request, stream=call.stream)
        body, requested = request.body, request.requested
        call.requested_model = requested
        adapter, model = resolve(body.get("model"), self.runtime.prices)
        call.provider, call.model = adapter, model
        meta = ResponsesCall(request=body, stored=body.get("store") is not False or body.get("background") is True)
        previous = body.get("previous_response_id")
        if previous is not None:
            if not isinstance(previous, str) or not previous:
                raise GatewayError(400, "previous_response_id must be a response id string.",
                                   code="invalid_request", param="previous_response_id")
            assert call.key is not None
            if await self.store.owned_by(previous, call.key.id) is None:
                raise _not_found(previous, "previous_response_id")
            meta.previous = previous

        if endpoint in adapter.native:  # passed through: the gateway's one parse, as for chat
            credential = require_credential(self.runtime, adapter)
            call.parsed = parsed = parse_call(route, request, adapter, model)
            call.sent_body = parsed.sent_body
            prepare_upstream(call, adapter, credential, parsed.upstream, body=parsed.body)
            flow.metadata[META] = meta
            return

        translator = adapter.responses_translator()
        if translator is not None and endpoint is Endpoint.RESPONSES_COMPACT:
            # A compaction is the serving provider's own encrypted item: a translation cannot write one.
            raise GatewayError(400, rf.compact_refusal(str(requested), adapter.display_name),
                               code="unsupported_model_for_endpoint", param="model")
        if translator is None or endpoint not in (Endpoint.RESPONSES, Endpoint.RESPONSES_INPUT_TOKENS):
            raise GatewayError(400, f"The model `{requested}` ({adapter.display_name}) is not served on "
                               f"{flow.request.path.partition('?')[0][:100]}.",
                               code="unsupported_model_for_endpoint", param="model")
        credential = require_credential(self.runtime, adapter)
        client_body = body
        if meta.previous is not None:
            conversation = await self.store.conversation(meta.previous)
            if conversation is None:
                raise GatewayError(
                    400, f"previous_response_id '{meta.previous[:100]}' cannot be continued with {adapter.display_name}: "
                    "TokenSense keeps the conversation only of responses it translated itself "
                    f"({_translated_models()}). Send the whole conversation in `input` instead.",
                    code="previous_response_not_found", param="previous_response_id")
            body = rf.with_previous_conversation(body, conversation)
        if endpoint is Endpoint.RESPONSES_INPUT_TOKENS:
            self._count(flow, call, meta, translator, credential, body, model)
            return
        try:
            provider_body = translator.request(body, model=model, stream=call.stream)
        except TranslationError as e:
            raise GatewayError(400, e.message, code=e.code or "unsupported_parameter", param=e.param) from None
        except (TypeError, AttributeError, KeyError, ValueError, IndexError) as e:
            raise GatewayError(400, f"The request has a field of the wrong type or shape for {adapter.display_name} "
                               f"({type(e).__name__}: {str(e)[:120]}).", code="invalid_request") from None
        upstream = adapter.upstream(Endpoint.CHAT, model, stream=call.stream)
        call.sent_body = provider_body
        meta.translator = translator
        meta.request = client_body
        meta.response_id = rf.new_response_id()
        prepare_upstream(call, adapter, credential, upstream,
                         body=json.dumps(provider_body, separators=_COMPACT).encode(),
                         content_type="application/json", drop_header_prefixes=adapter.translation_drop_headers())
        flow.metadata[META] = meta

    def _count(self, flow: http.HTTPFlow, call: CallContext, meta: ResponsesCall, translator: Any, credential: Any,
               body: dict, model: str) -> None:
        """input_tokens for a translated model: the provider's own free token count, answered in OpenAI's shape."""
        try:
            upstream, provider_body = translator.count_request(body, model=model)
        except TranslationError as e:
            raise GatewayError(400, e.message, code=e.code or "unsupported_parameter", param=e.param) from None
        except (TypeError, AttributeError, KeyError, ValueError, IndexError) as e:
            raise GatewayError(400, "The request has a field of the wrong type or shape "
                               f"({type(e).__name__}: {str(e)[:120]}).", code="invalid_request") from None
        assert call.provider is not None
        call.sent_body = provider_body
        meta.translator = translator
        meta.counting = True
        meta.stored = False
        prepare_upstream(call, call.provider, credential, upstream,
                         body=json.dumps(provider_body, separators=_COMPACT).encode(),
                         content_type="application/json",
                         drop_header_prefixes=call.provider.translation_drop_headers())
        flow.metadata[META] = meta

    async def _stored_route(self, flow: http.HTTPFlow, call: CallContext) -> None:
        response_id = path_segment(call.resource or "", what="response id")
        assert call.key is not None
        owner = await self.store.owned_by(response_id, call.key.id)
        if owner is None:
            raise _not_found(response_id)
        adapter = get_provider(owner.provider)
        if adapter is None:
            raise _not_found(response_id)
        call.provider, call.model, call.requested_model = adapter, owner.model, owner.model
        if owner.translated:
            await self._answer_stored(flow, call, response_id)
            return
        credential = require_credential(self.runtime, adapter)
        path = f"/v1/responses/{response_id}{_SUFFIX.get(call.route_endpoint, '')}"
        call.stream = flow.request.query.get("stream") == "true"
        prepare_upstream(call, adapter, credential, Upstream(call.route_endpoint, path))
        flow.metadata[META] = ResponsesCall()

    async def _answer_stored(self, flow: http.HTTPFlow, call: CallContext, response_id: str) -> None:
        """The routes of a translated response, answered from what TokenSense stored (no provider call)."""
        endpoint = call.route_endpoint
        if endpoint is Endpoint.RESPONSES_DELETE:
            await self.store.forget(response_id)
            answer_json(flow, 200, {"id": response_id, "object": "response.deleted", "deleted": True})
            return
        if endpoint is Endpoint.RESPONSES_CANCEL:
            raise GatewayError(400, "Only responses created with background=true can be cancelled.",
                               code="invalid_request")
        response, items = await self.store.answer(response_id)
        if response is None:
            raise _not_found(response_id)
        if endpoint is Endpoint.RESPONSES_RETRIEVE:
            answer_json(flow, 200, response)
            return
        answer_json(flow, 200, _input_item_page(items, flow.request.query))

    # --- answers -------------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        meta = flow.metadata.get(META)
        response = flow.response
        if call is None or meta is None or response is None or not call.forwarded or call.provider is None:
            return
        if not (200 <= response.status_code < 300
                and response.headers.get("content-type", "").startswith("text/event-stream")):
            return
        call.stream = True
        adapter = call.provider
        if meta.translator is not None:
            translator = meta.translator.stream(model=call.requested_model or call.model or "", request=meta.request,
                                                response_id=meta.response_id)
            response.headers.pop("content-length", None)

            def on_end(usage: dict) -> None:
                call.usage = adapter.usage_from_object(usage) if usage else None
                if translator.final is not None and translator.final.get("status") != "failed":
                    self._remember_translated(call, meta, translator.final)

            response.stream = ResponsesTranslatingStream(translator, on_first=call.mark_first_token, on_end=on_end)
            return
        usage = adapter.responses_stream_usage()
        if usage is None:  # a provider that serves no Responses stream of its own: nothing to read
            return
        call.stream_usage = usage

        def on_passthrough_end() -> None:
            if call.route_endpoint is Endpoint.RESPONSES and usage.response_id and meta.stored:
                self._remember(call, usage.response_id, meta.previous)

        # The terminal event (and response.created) carry a "response" object; deltas do not.
        response.stream = PassthroughStream(call, usage, (b'"response"',), drop_usage_chunk=False,
                                            on_end=on_passthrough_end)

    def response(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        meta = flow.metadata.get(META)
        response = flow.response
        if call is None or meta is None or response is None or response.stream or not call.forwarded:
            return
        if meta.translator is not None:
            self._translate_answer(flow, call, meta)
            return
        if not 200 <= response.status_code < 300:
            return
        if call.route_endpoint not in (Endpoint.RESPONSES, Endpoint.RESPONSES_COMPACT):
            return
        try:
            answer = json.loads(response_body(response))
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(answer, dict):
            return
        assert call.provider is not None
        call.usage = call.provider.responses_usage(answer)
        if call.route_endpoint is Endpoint.RESPONSES and isinstance(answer.get("id"), str) and meta.stored:
            self._remember(call, answer["id"], meta.previous)

    def _translate_answer(self, flow: http.HTTPFlow, call: CallContext, meta: ResponsesCall) -> None:
        translator = meta.translator
        assert translator is not None
        if meta.counting:
            write_translated_answer(flow, call, translator.count_answer, translator.error, what="token count")
            return
        model = call.requested_model or call.model or ""
        translated = write_translated_answer(
            flow, call, lambda answer: translator.answer(answer, model=model, request=meta.request,
                                                         response_id=meta.response_id),
            translator.error, what="Responses answer")
        if translated is not None:
            self._remember_translated(call, meta, translated)

    def _remember(self, call: CallContext, response_id: str, previous: str | None) -> None:
        assert call.provider is not None and call.key is not None
        self.store.remember(response_id, key_id=call.key.id, provider=call.provider.name, model=call.model,
                            previous_response_id=previous)

    def _remember_translated(self, call: CallContext, meta: ResponsesCall, answer: dict) -> None:
        if not meta.stored or not isinstance(answer.get("id"), str):
            return
        assert call.provider is not None and call.key is not None
        items = rf.input_items_of(meta.request) + list(answer.get("output") or [])
        self.store.remember(answer["id"], key_id=call.key.id, provider=call.provider.name, model=call.model,
                            previous_response_id=meta.previous, items=items, response=answer)


def _input_item_page(items: list[dict], query: Any) -> dict:
    """OpenAI's input_items page over stored items (`order` desc by default, `limit`, `after`)."""
    listed = [{"id": item.get("id") or f"item_{i}", **item} for i, item in enumerate(items)]
    if query.get("order", "desc") != "asc":
        listed.reverse()
    after = query.get("after")
    if after:
        ids = [item["id"] for item in listed]
        listed = listed[ids.index(after) + 1:] if after in ids else []
    try:
        limit = min(max(int(query.get("limit", "20")), 1), 100)
    except ValueError:
        limit = 20
    page = listed[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(listed) > limit}


def _translated_models() -> str:
    """The providers whose Responses calls TokenSense translates, for a message: "Anthropic and ... models"."""
    names = [p.display_name for p in PROVIDERS.values() if p.responses_translator() is not None]
    return (f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else "".join(names)) + " models"
