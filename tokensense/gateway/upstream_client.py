"""One upstream attempt made with httpx, up to the first byte: for the retries and fallbacks of a call.

The gateway's first attempt goes through mitmproxy's own upstream connection. A
retry or a fallback cannot (mitmproxy sends one upstream request per flow), so it is
made here: `send` returns as soon as the status and headers are in, with the
answer's body still unread (`AttemptOutcome.answer` is the open `httpx.Response`),
so a stream can be passed on as it arrives; `discard` closes an answer that is not
used. The first-byte timeout bounds the wait for the headers; the total timeout is
the caller's to apply while it reads the body (`deadline`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from tokensense.gateway.attempts import AttemptOutcome
from tokensense.gateway.retry import UpstreamTimeouts

# httpx logs every request's URL at INFO; the gateway's log says what each attempt did instead.
logging.getLogger("httpx").setLevel(logging.WARNING)

ERROR_BODY_LIMIT = 64 * 1024  # a failed attempt's body is read (for its message) up to this much


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class OpenAnswer:
    response: httpx.Response
    deadline: float | None  # time.monotonic() by which the whole answer must be in (the total timeout)
    body: bytes | None = None  # read already (failed attempts)


class UpstreamClient:
    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self.client = client or httpx.AsyncClient(http2=False, follow_redirects=False,
                                                  limits=httpx.Limits(max_keepalive_connections=50))

    async def send(self, request: UpstreamRequest, timeouts: UpstreamTimeouts) -> AttemptOutcome:
        """Send the request; return once its answer's headers are in (or it failed to answer)."""
        started = time.monotonic()
        deadline = started + timeouts.total if timeouts.total else None
        first_byte = timeouts.first_byte
        if deadline is not None:
            first_byte = min(first_byte or timeouts.total, timeouts.total)  # type: ignore[type-var]
        built = self.client.build_request(request.method, request.url, headers=dict(request.headers),
                                          content=request.body,
                                          timeout=httpx.Timeout(None, connect=first_byte, read=first_byte))
        try:
            response = await self.client.send(built, stream=True)
        except httpx.TimeoutException:
            return AttemptOutcome(None, {}, f"no answer within {first_byte:g} seconds")
        except httpx.TransportError as e:
            return AttemptOutcome(None, {}, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        answer = OpenAnswer(response, deadline)
        headers = {k.lower(): v for k, v in response.headers.items()}
        if response.status_code < 400:
            return AttemptOutcome(response.status_code, headers, answer=answer)
        # A failed attempt: read its (small) error body now, for the message and for the client if it is the last.
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= ERROR_BODY_LIMIT:
                    break
        except httpx.HTTPError:
            pass
        finally:
            await response.aclose()
        answer.body = bytes(body)
        return AttemptOutcome(response.status_code, headers, error_message(answer.body), answer=answer)

    async def discard(self, outcome: AttemptOutcome) -> None:
        answer = outcome.answer
        if isinstance(answer, OpenAnswer) and not answer.response.is_closed:
            await answer.response.aclose()

    async def close(self) -> None:
        await self.client.aclose()


def error_message(body: bytes) -> str | None:
    """The provider's error message from an OpenAI, Anthropic or Google error body (best effort)."""
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace") or None
    if isinstance(data, list) and data:  # Gemini streams errors as a one-element array
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"][:300]
    return None
