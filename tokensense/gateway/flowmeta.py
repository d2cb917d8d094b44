"""The keys TokenSense keeps in `flow.metadata`, in one place, and small accessors for them.

Addons talk to each other only through these (namespaced `tokensense.<what>`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mitmproxy import http

    from tokensense.gateway.call import CallContext

CALL = "tokensense.call"  # the CallContext of a flow TokenSense handles (None: a flow it leaves alone)
REFUSED = "tokensense.refused"  # answered in requestheaders: the request body is read and dropped
BODY_LIMIT = "tokensense.body_limit"  # bytes the request body may have (checked while it arrives)
RATE = "tokensense.ratelimit"  # the rate-limit decision, for the x-ratelimit-* headers
MEDIA = "tokensense.media"  # what the media response hooks need to know about the request
RECORD = "tokensense.record"  # the usage record, for saved flows
RECORDING = "tokensense.recording"  # how a saved flow was recorded
WS_TERMINATED = "tokensense.ws_terminated"  # a WebSocket the gateway answers itself (no server connection)
WS_FRAME_LIMIT = "tokensense.ws_frame_limit"  # bytes a relayed client WebSocket message may have
WS_CLOSE = "tokensense.ws_close"  # (code, reason) of a close the gateway asked for (addons/mitmproxy_compat.py)
NO_ANSWER = "tokensense.no_answer"  # why a forwarded request got no answer (before a retry replaces it)

_REQUEST_ATTR = "_tokensense_call"  # also set on the Request object, which mitmproxy's HTTP/1 layer holds


def get_call(flow: http.HTTPFlow) -> CallContext | None:
    return flow.metadata.get(CALL)


def set_call(flow: http.HTTPFlow, call: CallContext | None) -> None:
    flow.metadata[CALL] = call
    if call is not None:
        setattr(flow.request, _REQUEST_ATTR, call)


def call_of_request(request: Any) -> CallContext | None:
    return getattr(request, _REQUEST_ATTR, None)


def refuse_body(flow: http.HTTPFlow) -> None:
    flow.metadata[REFUSED] = True


def body_refused(flow: http.HTTPFlow | None) -> bool:
    return flow is not None and bool(flow.metadata.get(REFUSED))


def body_limit(flow: http.HTTPFlow | None) -> int | None:
    return flow.metadata.get(BODY_LIMIT) if flow is not None else None


def body_too_large(flow: http.HTTPFlow, limit: int) -> str:
    """The message for a body that outgrew its limit; the call is marked 413."""
    message = f"The request body is larger than {limit / (1024 * 1024):g} MB, the most TokenSense accepts here."
    call = get_call(flow)
    if call is not None:
        call.status, call.error = 413, message
    return message
