"""Provider tokens for the prepared upstream request: a provider key exchanged for a short-lived token.

Vertex AI takes OAuth2 access tokens, not the service-account key TokenSense
stores. After the gates passed (and before the forward stage writes the request),
the provider turns the key into a token: from its cache, or fetched in a worker
thread when missing or near expiry, so the event loop never blocks. A failure is
a 503 in the endpoint's shape and nothing goes upstream.
"""

from __future__ import annotations

from mitmproxy import http

from addons.common import answer_error, get_call
from tokensense.core.errors import GatewayError


class ProviderAuth:
    async def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if flow.response or flow.error or call is None or call.pending is None or not call.may_send:
            return
        pending = call.pending
        if not pending.provider.exchanges_key:
            return
        try:
            pending.api_key = await pending.provider.resolve_api_key(pending.api_key)
        except GatewayError as e:
            answer_error(flow, call.fmt, e)
