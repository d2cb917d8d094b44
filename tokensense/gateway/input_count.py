"""Counting the input tokens of an answered call whose answer reports none (Gemini embeddings), off the client's path.

The provider names the free call that counts them (`Provider.input_count`: Gemini's
`:countTokens` on the same model, for the same contents); it is made after the client
has its answer, with the provider key the call used (the gateway's, or in intercept mode
the client's own). If it fails, the record says the tokens are unknown and the call is
recorded unpriced (cost NULL), never as $0.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from tokensense.core.usage import TokenUsage
from tokensense.gateway.forward import PendingUpstream
from tokensense.gateway.retry import UpstreamTimeouts
from tokensense.gateway.routing import join_url
from tokensense.gateway.upstream_client import UpstreamClient, UpstreamRequest
from tokensense.providers.base import Provider

log = logging.getLogger(__name__)

COUNT_TIMEOUT_SECONDS = 30.0
_MAX_ANSWER = 64 * 1024


@dataclass(frozen=True, slots=True)
class InputCount:
    """The counting call for one answered call: where it goes, with which credentials, and what it sends."""

    provider: Provider
    base_url: str
    auth: dict[str, str]  # the headers that carry the provider key the call itself used
    path: str
    body: dict
    query: str = ""  # a client's `?key=` in intercept mode

    @classmethod
    def for_gateway(cls, pending: PendingUpstream, path: str, body: dict) -> InputCount:
        """With the provider key and base URL the gateway sent the call with."""
        provider = pending.provider
        return cls(provider, pending.base_url, {**provider.auth_headers(pending.api_key),
                                                **provider.default_headers()}, path, body)


async def count_input_tokens(client: UpstreamClient, count: InputCount) -> TokenUsage | None:
    """The call's input tokens as counted by the provider, or None when the count failed."""
    provider = count.provider
    headers = {**count.auth, "content-type": "application/json"}
    request = UpstreamRequest("POST", join_url(count.base_url, count.path, count.query), headers,
                              json.dumps(count.body, separators=(",", ":")).encode())
    try:
        outcome = await client.send(request, UpstreamTimeouts(first_byte=COUNT_TIMEOUT_SECONDS, total=COUNT_TIMEOUT_SECONDS))
    except Exception as e:  # never let a count break the record
        log.warning("counting the input tokens of a %s call failed: %s", provider.name, type(e).__name__)
        return None
    if not outcome.ok:
        log.warning("counting the input tokens of a %s call failed: %s %s", provider.name, outcome.status,
                    (outcome.error or "")[:200])
        return None
    response = outcome.answer.response
    try:
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > _MAX_ANSWER:
                break
        answer = json.loads(bytes(data))
    except Exception as e:
        log.warning("the input-token count of a %s call was unreadable: %s", provider.name, type(e).__name__)
        return None
    finally:
        await client.discard(outcome)
    tokens = provider.counted_tokens(answer)
    if tokens is None:
        return None
    # `counted_input_tokens` in the record's details: these tokens come from the counting call, not the answer.
    return TokenUsage(input_tokens=tokens, counters={"counted_input_tokens": tokens})
