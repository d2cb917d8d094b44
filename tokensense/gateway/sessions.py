"""Realtime sessions over WebSocket: admitted at the handshake, each response policed before it is asked for,
one usage record per response when it ends.

A realtime session (a voice agent's socket) carries many billable responses. The
gateway relays its frames unchanged (addons/realtime.py); this module keeps the
session's books, asking the provider's `SocketProtocol` what each frame means:

- the handshake: the key, the model's access, the rate and whether the budget can
  hold one response (the same `police` as every HTTP call), before anything is
  opened upstream;
- each client frame that asks for a response: policed again, reserving that
  response's largest cost (its output cap, else the session's, else the model's
  largest output, priced as the dearer of text and audio, plus the last
  response's input, which the next one reads at least);
- each response's end: its usage becomes one record through the settle stage,
  which settles the reservation;
- the session's end: a response still in progress is recorded with what the
  provider reported of it; when it reported nothing, the response's reservation
  (its largest cost) is its cost, held as spent (`details.cut`, `details.charged`
  say why): cutting a response never makes it free.

No provider is named here: paths, events and usage are the protocol's.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from tokensense.core.usage import TokenUsage
from tokensense.gateway.call import CallContext, Record
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.policy import budget_window, estimate_cost
from tokensense.gateway.reservation import model_max_output
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stages.police import (
    BudgetHold,
    Policed,
    Target,
    police,
    police_unnamed,
    settle_counters,
)
from tokensense.gateway.stages.settle import settle
from tokensense.providers import ProviderAdapter, provider_for_model
from tokensense.providers.sockets import ClientFrame, ServerFrame, SocketProtocol

log = logging.getLogger(__name__)

TRANSPORT = "websocket"
CUT_MESSAGE = "The session closed before the response ended; the provider reported no usage for it."
CUT_PARTIAL = "The session closed before the response ended; recorded with the usage the provider reported so far."


@dataclass(slots=True)
class Response:
    """One billable response of a session: its call (record), what it holds in the counters, how far it got."""

    call: CallContext
    event_id: str | None = None  # the client frame that asked for it (a server error may name it)
    started: bool = False
    usage: TokenUsage | None = None  # the usage reported so far
    reserved_usd: float | None = None  # its largest cost, as policed (charged if it is cut before any usage)
    max_output_tokens: int | None = None  # the output cap its frame set


@dataclass(slots=True)
class Session:
    """One relayed realtime socket."""

    key: KeyInfo | None  # None: an intercepted session without a TokenSense key (metered, not policed)
    provider: ProviderAdapter
    protocol: SocketProtocol
    model: str | None
    attribution: dict[str, str | None]
    request_id: str  # the handshake's
    max_cost_usd: float | None = None
    output_cap: int | None = None  # the session's output cap per response (None: the model's largest)
    last_input: TokenUsage | None = None  # the input of the last response that ended
    responses: deque[Response] = field(default_factory=deque)  # asked for (or started), oldest first
    last_activity: float = field(default_factory=time.monotonic)
    closing: bool = False  # the gateway is closing it (idle, shutdown, a refusal, a frame too big)
    admitted: bool = False  # its handshake was policed without a model (counted as the session's request)


def serving_provider(provider: ProviderAdapter, protocol: SocketProtocol, model: str | None) -> ProviderAdapter:
    """The provider that serves `model` on this protocol: the model's own provider when it speaks the protocol
    (protocols are shared by providers of one format), else the protocol's owner."""
    owner = provider_for_model(model) if model else None
    if owner is not None and owner is not provider and protocol in owner.socket_protocols():
        return owner
    return provider


def new_call(session: Session) -> CallContext:
    """The call (and so the record) of one response of `session`."""
    call = CallContext(session.protocol.endpoint, session.protocol.errors, method="GET")
    call.key = session.key
    call.provider = session.provider
    call.model = session.model
    call.requested_model = session.model
    call.attribution = dict(session.attribution)
    call.transport = TRANSPORT
    call.stream = True
    call.max_cost_usd = session.max_cost_usd
    return call


def reservation(runtime: Runtime, session: Session, cap: int | None) -> TokenUsage:
    """The largest usage of the next response: the last response's input (the next reads at least that much)
    and its output cap, as text or as audio, whichever the model's price makes dearer."""
    output = cap or session.output_cap or model_max_output(session.model, session.provider)
    last = session.last_input or TokenUsage()
    base = TokenUsage(input_tokens=last.input_tokens, cached_input_tokens=last.cached_input_tokens,
                      units={k: v for k, v in last.units.items() if k.startswith(("input_", "cache_"))},
                      output_tokens=output)
    audio = base.model_copy(update={"units": {**base.units, "output_audio_tokens": output}})
    prices_id, model = session.provider.prices_id, session.model or ""
    if runtime.prices.token_cost(prices_id, model, audio) >= runtime.prices.token_cost(prices_id, model, base):
        return audio
    return base


async def police_handshake(runtime: Runtime, session: Session) -> None:
    """Police the handshake of `session`, before anything is opened upstream: with its model, whether a response
    would pass now; without one (the protocol names it in a later frame), what needs no model: the key's access to
    the provider, the rate, and every budget that applies not spent nor held whole. Raises `Refused`."""
    if session.key is None:
        return  # intercept mode without a TokenSense key: metered, with no key's policies to apply
    if session.model is not None:
        await police_response(runtime, session, None, handshake=True)
        return
    call = new_call(session)
    call.request_id = session.request_id
    policed = await police_unnamed(call, session.provider, counters=runtime.counters,
                                   spent_since=runtime.spent_since, budgets=runtime.budgets)
    session.admitted = True
    call.record_state = Record.NONE
    settle_counters(runtime.counters, call, policed, tokens=0, cost=0.0)


async def police_response(runtime: Runtime, session: Session, frame: ClientFrame | None, *,
                          call: CallContext | None = None, handshake: bool = False) -> CallContext:
    """Police one response of `session` (or, `handshake`, whether one would pass now): access, rate, budget.

    Returns the response's call (`call`, else a new one), holding its reservation (`call.policed`); raises
    `Refused`. At the handshake its rate entry is settled at once (no tokens); a session whose handshake was
    admitted without a model (`police_handshake`) does not count its first frame as a second request.
    """
    call = call or new_call(session)
    assert session.model is not None
    if session.key is None:
        return call  # intercept mode without a TokenSense key: nothing to police
    cap = frame.max_output_tokens if frame is not None else None
    # The handshake reserves nothing (the socket costs nothing): a spent budget, or one held whole by calls
    # in flight, refuses it; whether a response fits is asked of each response.
    target = Target(session.provider, session.model, session.model, None,
                    reservation=TokenUsage() if handshake else reservation(runtime, session, cap))
    call.policed = await police(call, target, prices=runtime.prices, counters=runtime.counters,
                                spent_since=runtime.spent_since, budgets=runtime.budgets,
                                count_request=not (handshake and session.admitted))
    if handshake:
        call.record_state = Record.NONE
        settle_counters(runtime.counters, call, call.policed, tokens=0, cost=0.0)
    return call


def unpoliced_call(session: Session) -> CallContext:
    """The call of a response the provider started by itself (voice activity detection): nothing was reserved,
    but its cost is booked in the key's budget when it settles."""
    call = new_call(session)
    key = session.key
    if key is not None and key.budget_usd is not None and session.model is not None:
        window, _, _ = budget_window(key.budget_period)
        # (Budgets on attribution learn its cost when their counters are next seeded from the records.)
        call.policed = Policed(Target(session.provider, session.model),
                               budgets=(BudgetHold(window, 0.0, key.id, f"key:{key.name}"),))
    return call


def on_client_frame(session: Session, frame: ClientFrame) -> None:
    """What a forwarded client frame changes in the session (its output cap, its model)."""
    if frame.session_max_output_tokens is not None:
        session.output_cap = frame.session_max_output_tokens
    if frame.model and session.model is None:
        session.model = frame.model


def asked(session: Session, call: CallContext, frame: ClientFrame) -> None:
    """A policed response was asked for (its frame is forwarded)."""
    hold = call.policed.budget if call.policed is not None else None
    reserved = round(hold.amount, 10) if hold is not None else None  # else priced when it is cut
    session.responses.append(Response(call, event_id=frame.event_id, reserved_usd=reserved,
                                      max_output_tokens=frame.max_output_tokens))


def on_server_frame(runtime: Runtime, session: Session, frame: ServerFrame) -> bool:
    """Book what a server frame reports: a response started, its usage, its end (one record), a refused ask.
    True when the frame named the session's model for the first time (the session is then to be policed)."""
    if frame.model is not None and session.model is None:
        session.model = frame.model
        session.provider = serving_provider(session.provider, session.protocol, frame.model)
        return True
    if frame.failed_event_id is not None:
        for response in list(session.responses):
            if response.event_id == frame.failed_event_id and not response.started:
                # The provider refused the ask (a response already in progress, ...): nothing to bill.
                session.responses.remove(response)
                response.call.record_state = Record.NONE
                settle_counters(runtime.counters, response.call, response.call.policed, tokens=0, cost=0.0)
                return False
    if not (frame.started or frame.usage is not None or frame.done):
        return False
    if frame.usage is None and not frame.started and not session.responses:
        return False  # the end of a turn nobody asked for and nothing was said in: nothing to book
    current = _current(session)
    if frame.started:
        current.started = True
        current.call.mark_first_token()
    if frame.usage is not None:
        current.usage = frame.usage
    if frame.done:
        session.responses.remove(current)
        _record(runtime, session, current, 502 if frame.status == "failed" else 200,
                error=f"The response ended with status `{frame.status}`." if frame.status == "failed" else None)
    return False


def _current(session: Session) -> Response:
    """The response a server frame is about: the oldest one started, else the oldest asked for, else a new one
    the provider started by itself."""
    for response in session.responses:
        if response.started:
            return response
    for response in session.responses:
        return response
    response = Response(unpoliced_call(session))
    session.responses.append(response)
    return response


def end(runtime: Runtime, session: Session, *, by_client: bool) -> int:
    """The session ended: each response not finished is recorded with what was reported; how many were.

    A response forwarded to the provider is billable from then on: one the provider reported no usage for costs
    its reservation (its largest cost, as policed; a response the provider started by itself: as it would have
    been), held as spent in its budgets, so that cutting a response never makes it free."""
    count = 0
    while session.responses:
        response = session.responses.popleft()
        count += 1
        cut = "client_closed" if by_client else "gateway_closed" if session.closing else "provider_closed"
        _record(runtime, session, response, 499 if by_client else 502, cut=cut)
    return count


def _charged_for_cut(runtime: Runtime, session: Session, response: Response) -> float:
    """What a response cut before any usage costs: its reservation."""
    if response.reserved_usd is not None:
        return response.reserved_usd
    if session.model is None:
        return 0.0
    usage = reservation(runtime, session, response.max_output_tokens)
    return round(estimate_cost(runtime.prices, session.provider, session.model, usage), 10)


def _record(runtime: Runtime, session: Session, response: Response, status: int, *, error: str | None = None,
            cut: str | None = None) -> None:
    call = response.call
    call.model = call.model or session.model
    call.usage = response.usage
    call.error = error
    if cut is not None:
        if response.usage is not None:
            call.error = CUT_PARTIAL
            call.details = {"cut": cut, "charged": "usage_so_far"}
        else:
            # The provider never said what it used: the response's largest cost is charged (no tokens counted).
            charged = _charged_for_cut(runtime, session, response)
            call.media_cost = charged
            call.error = CUT_MESSAGE + f" Charged its reservation (${charged:.6f}, its largest cost)."
            call.details = {"cut": cut, "charged": "reservation", "charged_usd": charged}
    if response.usage is not None:
        session.last_input = response.usage.model_copy(update={"output_tokens": 0, "reasoning_tokens": 0})
    settle(runtime, call, status)
