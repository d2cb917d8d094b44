"""Times every call, meters streams as they pass, and queues one usage record per call."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from addons.common import get_call, response_body
from tokensense.core.usage import TokenUsage
from tokensense.gateway.call import CallContext, Record
from tokensense.gateway.input_count import InputCount, count_input_tokens
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stages.settle import settle
from tokensense.gateway.stream import PassthroughStream
from tokensense.metering.usage_extract import usage_from_answer
from tokensense.providers import PROVIDERS, Provider
from tokensense.storage.models import UsageCreate

log = logging.getLogger(__name__)


def _header(headers: http.Headers, name: bytes) -> bytes | None:
    """The first value of header `name` (lower case): a scan of the raw fields, cheaper than `headers.get`."""
    for key, value in headers.fields:
        if key.lower() == name:
            return value
    return None


def _set_header(headers: http.Headers, name: bytes, value: str) -> None:
    """Set a header TokenSense adds: appended to the raw fields unless the answer already has one."""
    if _header(headers, name) is None:
        headers.fields += ((name, value.encode()),)
    else:
        headers[name.decode()] = value


def _is_event_stream(response: http.Response) -> bool:
    return (_header(response.headers, b"content-type") or b"").startswith(b"text/event-stream")


def _stream_framing(provider: Provider, content_type: bytes) -> Callable[..., Any] | None:
    """The passthrough of a non-SSE stream framing whose content type this is: the call's provider's, else any
    provider's (a framing is recognised whoever answers with it; SSE and JSON content types are nobody's)."""
    if content_type.startswith((b"text/event-stream", b"application/json")):
        return None
    framing = provider.stream_framing(content_type)
    if framing is None:
        framing = next((f for p in PROVIDERS.values() if (f := p.stream_framing(content_type)) is not None), None)
    return framing


class Metering:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._tasks: set[asyncio.Task] = set()  # input counts whose record follows

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is None:
            return
        call.first_byte = time.perf_counter()
        _set_header(flow.response.headers, b"x-tokensense-request-id", call.request_id)
        if call.provider is None:
            return
        framing = _stream_framing(call.provider, _header(flow.response.headers, b"content-type") or b"")
        if framing is not None:
            # A stream in a provider's own binary framing: passed on untouched, its usage read as frames pass.
            call.stream = True
            if not flow.response.stream:
                call.stream_usage = usage = call.provider.stream_usage()
                flow.response.stream = framing(usage, on_first=call.mark_first_token)
            return
        if not _is_event_stream(flow.response):
            return
        call.stream = True
        if flow.response.stream:  # another addon (translation) already streams it
            return
        adapter = call.provider
        call.stream_usage = adapter.stream_usage()
        flow.response.stream = PassthroughStream(
            call, call.stream_usage, adapter.usage_markers(),
            drop_usage_chunk=call.usage_chunk_added,
        )

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.request.method == "HEAD" and flow.response is not None and flow.response.raw_content:
            flow.response.raw_content = b""  # a HEAD answer has headers only; its content-length stays
        call = get_call(flow)
        if call is None or call.recorded or flow.response is None:
            return
        response = flow.response
        status = response.status_code
        body: bytes | None = None
        if call.provider is not None and call.usage is None and not response.stream and call.stream_usage is None:
            body = response_body(response)
            call.usage = self._usage_from_body(call, body)
            if 200 <= status < 300 and (call.usage is None or not call.usage.has_tokens) and \
                    self._count_then_record(flow, call, status):
                return  # recorded once the provider has counted the input (after the client has its answer)
        if status >= 400 and call.error is None:
            call.error = _error_message(body if body is not None else response_body(response))
        record = self._record(call, status)
        if record is None:
            return
        if _header(response.headers, b"x-tokensense-request-id") is None:  # answered by TokenSense itself
            response.headers.fields += ((b"x-tokensense-request-id", call.request_id.encode()),)
        if not response.stream and call.provider is not None:
            _set_header(response.headers, b"x-tokensense-cost-usd", "unpriced" if record.cost_usd is None else
                        f"{record.cost_usd:.8f}".rstrip("0").rstrip(".") or "0")

    def error(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or call.recorded:
            return
        status = call.status or (499 if flow.error and "client" in flow.error.msg.lower() else 502)
        if call.error is None and flow.error:
            call.error = flow.error.msg
        self._record(call, status)

    def _count_then_record(self, flow: http.HTTPFlow, call: CallContext, status: int) -> bool:
        """For an answer without usage whose input is billed (Gemini embeddings): count the input with the
        provider's free counting call in a task, then record. False when the call has no such count."""
        adapter = call.provider
        assert adapter is not None
        asked = adapter.input_count(call.route_endpoint, call.action, call.model or "", call.version, call.sent_body)
        if asked is None:
            return False
        # Intercept mode forwards to the host the client chose (a hostmap may point it elsewhere) with the
        # client's own key: TokenSense does not make calls of its own there, so such a call is unpriced.
        if call.intercepted or call.pending is None:
            call.usage_unknown = True
            return False
        count = InputCount.for_gateway(call.pending, *asked)
        if _header(flow.response.headers, b"x-tokensense-request-id") is None:  # type: ignore[union-attr]
            flow.response.headers.fields += ((b"x-tokensense-request-id", call.request_id.encode()),)  # type: ignore[union-attr]
        call.record_state = Record.DEFERRED  # the count's task settles it; no other hook may
        inflight_id = f"{flow.id}:input-count"
        self.runtime.inflight.started(inflight_id)  # a shutdown waits for the count and its record
        task = asyncio.get_running_loop().create_task(self._record_counted(call, status, count, inflight_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _record_counted(self, call: CallContext, status: int, count: InputCount, inflight_id: str) -> None:
        try:
            usage = await count_input_tokens(self.runtime.upstream_client(), count)
            if usage is None:
                call.usage_unknown = True
                log.warning("the input tokens of a %s %s call could not be counted: recorded unpriced",
                            call.model, call.action)
            else:
                call.usage = usage
            self._record(call, status)
        finally:
            self.runtime.inflight.finished(inflight_id)

    def _usage_from_body(self, call: CallContext, content: bytes) -> TokenUsage | None:
        adapter = call.provider
        assert adapter is not None
        return usage_from_answer(adapter, content)

    def _record(self, call: CallContext, status: int) -> UsageCreate | None:
        return settle(self.runtime, call, status)  # the one place a call's record is written


def _error_message(content: bytes | None) -> str | None:
    """A short error description from an error body, for the record (no prompt text)."""
    if not content:
        return None
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = error.get("message") or error.get("type") or error.get("status")
        return str(message)[:300] if message else None
    if isinstance(error, str):
        return error[:300]
    return None
