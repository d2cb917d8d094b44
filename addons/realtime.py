"""Realtime sessions over WebSocket (OpenAI Realtime, Gemini Live): relayed frame by frame, metered per response.

The handshake (a path a provider's `SocketProtocol` claims, with `Upgrade:
websocket`) is admitted here, in `requestheaders`, before the other stages: the
TokenSense key (a header, `?key=`, or the browsers' key subprotocol) leaves the
request, the key, the model's access, the rate and the budget are checked (the
police stage), and only then is the request pointed at the provider with the
provider's key; a refusal is an HTTP answer in the provider's error shape and
nothing is opened upstream. The rest of the pipeline leaves the flow alone
(`CALL` is None): the session's books are kept by tokensense/gateway/sessions.py.

mitmproxy then relays the frames both ways, in order, unchanged. Each client
frame that asks for a response is policed before it goes on; a refused one is
dropped and the client gets the protocol's error event (the socket stays open),
or a close where the protocol has no error event. Each response's end becomes
one usage record. Sessions are bounded: client frames by TOKENSENSE_MAX_BODY_MB,
silence by TOKENSENSE_REALTIME_IDLE_TIMEOUT, a shutdown by its grace.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import ctx, http
from mitmproxy.websocket import WebSocketMessage

from addons.admit import admitted_key
from addons.common import (
    answer_error,
    apply_upstream,
    asks_for_websocket,
    intercepting,
    require_credential,
    strip_client_keys,
)
from addons.mitmproxy_compat import close_websocket
from tokensense.core.errors import GatewayError
from tokensense.gateway import sessions
from tokensense.gateway.auth import client_key
from tokensense.gateway.call import CallContext, Record
from tokensense.gateway.flowmeta import CALL, WS_FRAME_LIMIT, refuse_body
from tokensense.gateway.forward import PendingUpstream
from tokensense.gateway.guards import take_max_cost_header
from tokensense.gateway.intercept import KEY_HEADER
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.reliability import prepare_first_attempt
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stages.police import Refused
from tokensense.gateway.stages.settle import settle
from tokensense.metering.attribution import attribution
from tokensense.providers import ProviderAdapter, socket_protocol
from tokensense.providers.base import Upstream
from tokensense.providers.passthrough import prefixed_socket
from tokensense.providers.sockets import CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG, SocketProtocol
from tokensense.storage.models import new_id

log = logging.getLogger(__name__)

_MB = 1024 * 1024
MISSING_KEY = "No TokenSense key: send it as `Authorization: Bearer tsk_...` (or the key subprotocol, ?key=)."
INTERCEPT_MISSING_KEY = (f"This TokenSense proxy requires a TokenSense key: send it in the `{KEY_HEADER}` header "
                         "(your provider key stays in its usual header).")
# Set by addons/intercept.py on a provider host's WebSocket handshake in intercept mode: the host's provider.
INTERCEPTED_SOCKET = "tokensense.intercepted_socket"
SHUTTING_DOWN = "TokenSense is shutting down; connect again."


def intercepted_protocol(adapter: ProviderAdapter, path: str) -> SocketProtocol | None:
    """The realtime protocol of `adapter` that claims `path` (a socket to the provider's own host)."""
    return next((protocol for protocol in adapter.socket_protocols() if protocol.matches(path)), None)


def _take_subprotocol_key(req: http.Request, protocol: SocketProtocol) -> str | None:
    """The key a browser put in `Sec-WebSocket-Protocol` (PREFIX + key), taken out of the header: the provider's
    key goes in the provider's auth header, never in a subprotocol the server might echo back to the client."""
    prefix = protocol.key_subprotocol
    header = req.headers.get("sec-websocket-protocol")
    if not prefix or not header:
        return None
    offered = [p.strip() for p in header.split(",") if p.strip()]
    key = next((p[len(prefix):] for p in offered if p.startswith(prefix)), None)
    if key is not None:
        kept = [p for p in offered if not p.startswith(prefix)]
        if kept:
            req.headers["sec-websocket-protocol"] = ", ".join(kept)
        else:
            del req.headers["sec-websocket-protocol"]
    return key


class RealtimeSockets:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._opening: dict[str, sessions.Session] = {}  # handshakes sent upstream, by flow id
        self._open: dict[str, tuple[http.HTTPFlow, sessions.Session]] = {}
        self._sweeper: asyncio.Task | None = None
        runtime.inflight.on_drain.append(self._drain)

    # --- the handshake -----------------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or CALL in flow.metadata:
            return
        req = flow.request
        if not asks_for_websocket(req):
            return
        path = req.path.partition("?")[0]
        intercepted = intercepting(flow.client_conn.proxy_mode)
        prefix: ProviderAdapter | None = None
        if intercepted:
            # A provider host's socket in intercept mode (addons/intercept.py left it here): the client's own
            # destination and provider key; the TokenSense key, if any, in its header.
            adapter: ProviderAdapter | None = flow.metadata.get(INTERCEPTED_SOCKET)
            protocol_found = intercepted_protocol(adapter, path) if adapter is not None else None
            if adapter is None or protocol_found is None:
                return
            owner, protocol = adapter, protocol_found
            presented = req.headers.pop(KEY_HEADER, None)
        else:
            found = socket_protocol(path)
            if found is None and (prefixed := prefixed_socket(path)) is not None:  # `/openai/v1/realtime`: pinned
                owner, protocol, path = prefixed
                prefix = owner
            elif found is None:
                return
            else:
                owner, protocol = found
            presented = client_key(req.headers, req.query if b"key=" in req.data.path else {})
            subprotocol_key = _take_subprotocol_key(req, protocol)
            presented = presented or subprotocol_key
            strip_client_keys(req)
        flow.metadata[CALL] = None  # the other stages leave this flow alone: its books are kept here
        request_id = new_id()
        try:
            if self.runtime.inflight.draining:
                raise GatewayError(503, SHUTTING_DOWN, code="shutting_down")
            key: KeyInfo | None = None
            if not intercepted or presented is not None or ctx.options.tokensense_intercept_require_key:
                key = await admitted_key(self.runtime, presented, missing=INTERCEPT_MISSING_KEY if intercepted
                                         else MISSING_KEY, where=f" in `{KEY_HEADER}`" if intercepted else "")
            handshake = protocol.handshake(path, req.query)
            provider = sessions.serving_provider(owner, protocol, handshake.model)
            if prefix is not None and provider is not prefix:
                raise GatewayError(400, f"The model `{handshake.model}` is served by {provider.display_name}, not by "
                                   f"the provider of the prefix /{prefix.name}/: call it without the prefix or under "
                                   "its own.", code="provider_mismatch", param="model")
            who = attribution(req.headers)
            if not who.get("project") and key is not None:
                who["project"] = key.project
            if not who.get("execution_id"):
                who["execution_id"] = f"session-{request_id}"  # a session is one execution: its responses grouped
            session = sessions.Session(key=key, provider=provider, protocol=protocol, model=handshake.model,
                                       attribution=who, request_id=request_id,
                                       max_cost_usd=take_max_cost_header(req.headers))
            await sessions.police_handshake(self.runtime, session)
            credential = None if intercepted else require_credential(self.runtime, provider)
        except GatewayError as e:
            self._refuse_handshake(flow, protocol, e, request_id)
            return
        except Refused as refused:
            self._refuse_handshake(flow, protocol, refused.error, request_id, refused.headers)
            return
        if credential is None:  # intercepted: it goes where the client sent it, with the client's own key
            flow.metadata[WS_FRAME_LIMIT] = int(self.runtime.settings.max_body_mb * _MB)
            self._opening[flow.id] = session
            return
        pending = PendingUpstream(provider, credential.base_url, credential.api_key or "",
                                  Upstream(protocol.endpoint, handshake.upstream_path))
        # The provider key from its pool, as for an HTTP call's first attempt (a socket is not retried).
        opening = CallContext(protocol.endpoint, protocol.errors, method="GET", key=key, provider=provider,
                              model=session.model, pending=pending, record_state=Record.NONE)
        await prepare_first_attempt(self.runtime, flow, opening)
        apply_upstream(flow, pending)
        flow.metadata[WS_FRAME_LIMIT] = int(self.runtime.settings.max_body_mb * _MB)  # see mitmproxy_compat
        self._opening[flow.id] = session

    @staticmethod
    def _refuse_handshake(flow: http.HTTPFlow, protocol: SocketProtocol, error: GatewayError, request_id: str,
                          headers: dict[str, str] | None = None) -> None:
        answer_error(flow, protocol.errors, error, headers={"x-tokensense-request-id": request_id, **(headers or {})})
        refuse_body(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        session = self._opening.get(flow.id)
        if session is None or flow.response is None:
            return
        flow.response.headers["x-tokensense-request-id"] = session.request_id
        if flow.response.status_code != 101:
            self._opening.pop(flow.id, None)  # the provider refused the handshake: its answer passes as it is

    def error(self, flow: http.HTTPFlow) -> None:
        self._opening.pop(flow.id, None)

    # --- the session ---------------------------------------------------------------------------------

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        session = self._opening.pop(flow.id, None)
        if session is None:
            return
        self._open[flow.id] = (flow, session)
        self.runtime.open_sessions = len(self._open)
        self.runtime.inflight.started(self._marker(flow))  # a shutdown waits for it (and closes it in time)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        entry = self._open.get(flow.id)
        if entry is None or flow.websocket is None:
            return
        session = entry[1]
        messages = flow.websocket.messages
        message = messages[-1]
        if len(messages) > 1:
            del messages[:-1]  # a session runs for minutes of audio: keep only the frame in hand
        if message.injected:
            return  # the gateway's own error events
        session.last_activity = time.monotonic()
        if not message.from_client:
            try:
                named = sessions.on_server_frame(self.runtime, session,
                                                 session.protocol.server_frame(message.content, message.is_text))
                if named:  # a handshake that named no model (a WebRTC call's sideband): policed now
                    await self._police_session(flow, session, message)
            except Exception:  # the frame still reaches the client; its metering is what failed
                log.exception("realtime session: a server frame could not be metered")
            return
        try:
            await self._client_frame(flow, session, message)
        except Exception:
            # Fail closed: a client frame whose checks failed is not forwarded.
            log.exception("realtime session: a client frame could not be checked")
            message.drop()
            self._tell(flow, session, GatewayError(500, "TokenSense had an internal error and did not forward "
                                                   "the event.", code="internal_error"), None)

    async def _client_frame(self, flow: http.HTTPFlow, session: sessions.Session,
                            message: WebSocketMessage) -> None:
        protocol = session.protocol
        limit = self.runtime.settings.max_body_mb * _MB
        if len(message.content) > limit:
            message.drop()
            session.closing = True
            close_websocket(flow, CLOSE_TOO_BIG, f"A frame of {len(message.content) / _MB:.1f} MB is over the "
                            f"limit of {limit / _MB:g} MB (TOKENSENSE_MAX_BODY_MB).")
            return
        frame = protocol.client_frame(message.content, message.is_text)
        sessions.on_client_frame(session, frame)
        if frame.model is not None and frame.model == session.model and not frame.starts_response:
            # The protocol names its model in a frame (its setup): policed as the handshake would have been.
            await self._police_session(flow, session, message)
            return
        if not frame.starts_response or session.model is None:
            return
        call = sessions.new_call(session)
        try:
            if self.runtime.inflight.draining:
                raise Refused(GatewayError(503, SHUTTING_DOWN, code="shutting_down"))
            await sessions.police_response(self.runtime, session, frame, call=call)
        except Refused as refused:
            message.drop()
            self._refuse_response(flow, session, call, refused, frame.event_id)
            return
        sessions.asked(session, call, frame)

    async def _police_session(self, flow: http.HTTPFlow, session: sessions.Session,
                              message: WebSocketMessage) -> None:
        """The session's model is known only now: policed as its handshake would have been; a refusal drops the
        frame, tells the client and closes the socket (1008)."""
        try:
            await sessions.police_response(self.runtime, session, None, handshake=True)
        except Refused as refused:
            message.drop()
            data = session.protocol.error_frame(refused.error.status, refused.error.message,
                                                code=refused.error.code, event_id=None)
            if data is not None and flow.websocket is not None and flow.websocket.timestamp_end is None:
                ctx.master.commands.call("inject.websocket", flow, True, data, True)
            session.closing = True
            close_websocket(flow, CLOSE_POLICY, refused.error.message)

    def _refuse_response(self, flow: http.HTTPFlow, session: sessions.Session, call: CallContext, refused: Refused,
                         event_id: str | None) -> None:
        """The refused response's record (its status, like a refused HTTP call), and the client told."""
        error = refused.error
        call.policed = refused.held
        call.error = error.message
        settle(self.runtime, call, error.status)
        self._tell(flow, session, error, event_id)

    @staticmethod
    def _tell(flow: http.HTTPFlow, session: sessions.Session, error: GatewayError, event_id: str | None) -> None:
        """The protocol's error event to the client, or a close where the protocol has none."""
        data = session.protocol.error_frame(error.status, error.message, code=error.code, event_id=event_id)
        if data is None:
            session.closing = True
            close_websocket(flow, CLOSE_POLICY, error.message)
        elif flow.websocket is not None and flow.websocket.timestamp_end is None:
            ctx.master.commands.call("inject.websocket", flow, True, data, True)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        entry = self._open.pop(flow.id, None)
        if entry is None:
            return
        self.runtime.open_sessions = len(self._open)
        session = entry[1]
        by_client = bool(flow.websocket and flow.websocket.closed_by_client)
        try:
            sessions.end(self.runtime, session, by_client=by_client)
        finally:
            self.runtime.inflight.finished(self._marker(flow))

    @staticmethod
    def _marker(flow: http.HTTPFlow) -> str:
        return f"{flow.id}:realtime"

    # --- bounds ------------------------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Close sessions silent for longer than TOKENSENSE_REALTIME_IDLE_TIMEOUT."""
        timeout = self.runtime.settings.realtime_idle_timeout
        while self._open:
            await asyncio.sleep(min(max(timeout / 4, 0.25), 5.0))
            now = time.monotonic()
            for flow, session in list(self._open.values()):
                if now - session.last_activity > timeout and not session.closing:
                    session.closing = True
                    close_websocket(flow, CLOSE_GOING_AWAY,
                                    f"No frame for {timeout:g} s (TOKENSENSE_REALTIME_IDLE_TIMEOUT).")

    def _drain(self, grace: float) -> None:
        """A shutdown began: no new response is asked for; the sessions get a close frame before the grace ends
        (a response in progress has until then), so their last records are written before the flush."""
        if self._open:
            asyncio.get_running_loop().create_task(self._close_all(max(grace - min(1.0, grace / 4), 0.0)))

    async def _close_all(self, after: float) -> None:
        deadline = time.monotonic() + after
        while self._open and time.monotonic() < deadline:
            if all(not s.responses for _, s in self._open.values()):
                break  # nothing in progress: close now
            await asyncio.sleep(0.1)
        for flow, session in list(self._open.values()):
            session.closing = True
            close_websocket(flow, CLOSE_GOING_AWAY, "TokenSense is shutting down; connect again.")

    def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
