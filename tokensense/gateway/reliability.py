"""Retries and fallbacks of a gateway call, from its native first attempt to the answer the client gets.

The first attempt of every call goes through mitmproxy as before (a stream passes
live, event by event). This module is what the stages call around it:

- `prepare_first_attempt` (forward stage): takes the `x-tokensense-fallbacks` header
  off the request, picks the provider key of the first attempt from the provider's
  pool, and keeps the client's body for fallbacks. A resting key (cooling, circuit
  open) is still the first attempt's key when nothing else can serve the call; when
  the call has fallbacks and no key of the pool is usable (or every key is taken
  out), the call's plan is run at once with httpx.
- `after_answer` (response hook) and `after_no_answer` (mitmproxy found no answer:
  connection refused or reset, no first byte in time): report the key's outcome to
  the pool and, when the answer is retryable and nothing has gone to the client yet,
  run the rest of the plan (`tokensense.gateway.attempts.run_attempts`) with httpx:
  retries of the same model, other keys of the pool, then the fallbacks, each one
  translated for its provider, checked against the key's policy and reserving its own
  budget. The answer of the attempt that succeeded (or of the last one) replaces the
  flow's response, in the client's format; a streamed answer is read whole first.
- Every attempt is a usage record with the call's request id and its `attempt`
  number: this module writes the failed ones, the metering stage the last one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from mitmproxy import http

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import GatewayError, error_bytes
from tokensense.core.usage import TokenUsage
from tokensense.gateway.attempts import Attempt, AttemptOutcome, AttemptsResult, MadeAttempt, run_attempts
from tokensense.gateway.call import CallContext
from tokensense.gateway.flowmeta import get_call
from tokensense.gateway.key_pool import outcome_for
from tokensense.gateway.retry import (
    ATTEMPTS_HEADER,
    FALLBACKS_HEADER,
    KEY_REFUSED_STATUSES,
    RETRYABLE_STATUSES,
    SERVED_BY_HEADER,
    Candidate,
    UpstreamTimeouts,
    fallback_models,
    parse_fallbacks_header,
    parse_retry_after,
    plan_candidates,
    timeouts_for,
)
from tokensense.gateway.routing import join_url
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stages.parse import ClientRequest, Parsed, parse_call, reading_of, resolve
from tokensense.gateway.stages.police import Policed, Refused, police, release
from tokensense.gateway.stages.settle import FailedAttempt, settle_failed
from tokensense.gateway.stream import PassthroughStream
from tokensense.gateway.upstream_client import OpenAnswer, UpstreamRequest, error_message
from tokensense.providers import Provider, Translator, get_provider
from tokensense.providers.chat_stream import TranslatingStream

log = logging.getLogger(__name__)

ATTEMPTS = "tokensense.attempts"  # flow.metadata: the AttemptsResult of a call that was retried or fell back
_MAY_RETRY = RETRYABLE_STATUSES | KEY_REFUSED_STATUSES
# Headers of the forwarded request that do not go into an attempt made with httpx (it sets its own).
_REQUEST_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
                                  "upgrade", "proxy-connection", "proxy-authorization", "accept-encoding",
                                  FALLBACKS_HEADER})
# Headers of an upstream answer that describe its transfer, not the answer handed to the client.
_RESPONSE_HOP_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding", "connection",
                                   "keep-alive"})
_COMPACT = (",", ":")
_NATIVE = object()  # the answer handle of the native first attempt (the flow's own response)


# --- the first attempt ----------------------------------------------------------------------


def take_fallbacks_header(call: CallContext, request: http.Request) -> None:
    """Remove `x-tokensense-fallbacks` from the request (it is not forwarded) and keep its models; 400 if malformed."""
    if FALLBACKS_HEADER in request.headers:
        values = request.headers.get_all(FALLBACKS_HEADER)
        del request.headers[FALLBACKS_HEADER]
        call.fallbacks = tuple(parse_fallbacks_header(",".join(values)))


async def prepare_first_attempt(runtime: Runtime, flow: http.HTTPFlow, call: CallContext) -> bool:
    """Pick the first attempt's provider key from the pool (before the forward stage writes the request).

    A resting key (cooling, circuit open) is passed over only when another key of the pool
    can serve, or when the call has fallbacks; otherwise it is the first attempt's key.
    False when the call was answered here instead: no key of the pool is usable now and the
    call has fallbacks (or every key is taken out), so the call's plan was run with httpx.
    """
    pending = call.pending
    if runtime.pools is None or runtime.keys is None or call.provider is None or pending is None:
        return True
    # A pool whose keys all rest still gives one unless a fallback may take the call (breakers only steer).
    pick = await runtime.pools.pick(call.provider.name, runtime.keys.credentials(call.provider.name),
                                    others_can_serve=_may_fall_back(runtime, call))
    if pick.key is not None:
        if pick.resting:
            log.info("request %s: every %s key rests; key %s is tried, the call has no fallback", call.request_id,
                     call.provider.name, pick.key.name)
        api_key = pick.key.api_key or ""
        if call.provider.exchanges_key:  # a token for this key (the provider caches them; fetched off the loop)
            api_key = await call.provider.resolve_api_key(api_key)
        pending.base_url, pending.api_key = pick.key.base_url, api_key
        call.provider_key = pick.key.name
        return True
    if not _retried(call):
        return True  # every key is out: the key the route chose goes; the provider's answer says the rest
    # Every key rests and a fallback may serve (or every key is out): the plan, with httpx.
    await _run_plan(runtime, flow, call, None)
    call.forwarded = True  # answered by the provider(s) through httpx
    return False


def _retried(call: CallContext) -> bool:
    """Whether the call's route is one the gateway retries and falls back on (a whole JSON answer it can replace;
    media calls are priced by their own stage, the cloud platforms' paths name their provider: not retried)."""
    return call.route is not None and call.route.retried


def _may_fall_back(runtime: Runtime, call: CallContext) -> bool:
    """Whether the call names fallbacks (header or `[fallbacks]`) that may serve it if its own provider cannot."""
    if not _retried(call) or call.model is None:
        return False
    first = _first_candidate(call)
    return bool(fallback_models(runtime.config, first.requested, first.model, call.fallbacks))


def _eligible(call: CallContext | None, flow: http.HTTPFlow) -> bool:
    return (call is not None and call.forwarded and not call.intercepted and call.provider is not None
            and call.provider_key is not None and ATTEMPTS not in flow.metadata)


def first_attempt_headers(flow: http.HTTPFlow) -> None:
    """`x-tokensense-attempts: 1` and `x-tokensense-served-by` on an answer of the native first attempt."""
    call = get_call(flow)
    response = flow.response
    if response is None or not _eligible(call, flow):
        return
    assert call is not None and call.provider is not None
    response.headers[ATTEMPTS_HEADER] = "1"
    response.headers[SERVED_BY_HEADER] = f"{call.provider.name}/{call.model}"


async def after_answer(runtime: Runtime, flow: http.HTTPFlow, call: CallContext) -> None:
    """The native first attempt's answer is complete (response hook): learn from it, retry if it failed retryably."""
    response = flow.response
    if response is None or not _eligible(call, flow) or runtime.pools is None:
        return
    status = response.status_code
    headers, error = {}, call.error
    if status >= 400:
        headers = {k.lower(): v for k, v in response.headers.items()}
        if error is None and not response.stream:
            error = error_message(response.get_content(strict=False) or b"")
    outcome = AttemptOutcome(status, headers, error, answer=_NATIVE)
    made = await _report_first(runtime, call, outcome)
    # A streamed answer has gone to the client as it came: nothing can replace it.
    if status not in _MAY_RETRY or response.stream or not _retried(call):
        return
    await _run_plan(runtime, flow, call, made)


async def after_no_answer(runtime: Runtime, flow: http.HTTPFlow, call: CallContext, message: str) -> None:
    """mitmproxy got no answer (connection refused or reset, timeout before the first byte): retry if the plan
    allows; when it did, the flow has a response (the client gets it instead of the error)."""
    if flow.response is not None or not _eligible(call, flow) or runtime.pools is None:
        return
    if call.timed_out:
        message = f"no answer within {call.timeout or 0:g} seconds"
    made = await _report_first(runtime, call, AttemptOutcome(None, {}, message, answer=_NATIVE))
    if _retried(call):
        await _run_plan(runtime, flow, call, made)


async def _report_first(runtime: Runtime, call: CallContext, outcome: AttemptOutcome) -> MadeAttempt:
    assert runtime.pools is not None and runtime.keys is not None and call.provider is not None
    name = call.provider_key or ""
    retry_after = parse_retry_after(outcome.headers) if outcome.status is not None else None
    state = await runtime.pools.report(call.provider.name, name, outcome_for(outcome.status), retry_after=retry_after,
                                       reason=f"{outcome.status}: {outcome.error or 'refused'}"[:300])
    key = next((k for k in runtime.keys.credentials(call.provider.name) if k.name == name), None)
    return MadeAttempt(key if key is not None else _NamedKey(name), outcome, state)


@dataclass(frozen=True, slots=True)
class _NamedKey:
    name: str
    disabled: bool = False


# --- the plan ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Sent:
    """One attempt made with httpx, with what the records and the final answer need."""

    candidate: Candidate
    started: float
    headers_at: float | None
    outcome: AttemptOutcome
    body: bytes = b""
    timed_out: bool = False


@dataclass(slots=True)
class _Run:
    runtime: Runtime
    flow: http.HTTPFlow
    call: CallContext
    routes: dict[tuple[str, str], Parsed] = field(default_factory=dict)  # the fallbacks', by (provider, model)
    sent: list[_Sent] = field(default_factory=list)
    holds: list[Policed] = field(default_factory=list)  # what the fallbacks' police stage reserved
    client_body: dict[str, Any] | None = None


def _first_candidate(call: CallContext) -> Candidate:
    assert call.provider is not None and call.model is not None
    return Candidate(call.requested_model or call.model, call.model, call.provider.name)


def _plan(run: _Run) -> list[Candidate]:
    call, runtime = run.call, run.runtime
    first = _first_candidate(call)
    names = fallback_models(runtime.config, first.requested, first.model, call.fallbacks)
    if not names:
        return [first]
    if call.parsed is None or call.parsed.request is None:
        return [first]  # not a call the parse stage routed: nothing to fall back with
    run.client_body = call.parsed.request.body  # parsed once, by the first attempt's parse stage
    plan, skipped = plan_candidates(first, names, lambda name: _resolve(run, name))
    for s in skipped:
        log.info("request %s: fallback %s skipped: %s", call.request_id, s.requested, s.reason)
    return plan


def _resolve(run: _Run, name: str) -> Candidate | str:
    """The fallback `name` as a candidate with its upstream route, or why it cannot be used."""
    call, runtime = run.call, run.runtime
    try:
        adapter, model = resolve(name, runtime.prices)
    except GatewayError as e:
        return e.message
    endpoint = call.route_endpoint
    if endpoint not in adapter.native and (endpoint is not Endpoint.CHAT or adapter.chat_translator() is None):
        return f"{adapter.display_name} does not serve the `{endpoint.value}` endpoint of this call"
    assert runtime.keys is not None
    if not any(adapter.has_credentials(c.api_key) for c in runtime.keys.credentials(adapter.name)):
        return f"no {adapter.display_name} key is configured"
    candidate = Candidate(name, model, adapter.name)
    # The same parse as the first attempt's, for this model: the client's body, natively or translated.
    request = ClientRequest(run.client_body or {}, name, call.stream)
    try:
        run.routes[(adapter.name, model)] = parse_call(reading_of(call, fallback=True), request, adapter, model)
    except GatewayError as e:
        return f"the request cannot be sent to {adapter.display_name}: {e.message}"
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as e:
        return f"the request cannot be made for {adapter.display_name} ({type(e).__name__})"
    return candidate


async def _police(run: _Run, candidate: Candidate) -> str | None:
    """A fallback goes through the same police stage as a first attempt; None: it may be tried."""
    call, runtime = run.call, run.runtime
    key = call.key
    assert key is not None
    parsed = run.routes[(candidate.provider, candidate.model)]
    try:
        # A fallback is part of the call the key's rate limits counted already; its budget is its own.
        policed = await police(call, parsed.target, prices=runtime.prices, counters=runtime.counters,
                               spent_since=runtime.spent_since, count_request=False, typical=runtime.typical)
    except Refused as refused:
        budget = refused.budget
        if budget is not None:
            return (f"the key `{key.name}`'s budget of ${key.budget_usd:g} cannot cover it (up to "
                    f"${refused.amount or 0:.6f}; ${budget.spent:.6f} spent, ${budget.reserved:.6f} reserved)")
        return refused.reason
    run.holds.append(policed)
    return None


# --- attempts made with httpx ------------------------------------------------------------------


def _forwarded_headers(request: http.Request, drop: Iterable[str]) -> dict[str, str]:
    dropped = {*_REQUEST_HOP_HEADERS, *(name.lower() for name in drop)}
    return {name: value for name, value in request.headers.items() if name.lower() not in dropped}


def _first_auth_names(run: _Run) -> list[str]:
    """The headers that carried the first attempt's credential (taken off before another key or provider)."""
    first, request = run.call.provider, run.flow.request
    assert first is not None
    names = list(first.auth_headers("x"))
    if first.signs_requests:
        api_key = run.call.pending.api_key if run.call.pending is not None else ""
        try:
            names += list(first.upstream_auth(api_key, method=request.method, url=request.url,
                                              headers=request.headers, body=request.raw_content or b""))
        except Exception:  # signed once already; if not now, its bearer form's names are dropped at least
            log.warning("request %s: could not list the signature headers to replace", run.call.request_id)
    return names


def _request_for(run: _Run, candidate: Candidate, credential: Any) -> tuple[UpstreamRequest, Provider]:
    """The attempt's request without its credential (`_with_auth` adds it), and the provider it goes to."""
    call, request = run.call, run.flow.request
    first = call.provider
    assert first is not None
    auth_names = _first_auth_names(run)
    route = run.routes.get((candidate.provider, candidate.model))
    if route is None:  # the client's own model: the request mitmproxy sent, with this key
        if candidate.provider != first.name:
            raise RuntimeError(f"no route for the fallback {candidate.served_by}")
        headers = _forwarded_headers(request, auth_names)
        path = call.pending.upstream.path if call.pending is not None else request.path.partition("?")[0]
        query = request.path.partition("?")[2]
        url = join_url(credential.base_url, path, query)
        return UpstreamRequest(request.method, url, headers, request.raw_content or b""), first
    adapter = route.provider
    body = route.body if route.body is not None else json.dumps(route.sent_body, separators=_COMPACT).encode()
    headers = _forwarded_headers(request, [*auth_names, *first.default_headers(), "content-type"])
    if route.drop_header_prefixes:  # another format than the client's: its SDK's headers mean nothing there
        headers = {k: v for k, v in headers.items() if not k.lower().startswith(route.drop_header_prefixes)}
    headers["content-type"] = "application/json"
    for name, value in adapter.default_headers().items():
        headers.setdefault(name, value)
    if route.upstream.query is not None:
        query = urlencode(route.upstream.query)
    else:
        query = request.path.partition("?")[2]
    return UpstreamRequest("POST", join_url(credential.base_url, route.upstream.path, query), headers, body), adapter


async def _with_auth(request: UpstreamRequest, adapter: Provider, api_key: str) -> UpstreamRequest:
    """The request with the provider's credential: a key's headers, an exchanged token, or a signature."""
    if adapter.exchanges_key:
        api_key = await adapter.resolve_api_key(api_key)
    if adapter.signs_requests:  # over the final URL, headers and body
        auth = adapter.upstream_auth(api_key, method=request.method, url=request.url, headers=request.headers,
                                     body=request.body)
    else:
        auth = adapter.auth_headers(api_key)
    lowered = {name.lower() for name in auth}
    headers = {k: v for k, v in request.headers.items() if k.lower() not in lowered}
    return replace(request, headers={**headers, **auth})


async def _send(run: _Run, candidate: Candidate, credential: Any, timeouts: UpstreamTimeouts) -> AttemptOutcome:
    """One attempt with httpx; a successful answer is read whole (nothing of it has gone to the client)."""
    client = run.runtime.upstream_client()
    started = time.perf_counter()
    request, adapter = _request_for(run, candidate, credential)
    try:
        request = await _with_auth(request, adapter, credential.api_key or "")
    except Exception as e:  # no token, no signature: nothing went upstream
        log.warning("request %s: could not authenticate an attempt to %s (%s)", run.call.request_id,
                    adapter.display_name, type(e).__name__)
        outcome = AttemptOutcome(None, {}, f"TokenSense could not authenticate to {adapter.display_name}")
        outcome.answer = len(run.sent)
        run.sent.append(_Sent(candidate, started, None, outcome))
        return outcome
    outcome = await client.send(request, timeouts)
    sent = _Sent(candidate, started, time.perf_counter() if outcome.status is not None else None, outcome,
                 timed_out=outcome.status is None and "within" in (outcome.error or ""))
    answer = outcome.answer
    if isinstance(answer, OpenAnswer):
        if outcome.ok:
            try:
                sent.body = await _read_whole(answer)
            except Exception as e:  # broke off or too slow: nothing went to the client, so it may be retried
                await answer.response.aclose()
                timed_out = isinstance(e, TimeoutError)
                what = f"the answer did not complete within {timeouts.total:g} seconds" if timed_out else \
                    f"the answer broke off ({type(e).__name__})"
                # Too slow after its headers is not the key failing: the pools hear the headers' status.
                sent.outcome = outcome = AttemptOutcome(None, {}, what,
                                                        header_status=outcome.status if timed_out else None)
                sent.timed_out = timed_out
        else:
            sent.body = answer.body or b""
    outcome.answer = len(run.sent)
    run.sent.append(sent)
    return outcome


async def _read_whole(answer: OpenAnswer) -> bytes:
    body = bytearray()
    remaining = answer.deadline - time.monotonic() if answer.deadline is not None else None
    async with asyncio.timeout(remaining):
        async for chunk in answer.response.aiter_bytes():
            body += chunk
    await answer.response.aclose()
    return bytes(body)


# --- running the plan and answering ------------------------------------------------------------


async def _run_plan(runtime: Runtime, flow: http.HTTPFlow, call: CallContext, made: MadeAttempt | None) -> None:
    assert runtime.pools is not None and runtime.keys is not None
    run = _Run(runtime, flow, call)
    plan = _plan(run)
    routing = runtime.config.routing
    keys = runtime.keys

    async def send(candidate: Candidate, credential: Any, timeouts: UpstreamTimeouts) -> AttemptOutcome:
        return await _send(run, candidate, credential, timeouts)

    async def police_fallback(candidate: Candidate) -> str | None:
        return await _police(run, candidate)

    result = await run_attempts(
        plan, pools=runtime.pools, routing=routing, credentials=keys.credentials, send=send, police=police_fallback,
        timeouts=lambda c: timeouts_for(routing, c.provider, c.model,
                                        default_first_byte=runtime.settings.upstream_timeout),
        request_id=call.request_id, first=made)
    if run.holds:  # the call's own record settles its first reservation; the fallbacks' are given back
        def release_holds(record: Any) -> None:
            for held in run.holds:
                release(runtime.counters, call, held)

        call.on_record.append(release_holds)
    if made is not None and result.outcome.answer is _NATIVE:
        return  # nothing else was tried, or nothing better came: the first answer stands
    flow.metadata[ATTEMPTS] = result
    for number, attempt in enumerate(result.attempts[:-1], start=1):
        settle_failed(runtime, call, _failed(run, number, attempt, made))
    call.attempt = max(1, len(result.attempts))
    _answer(run, result)


def _failed(run: _Run, number: int, attempt: Attempt, made: MadeAttempt | None) -> FailedAttempt:
    """What the record of a failed attempt says: its provider, model, status and timing."""
    call = run.call
    if number == 1 and made is not None:  # the native first attempt
        started, first_byte, timed_out = call.started, call.first_byte, call.timed_out
        error = call.error or attempt.error
    else:
        sent = run.sent[number - (2 if made is not None else 1)]
        started, first_byte, timed_out, error = sent.started, sent.headers_at, sent.timed_out, attempt.error
    status = attempt.status if attempt.status is not None else (504 if timed_out else 502)
    return FailedAttempt(number, get_provider(attempt.candidate.provider), attempt.candidate.model, status, error,
                         started, first_byte)


def _answer(run: _Run, result: AttemptsResult) -> None:
    """Replace the flow's response with the final attempt's answer, in the client's format."""
    call, flow = run.call, run.flow
    outcome = result.outcome
    old = flow.response
    kept = [(k, v) for k, v in (old.headers.items() if old is not None else ()) if k.lower().startswith("x-ratelimit-")]
    candidate = result.served_by or _first_candidate(call)
    adapter = get_provider(candidate.provider)
    assert adapter is not None
    route = run.routes.get((candidate.provider, candidate.model))
    translator = route.translator if route is not None else call.translator
    sent = run.sent[outcome.answer] if isinstance(outcome.answer, int) else None
    call.provider, call.model, call.translator = adapter, candidate.model, None
    call.usage, call.stream_usage, call.timed_out = None, None, False
    call.first_byte = sent.headers_at if sent is not None else call.first_byte
    if outcome.status is None or sent is None:  # no answer at all (or no key): the gateway's own error
        status = outcome.status or (504 if sent is not None and sent.timed_out else 502)
        message = outcome.error or "no answer"
        provider_text = f"TokenSense could not get an answer from {adapter.display_name}: {message}"
        call.error = provider_text[:300]
        code = "upstream_timeout" if status == 504 else "rate_limit_exceeded" if status == 429 else "upstream_error"
        response = http.Response.make(status, error_bytes(call.fmt, status, provider_text, code=code),
                                      {"content-type": "application/json", **dict(outcome.headers)})
    else:
        response = _provider_answer(call, adapter, translator, route, outcome, sent, candidate)
    for name, value in kept:
        response.headers[name] = value
    for name, value in result.headers().items():
        response.headers[name] = value
    flow.response = response


def _provider_answer(call: CallContext, adapter: Provider, translator: Translator | None, route: Parsed | None,
                     outcome: AttemptOutcome, sent: _Sent, candidate: Candidate) -> http.Response:
    status = outcome.status
    assert status is not None
    headers = [(k, v) for k, v in outcome.headers.items() if k.lower() not in _RESPONSE_HOP_HEADERS]
    body = sent.body
    is_stream = outcome.headers.get("content-type", "").startswith("text/event-stream")
    call.error = None if outcome.ok else outcome.error
    if translator is not None:
        try:
            body, content_type = _translated(call, adapter, translator, status, body, is_stream, candidate)
        except Exception as e:  # an answer the translation cannot read: never the raw provider body
            log.warning("request %s: %s answer could not be translated (%s)", call.request_id,
                        adapter.display_name, type(e).__name__)
            message = f"{adapter.display_name} answered in a shape TokenSense could not translate."
            call.error = message
            return http.Response.make(502, error_bytes(call.fmt, 502, message, code="upstream_error"),
                                      {"content-type": "application/json"})
        headers = [(k, v) for k, v in headers if k.lower() != "content-type"] + [("content-type", content_type)]
    elif is_stream and outcome.ok:
        collector = adapter.stream_usage()
        drop = route.drops_usage_chunk if route is not None else call.usage_chunk_added
        body = _run_stream(PassthroughStream(call, collector, adapter.usage_markers(), drop_usage_chunk=drop), body)
        call.usage = collector.result()
        call.stream = True
    response = http.Response.make(status, b"", [(k.encode(), v.encode()) for k, v in headers])
    response.content = body
    return response


def _translated(call: CallContext, adapter: Provider, translator: Translator, status: int, body: bytes,
                is_stream: bool, candidate: Candidate) -> tuple[bytes, str]:
    model = candidate.requested
    if 200 <= status < 300 and is_stream:
        seen: dict = {}
        stream = TranslatingStream(translator.stream(model=model, include_usage=call.client_wants_usage),
                                   on_first=call.mark_first_token, on_end=seen.update)
        out = _run_stream(stream, body)
        call.usage = adapter.usage_from_object(seen) if seen else TokenUsage()
        call.stream = True
        return out, "text/event-stream"
    if 200 <= status < 300:
        provider_answer = json.loads(body)
        call.usage = adapter.usage_from_body(provider_answer) or TokenUsage()
        return json.dumps(translator.answer(provider_answer, model=model)).encode(), "application/json"
    translated = translator.error(status, body)
    call.error = str(translated.get("error", {}).get("message", ""))[:300] or call.error
    call.usage = TokenUsage()
    return json.dumps(translated).encode(), "application/json"


def _run_stream(stream: Any, body: bytes) -> bytes:
    """A whole SSE body through a `flow.response.stream` callable (as if it came in one piece)."""
    out = bytearray()
    for part in (stream(body) if body else b"", stream(b"")):
        out += part if isinstance(part, bytes | bytearray) else b"".join(part)
    return bytes(out)
