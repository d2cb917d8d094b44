"""Owned jobs (a video) that no client retrieves through the gateway: polled by the batch follower and booked once.

A job made through the gateway is booked when an answer first shows it finished. A client that learns of the end
from a webhook, or stops polling, never retrieves it through the gateway: the batch follower (gateway/batches.py,
one process of a deployment at a time, every `batch_poll_seconds`) asks the provider itself, with the stored
provider key, how each unbooked job is doing, and books a finished one through the same gate as a retrieve
(`claim_booking`, then `settle_booking`): whoever claims it first books it, with the creating call's key and
attribution. A job that ended with nothing to book (failed, expired) or that the provider no longer knows (404) is
claimed without a record: it is no longer polled.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from tokensense.core.endpoints import Endpoint
from tokensense.core.usage import TokenUsage
from tokensense.gateway.call import CallContext
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.routing import join_url
from tokensense.gateway.stages.settle import settle_booking
from tokensense.metering.media_prices import MediaPriceTable, load_media_prices
from tokensense.providers import DEFAULT_ERRORS, PROVIDERS, Provider, get_provider
from tokensense.providers.owned import CREATE, Metered, OwnedRules
from tokensense.storage.models import ApiKey, UsageCreate
from tokensense.storage.owned import Owned, OwnedStore, open_jobs

if TYPE_CHECKING:
    from tokensense.gateway.runtime import Runtime

log = logging.getLogger(__name__)


def owned_price(table: MediaPriceTable, model: str | None, metered: Metered | None) -> float | None:
    """USD for what an owned resource's answer metered (None: unpriced)."""
    if metered is None or not model:
        return None
    if metered.tokens is not None:
        return table.storage_cost(model, tokens=metered.tokens, seconds=metered.seconds)
    return table.video_cost(model, seconds=metered.seconds, size=metered.size)


def media_table(runtime: Runtime) -> MediaPriceTable:
    """The media price table of the configuration (the built-in one, logged, when `[media_prices]` is invalid)."""
    table, error = load_media_prices(runtime.config.media_prices)
    if error:
        log.error("%s; owned resources are priced with the built-in table", error)
    return table


def job_kinds() -> list[str]:
    """The kinds (endpoint ids) of the owned resources that are jobs the follower polls, across the providers."""
    kinds: set[str] = set()
    for provider in list(PROVIDERS.values()):
        for route in provider.client_routes:
            if route.owned != CREATE:
                continue
            rules = provider.owned_rules(route.endpoint)
            if rules is not None and rules.job and rules.status_path("x") is not None:
                kinds.add(rules.kind.value)
    return sorted(kinds)


class OwnedJobs:
    """The follower's part for owned jobs: one `tick` polls every unbooked one once."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._prices: MediaPriceTable | None = None

    @property
    def prices(self) -> MediaPriceTable:
        if self._prices is None:
            self._prices = media_table(self.runtime)
        return self._prices

    @property
    def store(self) -> OwnedStore:
        return OwnedStore(self.runtime.engine)

    def _open(self) -> list[Owned]:
        with Session(self.runtime.engine) as session:
            return open_jobs(session=session, kinds=job_kinds())

    def _key(self, key_id: str | None) -> KeyInfo | None:
        if key_id is None:
            return None
        with Session(self.runtime.engine) as session:
            row = session.get(ApiKey, key_id)
            return KeyInfo.from_row(row) if row is not None else None

    async def tick(self, client: Any) -> int:
        """Poll every unbooked job once with `client` (an httpx.AsyncClient); how many this call booked."""
        booked = 0
        for job in await asyncio.to_thread(self._open):
            try:
                booked += await self._follow(client, job)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("%s job %s: could not follow it: %s: %s", job.kind, job.id, type(e).__name__, str(e)[:200])
        return booked

    async def _follow(self, client: Any, job: Owned) -> int:
        provider = get_provider(job.provider)
        rules = provider.owned_rules(Endpoint(job.kind)) if provider is not None else None
        path = rules.status_path(job.id) if rules is not None and rules.job else None
        keys = self.runtime.keys
        if provider is None or rules is None or path is None or keys is None:
            return 0
        credential = keys.credential(provider.name)
        if not provider.has_credentials(credential.api_key):
            return 0
        headers = {**provider.default_headers(), **provider.auth_headers(credential.api_key or "")}
        answer = await client.get(join_url(credential.base_url, path), headers=headers)
        if answer.status_code == 404:  # deleted at the provider: nothing more will be billed
            log.warning("%s job %s: the provider answers 404; it is no longer followed", job.kind, job.id)
            await self.store.claim_booking(job.id)
            return 0
        if answer.status_code != 200:
            log.info("%s job %s: the provider answered %d", job.kind, job.id, answer.status_code)
            return 0
        body = answer.json()
        if not isinstance(body, dict):
            return 0
        metered = rules.finished(body, job.state)
        if metered is None:
            if rules.ended_unbilled(body):
                log.info("%s job %s ended %s: nothing to book", job.kind, job.id, str(body.get("status"))[:40])
                await self.store.claim_booking(job.id)
            return 0
        # The key is read before the claim: nothing may fail between the claim and the record.
        key = await asyncio.to_thread(self._key, job.key_id)
        if not await self.store.claim_booking(job.id):
            return 0  # a retrieve (or another process) booked it first
        self._settle(provider, rules, job, key, metered)
        return 1

    def _settle(self, provider: Provider, rules: OwnedRules, job: Owned, key: KeyInfo | None, metered: Metered) -> None:
        cost = owned_price(self.prices, job.model, metered)
        if cost is None:
            log.warning("no price for %s at %s: its booked record is unpriced", job.model, metered.size)
        fmt = next((route.errors for route in provider.client_routes if route.endpoint is rules.kind), DEFAULT_ERRORS)
        call = CallContext(
            rules.kind,
            fmt,
            key=key,
            provider=provider,
            model=job.model,
            media_priced=True,
            on_attempt_record=[self._observe],
        )
        settle_booking(
            self.runtime,
            call,
            request_id=job.id,
            endpoint=rules.kind,
            model=job.model,
            attribution=job.attribution,
            usage=TokenUsage(seconds=round(metered.seconds, 3)),
            cost=cost,
        )
        log.info("%s job %s (%s) booked by the follower: $%s", job.kind, job.id, provider.name, cost)

    def _observe(self, record: UsageCreate) -> None:
        """The booked record goes to the observers of records booked outside a call (metrics, budget alerts)."""
        for observe in self.runtime.on_booked:
            try:
                observe([record])
            except Exception:
                log.exception("owned job record observer failed")
