"""OpenAI Responses API ⇄ Gemini generateContent: requests, answers, streams, errors.

Requests go through the chat translation (`responses_format.to_chat_request` then
`chat.chat_request_to_provider`), so every mapping decision of providers/gemini/chat.py holds here too
(systemInstruction, functionDeclarations and toolConfig, thinking levels and budgets, JSON schema output,
function names of tool results looked up from the earlier call). On top:

- `reasoning.summary` → `thinkingConfig.includeThoughts: true`; thought parts then become reasoning
  items with the thought text as `summary_text` (without a summary request Gemini sends no thoughts).
- Answers read the first candidate (Responses has one output): consecutive text parts make one message
  item, consecutive thought parts one reasoning item, each functionCall a function_call item whose
  `call_id` is the chat translation's id (a hash of the response id, or Gemini's own id, carrying the
  thought signature Gemini 3 needs back).
- finishReason MAX_TOKENS → status incomplete (max_output_tokens); SAFETY, RECITATION and the other
  blocking reasons, and a prompt blocked before any candidate → incomplete (content_filter); others →
  completed.
- Usage: thoughtsTokenCount counts as output and reasoning tokens, cachedContentTokenCount as cached.
- Streams: Gemini has no closing event; `response.completed` is sent when the stream ends after a chunk
  with a finishReason, `response.failed` when it ends without one.
"""

from __future__ import annotations

import uuid

from tokensense.providers import responses_format as rf
from tokensense.providers.base import Upstream, model_segment
from tokensense.providers.gemini import NATIVE, chat
from tokensense.providers.translation import TranslationError

PROVIDER = chat.PROVIDER

_MAX_TOKENS = "MAX_TOKENS"


def responses_request_to_provider(body: dict) -> dict:
    """An OpenAI Responses request body as a Gemini GenerateContentRequest body (model and stream go in the URL)."""
    request = rf.to_chat_request(body, PROVIDER)
    try:
        out = chat.chat_request_to_provider(request.body)
    except TranslationError as e:
        raise rf.renamed(e, request.origins) from None
    if request.summary:
        config = out.setdefault("generationConfig", {})
        config.setdefault("thinkingConfig", {})["includeThoughts"] = True
    return out


def _outcome(reason: str | None, *, blocked: bool = False) -> rf.Outcome:
    if blocked or reason in chat._CONTENT_FILTER_REASONS:
        return rf.Outcome("incomplete", "content_filter")
    if reason == _MAX_TOKENS:
        return rf.Outcome("incomplete", "max_output_tokens")
    return rf.COMPLETED


def usage_to_responses(meta: dict) -> dict:
    return rf.usage_from_chat(chat.usage_to_openai(meta))


def _part_kind(part: dict) -> str | None:
    if "functionCall" in part:
        return "call"
    if part.get("thought"):
        return "thought" if part.get("text") else None
    if part.get("text"):
        return "text"  # an empty text part (Gemini sends them to carry a signature) adds nothing
    return None  # code execution, generated images: from features this translation never enables


def responses_response_from_provider(resp: dict, *, model: str, request: dict | None = None,
                                     response_id: str | None = None) -> dict:
    """A Gemini GenerateContentResponse as an OpenAI `response` object; `model` is the name the client asked for."""
    id_seed = resp.get("responseId") or uuid.uuid4().hex
    summary = rf.wants_summary(request)
    output: list[dict] = []
    candidates = resp.get("candidates") or []
    candidate = candidates[0] if candidates else {}
    calls = 0
    run_kind: str | None = None
    for part in (candidate.get("content") or {}).get("parts") or []:
        kind = _part_kind(part)
        if kind == "call":
            call = chat._tool_call(part, id_seed, candidate.get("index", 0), calls)
            calls += 1
            function = call["function"]
            output.append(rf.function_call_item(call["id"], function["name"], function["arguments"], request=request))
        elif kind == "text":
            if run_kind == "text":
                output[-1]["content"][0]["text"] += part["text"]
            else:
                output.append(rf.message_item(part["text"]))
        elif kind == "thought":
            if run_kind == "thought" and summary:
                output[-1]["summary"][0]["text"] += part["text"]
            elif run_kind != "thought":
                output.append(rf.reasoning_item([part["text"]] if summary else []))
        run_kind = kind if kind else run_kind
    blocked = not candidates and bool((resp.get("promptFeedback") or {}).get("blockReason"))
    outcome = _outcome(candidate.get("finishReason"), blocked=blocked)
    return rf.response_object(
        response_id=response_id or rf.new_response_id(),
        model=model,
        request=request,
        output=rf.ended_output(output, outcome),
        usage=usage_to_responses(resp.get("usageMetadata") or {}),
        outcome=outcome,
    )


class ResponsesStreamTranslator:
    """Turns Gemini stream chunks (`streamGenerateContent?alt=sse`) into OpenAI Responses stream events.

    Same interface as chat.ChatStreamTranslator: `feed(chunk) -> list[dict]`, `finish() -> list[dict]`,
    `usage` (the last usageMetadata). `final` is the finished `response` object once the stream has ended.
    """

    def __init__(self, *, model: str, request: dict | None = None, response_id: str | None = None) -> None:
        self.events = rf.ResponseEvents(model=model, request=request, response_id=response_id)
        self.usage: dict = {}
        self._started = False
        self._ended = False
        self._id_seed = ""
        self._open: str | None = None  # "text" | "thought": the item a following part of that kind extends
        self._calls = 0
        self._finish_reason: str | None = None
        self._blocked = False

    @property
    def final(self) -> dict | None:
        return self.events.final

    def feed(self, event: dict) -> list[dict]:
        """One GenerateContentResponse chunk → the Responses events to send now."""
        if self._ended:
            return []
        out = self._start(event)
        if "error" in event:
            error = event.get("error") or {}
            self._ended = True
            out.extend(self.events.fail(code=error.get("status") or "api_error",
                                        message=error.get("message") or "Gemini reported an error mid-stream",
                                        usage=usage_to_responses(self.usage) if self.usage else None))
            return out
        if event.get("usageMetadata"):
            self.usage = event["usageMetadata"]
        candidates = event.get("candidates") or []
        if not candidates and (event.get("promptFeedback") or {}).get("blockReason"):
            self._blocked = True
        candidate = candidates[0] if candidates else {}
        for part in (candidate.get("content") or {}).get("parts") or []:
            out.extend(self._part(part, candidate.get("index", 0)))
        if candidate.get("finishReason"):
            self._finish_reason = candidate["finishReason"]
            out.extend(self._close())
        return out

    def finish(self) -> list[dict]:
        """At the end of the stream: `response.completed` (or incomplete), or `response.failed` if it broke off."""
        if self._ended:
            return []
        self._ended = True
        out = self._start({})
        if self._finish_reason is None and not self._blocked:
            out.extend(self.events.fail(code="stream_interrupted",
                                        message="Gemini's stream ended before the answer was complete",
                                        usage=usage_to_responses(self.usage) if self.usage else None))
            return out
        out.extend(self.events.complete(_outcome(self._finish_reason, blocked=self._blocked),
                                        usage_to_responses(self.usage)))
        return out

    def _start(self, event: dict) -> list[dict]:
        if self._started:
            return []
        self._started = True
        self._id_seed = event.get("responseId") or uuid.uuid4().hex
        return self.events.start()

    def _close(self) -> list[dict]:
        kind, self._open = self._open, None
        if kind == "text":
            return self.events.text_end("text")
        if kind == "thought":
            return self.events.reasoning_end("thought")
        return []

    def _part(self, part: dict, candidate: int) -> list[dict]:
        kind = _part_kind(part)
        if kind is None:
            return []
        out: list[dict] = []
        if kind != self._open:
            out.extend(self._close())
        if kind == "call":
            # Gemini sends each call whole: added, all arguments in one delta, done.
            call = chat._tool_call(part, self._id_seed, candidate, self._calls)
            key = ("call", self._calls)
            self._calls += 1
            out.extend(self.events.call_start(key, call_id=call["id"], name=call["function"]["name"]))
            out.extend(self.events.call_delta(key, call["function"]["arguments"]))
            out.extend(self.events.call_end(key))
            return out
        if kind == "text":
            if self._open != "text":
                self._open = "text"
                out.extend(self.events.text_start("text"))
            if part["text"]:
                out.extend(self.events.text_delta("text", part["text"]))
            return out
        if self._open != "thought":
            self._open = "thought"
            out.extend(self.events.reasoning_start("thought"))
        out.extend(self.events.reasoning_delta("thought", part["text"]))
        return out


def error_from_provider(status: int, body: bytes) -> dict:
    """A Gemini error answer as an OpenAI error body (Responses errors have the chat shape)."""
    return chat.error_from_provider(status, body)


class ResponsesTranslation:
    """Responses API clients ⇄ Gemini, as one object (the `Translator` shape of providers/base.py).

    The body has no model and no stream flag: both go in the URL the gateway builds
    (`models/{model}:generateContent` or `:streamGenerateContent?alt=sse`).
    """

    provider_format = "gemini"

    def request(self, body: dict, *, model: str, stream: bool) -> dict:
        return responses_request_to_provider({**body, "model": model, "stream": stream})

    def answer(self, body: dict, *, model: str, request: dict | None = None, response_id: str | None = None) -> dict:
        return responses_response_from_provider(body, model=model, request=request, response_id=response_id)

    def count_request(self, body: dict, *, model: str) -> tuple[Upstream, dict]:
        """`POST /v1/responses/input_tokens` as Gemini's free `:countTokens`, with the whole GenerateContentRequest
        (`generateContentRequest`, so the system instruction and tools are counted too; it must name the model)."""
        out = self.request({k: v for k, v in body.items() if k != "stream"}, model=model, stream=False)
        segment = model_segment(model)
        return (Upstream(NATIVE, f"/v1beta/models/{segment}:countTokens"),
                {"generateContentRequest": {"model": f"models/{segment}", **out}})

    def count_answer(self, body: dict) -> dict:
        """Gemini's `{"totalTokens": N}` in OpenAI's shape (openai-python InputTokenCountResponse)."""
        return rf.input_tokens_answer(body.get("totalTokens"))

    def error(self, status: int, content: bytes) -> dict:
        return error_from_provider(status, content)

    def stream(self, *, model: str, request: dict | None = None, response_id: str | None = None,
               include_usage: bool = True) -> ResponsesStreamTranslator:
        return ResponsesStreamTranslator(model=model, request=request, response_id=response_id)
