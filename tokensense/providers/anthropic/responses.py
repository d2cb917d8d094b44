"""OpenAI Responses API ⇄ Anthropic Messages: requests, answers, streams, errors.

Requests go through the chat translation (`responses_format.to_chat_request` then
`chat.chat_request_to_provider`), so every mapping decision of providers/anthropic/chat.py holds here too
(system prompt, tools, thinking budgets, sampling limits of Claude 4.7+, JSON schema output). On top:

- `instructions` and system/developer items become the system prompt; `input` items map one to one
  (message → turn, function_call → tool_use, function_call_output → tool_result); reasoning items are
  skipped (the thinking Anthropic needs back rides in the call id).
- `max_output_tokens` → `max_tokens`; `text.format` json_schema → `output_config.format`;
  `reasoning.effort` → thinking as for `reasoning_effort`; `reasoning.summary` needs nothing (Claude's
  thinking is already a summary).
- Answers: a thinking block is a reasoning item (its text as `summary_text` when a summary was asked
  for), a text block a message item, a tool_use block a function_call item whose `call_id` is the
  tool_use id carrying the turn's thinking blocks.
- stop_reason max_tokens / model_context_window_exceeded → status incomplete (max_output_tokens);
  refusal → incomplete (content_filter); everything else → completed.
- Usage: input_tokens counts cache reads and writes (`input_tokens_details.cached_tokens` and
  `cache_write_tokens` say which), reasoning tokens come from `output_tokens_details.thinking_tokens`.
- Errors keep Anthropic's error type as OpenAI `type` and `code`; a mid-stream `error` event becomes a
  Responses `error` event followed by `response.failed`.
"""

from __future__ import annotations

from tokensense.core.endpoints import Endpoint
from tokensense.providers import chat_format as oa
from tokensense.providers import responses_format as rf
from tokensense.providers.anthropic import chat
from tokensense.providers.base import Upstream
from tokensense.providers.translation import TranslationError

PROVIDER = chat.PROVIDER

_INCOMPLETE = {
    "max_tokens": "max_output_tokens",
    "model_context_window_exceeded": "max_output_tokens",
    "refusal": "content_filter",
}


def responses_request_to_provider(body: dict) -> dict:
    """An OpenAI Responses request body as an Anthropic Messages request body."""
    request = rf.to_chat_request(body, PROVIDER)
    try:
        return chat.chat_request_to_provider(request.body)
    except TranslationError as e:
        raise rf.renamed(e, request.origins) from None


def _outcome(stop_reason: str | None) -> rf.Outcome:
    reason = _INCOMPLETE.get(stop_reason or "")
    return rf.Outcome("incomplete", reason) if reason else rf.COMPLETED


def usage_to_responses(usage: dict) -> dict:
    return rf.usage_from_chat(chat.usage_to_openai(usage))


def responses_response_from_provider(resp: dict, *, model: str, request: dict | None = None,
                                     response_id: str | None = None) -> dict:
    """An Anthropic Messages answer as an OpenAI `response` object; `model` is the name the client asked for."""
    summary = rf.wants_summary(request)
    output: list[dict] = []
    thinking: list[dict] = []
    for block in resp.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            output.append(rf.message_item(block.get("text") or ""))
        elif kind == "tool_use":
            call_id = oa.encode_tool_call_id(block["id"], chat._thinking_state(thinking))
            output.append(rf.function_call_item(call_id, block["name"], oa.arguments_json(block.get("input")),
                                                request=request))
            thinking = []
        elif kind in ("thinking", "redacted_thinking"):
            thinking.append(chat._thinking_block(block))
            text = block.get("thinking") if kind == "thinking" else None
            output.append(rf.reasoning_item([text] if summary and text else []))
        # Other block types answer server tools, which this translation never sends.
    outcome = _outcome(resp.get("stop_reason"))
    return rf.response_object(
        response_id=response_id or rf.new_response_id(),
        model=model,
        request=request,
        output=rf.ended_output(output, outcome),
        usage=usage_to_responses(resp.get("usage") or {}),
        outcome=outcome,
    )


class ResponsesStreamTranslator:
    """Turns Anthropic stream events into OpenAI Responses stream events, event by event.

    Same interface as chat.ChatStreamTranslator: `feed(event) -> list[dict]`, `finish() -> list[dict]`,
    `usage` (Anthropic's usage as seen so far). `events.final` is the finished `response` object once the
    stream has ended (for storing the conversation).
    """

    def __init__(self, *, model: str, request: dict | None = None, response_id: str | None = None) -> None:
        self.events = rf.ResponseEvents(model=model, request=request, response_id=response_id)
        self.usage: dict = {}
        self._started = False
        self._ended = False
        self._stop_reason: str | None = None
        self._blocks: dict[int, str] = {}  # block index -> kind
        self._thinking: list[dict] = []
        self._thinking_text: dict[int, list[str]] = {}
        self._signatures: dict[int, str] = {}

    @property
    def final(self) -> dict | None:
        return self.events.final

    def feed(self, event: dict) -> list[dict]:
        """One Anthropic event's data (it has a `type`) → the Responses events to send now."""
        if self._ended:
            return []
        kind = event.get("type")
        out = self._start()
        if kind == "error":
            error = event.get("error") or {}
            self._ended = True
            out.extend(self.events.fail(code=error.get("type") or "api_error",
                                        message=error.get("message") or "Anthropic reported an error mid-stream",
                                        usage=self._usage()))
        elif kind == "message_start":
            self.usage = dict((event.get("message") or {}).get("usage") or {})
        elif kind == "content_block_start":
            out.extend(self._block_start(event.get("index", 0), event.get("content_block") or {}))
        elif kind == "content_block_delta":
            out.extend(self._block_delta(event.get("index", 0), event.get("delta") or {}))
        elif kind == "content_block_stop":
            out.extend(self._block_stop(event.get("index", 0)))
        elif kind == "message_delta":
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            self._stop_reason = (event.get("delta") or {}).get("stop_reason") or self._stop_reason
        elif kind == "message_stop":
            self._ended = True
            out.extend(self.events.complete(_outcome(self._stop_reason), self._usage()))
        # `ping` and event types Anthropic may add later carry nothing to translate.
        return out

    def finish(self) -> list[dict]:
        """At the end of the stream: a stream that stopped before `message_stop` is a failed response."""
        if self._ended:
            return []
        self._ended = True
        out = self._start()
        out.extend(self.events.fail(code="stream_interrupted",
                                    message="Anthropic's stream ended before the answer was complete",
                                    usage=self._usage() if self.usage else None))
        return out

    def _usage(self) -> dict:
        return usage_to_responses(self.usage)

    def _start(self) -> list[dict]:
        if self._started:
            return []
        self._started = True
        return self.events.start()

    def _block_start(self, index: int, block: dict) -> list[dict]:
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = "text"
            out = self.events.text_start(index)
            if block.get("text"):
                out.extend(self.events.text_delta(index, block["text"]))
            return out
        if kind == "tool_use":
            self._blocks[index] = "tool_use"
            call_id = oa.encode_tool_call_id(block["id"], chat._thinking_state(self._thinking))
            self._thinking = []
            out = self.events.call_start(index, call_id=call_id, name=block["name"])
            if block.get("input"):
                out.extend(self.events.call_delta(index, oa.arguments_json(block["input"])))
            return out
        if kind == "thinking":
            self._blocks[index] = "thinking"
            self._thinking_text[index] = [block.get("thinking") or ""]
            self._signatures[index] = block.get("signature") or ""
            out = self.events.reasoning_start(index)
            if block.get("thinking"):
                out.extend(self.events.reasoning_delta(index, block["thinking"]))
            return out
        if kind == "redacted_thinking":
            self._thinking.append(chat._thinking_block(block))
            return self.events.reasoning_start(index) + self.events.reasoning_end(index)
        return []

    def _block_delta(self, index: int, delta: dict) -> list[dict]:
        kind = self._blocks.get(index)
        delta_kind = delta.get("type")
        if kind == "text" and delta_kind == "text_delta" and delta.get("text"):
            return self.events.text_delta(index, delta["text"])
        if kind == "tool_use" and delta_kind == "input_json_delta" and delta.get("partial_json"):
            return self.events.call_delta(index, delta["partial_json"])
        if kind == "thinking":
            if delta_kind == "thinking_delta":
                self._thinking_text[index].append(delta.get("thinking") or "")
                return self.events.reasoning_delta(index, delta.get("thinking") or "")
            if delta_kind == "signature_delta":
                self._signatures[index] = delta.get("signature") or ""
        return []

    def _block_stop(self, index: int) -> list[dict]:
        kind = self._blocks.pop(index, None)
        if kind == "text":
            return self.events.text_end(index)
        if kind == "tool_use":
            return self.events.call_end(index)
        if kind == "thinking":
            self._thinking.append({"type": "thinking", "thinking": "".join(self._thinking_text.pop(index)),
                                   "signature": self._signatures.pop(index, "")})
            return self.events.reasoning_end(index)
        return []


def error_from_provider(status: int, body: bytes) -> dict:
    """An Anthropic error answer as an OpenAI error body (Responses errors have the chat shape)."""
    return chat.error_from_provider(status, body)


# The fields of a Messages request that /v1/messages/count_tokens takes (Anthropic's API reference).
_COUNT_TOKENS_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"})


class ResponsesTranslation:
    """Responses API clients ⇄ Anthropic, as one object (the `Translator` shape of providers/base.py).

    `request` gets the client's whole Responses body (the answer echoes its settings, so `answer`
    and `stream` take it again as `request`).
    """

    provider_format = "anthropic"

    def request(self, body: dict, *, model: str, stream: bool) -> dict:
        out = responses_request_to_provider({**body, "model": model, "stream": stream})
        out["model"] = model
        return out

    def answer(self, body: dict, *, model: str, request: dict | None = None, response_id: str | None = None) -> dict:
        return responses_response_from_provider(body, model=model, request=request, response_id=response_id)

    def count_request(self, body: dict, *, model: str) -> tuple[Upstream, dict]:
        """`POST /v1/responses/input_tokens` as Anthropic's free `/v1/messages/count_tokens` (which takes the
        prompt fields of a Messages request and refuses the others, `max_tokens` and sampling included)."""
        out = self.request({k: v for k, v in body.items() if k != "stream"}, model=model, stream=False)
        return (Upstream(Endpoint.COUNT_TOKENS, "/v1/messages/count_tokens"),
                {k: v for k, v in out.items() if k in _COUNT_TOKENS_FIELDS})

    def count_answer(self, body: dict) -> dict:
        """Anthropic's `{"input_tokens": N}` in OpenAI's shape (openai-python InputTokenCountResponse)."""
        return rf.input_tokens_answer(body.get("input_tokens"))

    def error(self, status: int, content: bytes) -> dict:
        return error_from_provider(status, content)

    def stream(self, *, model: str, request: dict | None = None, response_id: str | None = None,
               include_usage: bool = True) -> ResponsesStreamTranslator:
        # Responses streams always end with the usage (in the terminal event): include_usage changes nothing.
        return ResponsesStreamTranslator(model=model, request=request, response_id=response_id)
