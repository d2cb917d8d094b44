"""The ordered list of TokenSense addons, shared by the mitmdump script and `tokensense serve`."""

from __future__ import annotations

from addons.admit import Admit
from addons.batches import Batches, BatchUploads
from addons.chain import TokenSenseChain
from addons.client_timeouts import ClientTimeouts, RequestArrived
from addons.forward import Forward
from addons.inflight import InFlightCalls
from addons.intercept import Intercept
from addons.lifecycle import Lifecycle
from addons.media import Media
from addons.metering import Metering
from addons.observability import Observability
from addons.owned import OwnedResources
from addons.passthrough import Passthrough
from addons.policy import Policy
from addons.provider_auth import ProviderAuth
from addons.realtime import RealtimeSockets
from addons.recording import Recording
from addons.reliability import Reliability
from addons.request_records import RequestRecords
from addons.responses import Responses
from addons.responses_ws import ResponsesWebSocket
from addons.routing import Router
from addons.translation import Translation
from addons.upstream_errors import UpstreamErrors
from tokensense.gateway.runtime import Runtime


def tokensense_addons(runtime: Runtime | None = None) -> list[object]:
    """The TokenSense addons in hook order: each one's `request` runs after the ones before it."""
    runtime = runtime or Runtime()
    client_timeouts = ClientTimeouts(runtime.settings.client_idle_timeout)
    batches = Batches(runtime)
    return [
        Lifecycle(runtime),
        RequestArrived(client_timeouts),  # first: the body is whole, however long the gates after take
        Intercept(runtime),  # before Admit: intercepted calls never meet the gateway's key check
        ResponsesWebSocket(runtime),  # the Responses WebSocket handshake, answered here; its frames served over HTTP
        BatchUploads(batches),  # a resumable upload's bytes, on the session URL the gateway handed out (no key)
        RealtimeSockets(runtime),  # realtime sessions (voice): the handshake admitted here, frames relayed and metered
        Admit(runtime),  # requestheaders: key, route, body limit
        RequestRecords(runtime),  # GET /v1/tokensense/requests/{id}, answered before routing
        Router(runtime),  # request: parse, resolve, prepare the upstream request
        Responses(runtime),  # the Responses API: parse, ownership, answers (before Translation and Metering)
        batches,  # batch jobs and files: owned per key, uploads streamed, jobs reserved and followed
        OwnedResources(runtime),  # video jobs and context caches: ownership, storage and job bookings
        Media(runtime),
        Passthrough(runtime),  # paths no route serves: forwarded with the key swap, metered (before Metering)
        Policy(runtime),  # request: access, rate, budget
        ProviderAuth(),  # request: short-lived provider tokens (Vertex AI), fetched off the event loop
        Forward(runtime),  # request: picks the pool's key, writes the upstream request, only after every gate passed
        Translation(runtime),  # answers of translated calls
        UpstreamErrors(runtime.settings.upstream_timeout, runtime),
        Reliability(runtime),  # response: retries and fallbacks of a failed first attempt (before metering)
        Metering(runtime),
        Recording(),  # sees every call metered
        Observability(runtime),  # metrics, spans and budget alerts from each record
        client_timeouts,  # after the answer stages: a retry in the response hook is not an idle connection
        InFlightCalls(runtime),  # last: a call ends once it is recorded
    ]


def build_addons(runtime: Runtime | None = None) -> list[object]:
    """What the entry script hands mitmproxy: the addons above, dispatched as one (see addons/chain.py)."""
    return [TokenSenseChain(tokensense_addons(runtime))]
