"""Owned resources: video jobs and context caches made through the gateway, kept to the key that made them and
booked apart from the calls that touch them (the rules are the providers': tokensense/providers/owned.py).

Parse stage (request): a create reads its model (JSON body or multipart form), resolves the provider, and
prepares the upstream request (the police stage follows, as for any call; a job reserves what it will book);
a call naming a resource by id goes upstream only for the key that made it (another key's id, or one TokenSense
never saw, is a 404 in the provider's error shape); a list goes upstream and its answer keeps only the key's own.
Answers (response, before metering): a create's id is recorded with its owner; storage (a cache's TTL) is priced
on the call's own record; a job seen finished is booked once, on a record of its own (`settle_booking`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http

from addons.common import answer_error, get_call, prepare_upstream, require_credential, response_body
from tokensense.core.errors import GatewayError
from tokensense.core.paths import path_segment
from tokensense.core.usage import TokenUsage
from tokensense.gateway import media
from tokensense.gateway.call import CallContext
from tokensense.gateway.owned_jobs import media_table, owned_price
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stages.parse import read_json, resolve
from tokensense.gateway.stages.settle import settle_booking
from tokensense.metering.media_prices import MediaPriceTable
from tokensense.providers import get_provider
from tokensense.providers.base import Upstream
from tokensense.providers.owned import CREATE, DELETE, LIST, READ, UPDATE, Metered, OwnedRules
from tokensense.storage.owned import Owned, OwnedStore

log = logging.getLogger(__name__)

META = "tokensense.owned"


@dataclass(slots=True)
class OwnedCall:
    """What the answer hook needs to know about a call on an owned resource."""

    rules: OwnedRules
    action: str
    owner: Owned | None = None  # the resource the path names (read, update, delete)
    requested: dict[str, Any] = field(default_factory=dict)  # what a create asked for (kept with its owner)


def _not_found(resource: str) -> GatewayError:
    return GatewayError(404, f"No resource with id '{resource[:100]}' was made with this TokenSense key.",
                        code="not_found")


class OwnedResources:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._store: OwnedStore | None = None
        self._prices: MediaPriceTable | None = None

    @property
    def store(self) -> OwnedStore:
        if self._store is None:
            self._store = OwnedStore(self.runtime.engine)
        return self._store

    @property
    def prices(self) -> MediaPriceTable:
        if self._prices is None:
            self._prices = media_table(self.runtime)
        return self._prices

    def price(self, model: str | None, metered: Metered | None) -> float | None:
        """USD for what an owned resource's answer metered (None: unpriced)."""
        return owned_price(self.prices, model, metered)

    # --- parse stage ---------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if flow.response or flow.error or call is None or call.key is None or call.intercepted:
            return
        route = call.route
        if route is None or route.owned is None:
            return
        try:
            adapter = get_provider(route.provider or "")
            rules = adapter.owned_rules(route.endpoint) if adapter is not None else None
            if adapter is None or rules is None:
                raise GatewayError(404, f"TokenSense has no endpoint {flow.request.method[:16]} "
                                   f"{flow.request.path.partition('?')[0][:200]}.", code="unknown_endpoint")
            call.media_priced = True
            meta = OwnedCall(rules, route.owned)
            resource: str | None = None
            if route.owned == CREATE:
                self._create(flow, call, rules, meta)
            elif route.owned == LIST:
                call.provider, call.model = adapter, rules.default_model or ""
            else:
                resource = path_segment(call.resource or "", what="resource id")
                assert call.key is not None
                owner = await self.store.owned_by(rules.stored_id(resource), call.key.id)
                if owner is None or owner.provider != adapter.name:
                    raise _not_found(resource)
                meta.owner = owner
                call.provider, call.model, call.requested_model = adapter, owner.model or "", owner.model
            credential = require_credential(self.runtime, adapter)
            path = rules.upstream_path(route.endpoint, resource, route.version)
            prepare_upstream(call, adapter, credential, Upstream(route.endpoint, path))
            flow.metadata[META] = meta
        except GatewayError as e:
            answer_error(flow, call.fmt, e)

    def _create(self, flow: http.HTTPFlow, call: CallContext, rules: OwnedRules, meta: OwnedCall) -> None:
        req = flow.request
        content_type = req.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            fields: dict[str, Any] = dict(media.parse_form(req.raw_content or b"", content_type).fields)
        else:
            fields = read_json(req.raw_content)
            call.sent_body = fields
        requested = rules.model_of(fields) or rules.default_model
        call.requested_model = requested
        adapter, model = resolve(requested, self.runtime.prices, media_models=self.prices.models)
        call.provider, call.model = adapter, model
        if adapter.owned_rules(call.route_endpoint) is not rules:
            raise GatewayError(400, f"The model `{requested}` ({adapter.display_name}) is not served on "
                               f"{req.path.partition('?')[0][:100]}.", code="unsupported_model_for_endpoint",
                               param="model")
        meta.requested = rules.requested(fields)
        if rules.job:
            call.reserve_usd = self.price(model, rules.expected(meta.requested))
            key = call.key
            if call.reserve_usd is None and key is not None and key.budget_usd is not None:
                raise GatewayError(403, f"TokenSense has no price for `{requested}` as asked "
                                   f"({', '.join(f'{k} {v}' for k, v in meta.requested.items())}), and the key "
                                   f"`{key.name}` has a budget. Price it under [media_prices] in config.toml.",
                                   code="model_unpriced", param="model")

    # --- answers -------------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        meta: OwnedCall | None = flow.metadata.get(META)
        response = flow.response
        if meta is None or response is None or meta.action != READ:
            return
        if not response.headers.get("content-type", "").startswith("application/json"):
            response.stream = True  # a download (a video's content): passed on as it arrives, never buffered

    async def response(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        meta: OwnedCall | None = flow.metadata.get(META)
        response = flow.response
        if call is None or meta is None or response is None or not call.forwarded or call.recorded:
            return
        if response.stream or not 200 <= response.status_code < 300:
            return
        call.usage = TokenUsage()  # nothing here is priced from a usage object; what is, is set below
        try:
            answer = json.loads(response_body(response))
        except (ValueError, UnicodeDecodeError):
            answer = None
        if not isinstance(answer, dict):
            if meta.action == CREATE or meta.action == UPDATE and not meta.rules.job:
                call.usage_unknown = True  # an answer it cannot read: what it made is unknown, never $0
            return
        try:
            await self._answered(flow, call, meta, answer)
        except Exception:  # the client has its answer whatever the bookkeeping meets; the log says what failed
            log.exception("could not keep the %s answer of request %s", call.route_endpoint, call.request_id)

    async def _answered(self, flow: http.HTTPFlow, call: CallContext, meta: OwnedCall, answer: dict) -> None:
        rules = meta.rules
        assert call.key is not None and call.provider is not None
        if meta.action == CREATE:
            state = dict(meta.requested)
            if not rules.job:
                metered, kept = rules.stored(answer, None)
                state.update(kept)
                self._price_on_record(call, metered)
            resource = rules.resource_id(answer)
            if resource is None:
                log.warning("a %s answer named no id: it is not kept to its key", call.route_endpoint)
                return
            owner = await self.store.remember(resource, kind=rules.kind.value, key_id=call.key.id,
                                              provider=call.provider.name, model=call.model,
                                              attribution=dict(call.attribution), state=state)
            if rules.job:
                await self._book_if_finished(call, rules, owner, answer)
        elif meta.action == READ and meta.owner is not None and rules.job:
            await self._book_if_finished(call, rules, meta.owner, answer)
        elif meta.action == UPDATE and meta.owner is not None and not rules.job:
            metered, kept = rules.stored(answer, meta.owner.state)
            self._price_on_record(call, metered)
            await self.store.update_state(meta.owner.id, kept)
        elif meta.action == DELETE and meta.owner is not None:
            await self.store.forget(meta.owner.id)
        elif meta.action == LIST:
            await self._keep_own(flow, call, rules, answer)

    def _price_on_record(self, call: CallContext, metered: Metered | None) -> None:
        """Storage a create or update asked for, priced on the call's own record."""
        call.media_cost = self.price(call.model, metered)
        if metered is None or call.media_cost is None:
            call.usage_unknown = True
            return
        call.usage = TokenUsage(seconds=round(metered.seconds, 3),
                                counters={"cached_tokens": metered.tokens} if metered.tokens else {})

    async def _book_if_finished(self, call: CallContext, rules: OwnedRules, owner: Owned, answer: dict) -> None:
        """A job the answer shows finished is booked once: the one caller whose claim finds it unbooked books it."""
        if owner.booked:
            return
        metered = rules.finished(answer, owner.state)
        if metered is None or not await self.store.claim_booking(owner.id):
            return
        cost = self.price(owner.model, metered)
        if cost is None:
            log.warning("no price for %s at %s: its booked record is unpriced", owner.model, metered.size)
        settle_booking(self.runtime, call, request_id=owner.id, endpoint=rules.kind, model=owner.model,
                       attribution=owner.attribution, usage=TokenUsage(seconds=round(metered.seconds, 3)), cost=cost)

    async def _keep_own(self, flow: http.HTTPFlow, call: CallContext, rules: OwnedRules, answer: dict) -> None:
        """A list answer with only the resources of the calling key (the provider lists every key's)."""
        listed = rules.listed(answer)
        if listed is None or flow.response is None:
            return
        name, items = listed
        ids = [found for item in items if (found := rules.item_id(item)) is not None]
        assert call.key is not None
        mine = await self.store.owned_ids(call.key.id, ids)
        kept = [item for item in items if rules.item_id(item) in mine]
        if len(kept) == len(items):
            return
        answer[name] = kept
        for end, item in (("first_id", kept[0] if kept else None), ("last_id", kept[-1] if kept else None)):
            if end in answer:
                answer[end] = rules.item_id(item) if item is not None else None
        flow.response.headers.pop("content-encoding", None)
        flow.response.content = json.dumps(answer, separators=(",", ":")).encode()

