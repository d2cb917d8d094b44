"""OpenAI chat completions ⇄ Anthropic Messages: requests, answers, streams, errors and usage.

Mapping decisions (each one is a 400 `TranslationError` where noted):

- system and developer messages, wherever they stand, become the top-level
  `system` blocks in order: Anthropic has one system prompt.
- Consecutive turns of one role are merged (Anthropic wants user/assistant
  alternation); tool messages become `tool_result` blocks of a user turn, so the
  results of parallel calls share one user message, as Anthropic requires.
- A history that ends with an assistant message is sent as it is: Anthropic
  continues that message (prefill) instead of starting a new one; models that
  do not support prefill answer 400 themselves.
- `max_tokens` is required by Anthropic: `max_completion_tokens`, else
  `max_tokens`, else `DEFAULT_MAX_TOKENS`.
- `reasoning_effort`: Claude 4.6 and later get `thinking: {"type": "adaptive"}`
  and `output_config.effort` (minimal → low; Claude 4.7+ reject budgets);
  earlier models get `thinking: {"type": "enabled", "budget_tokens": N}` with N
  from `openai_format.THINKING_BUDGETS`, `max_tokens` raised to N plus the
  client's cap when the cap does not exceed N (Anthropic counts thinking in
  `max_tokens` and wants the budget below it). Without a client cap,
  `max_tokens` is N + DEFAULT_MAX_TOKENS. "none" → `{"type": "disabled"}`.
- Thinking blocks are not OpenAI content and are not shown. Anthropic needs the
  ones that precede tool calls back with those calls while the tool loop runs,
  so they travel inside the tool-call id (`openai_format.encode_tool_call_id`)
  and are put back before the `tool_use` blocks when the client sends the
  history. Thinking of a turn without tool calls is dropped: Anthropic ignores
  thinking from finished turns anyway.
- `response_format`: json_schema → structured outputs
  (`output_config.format = {"type": "json_schema", "schema": ...}`, in the
  installed SDK's MessageCreateParams); json_object has no Anthropic switch, so
  `JSON_OBJECT_INSTRUCTION` is appended to the system prompt.
- `parallel_tool_calls: false` → `tool_choice.disable_parallel_tool_use: true`.
- `user` / `safety_identifier` → `metadata.user_id` (safety_identifier wins).
- `service_tier`: auto → auto, default → standard_only; others are a 400.
- `temperature`, `top_p` (and `top_k` from extra_body) are passed unchanged
  to models before Claude 4.7 (Anthropic's temperature range is 0–1: it
  answers 400 above 1 rather than us rescaling the client's value; the
  installed SDK, pinned to API version 2026-10-21, no longer sends them, so the
  gateway must call older models with an API version that accepts them).
  Claude 4.7 and later reject sampling parameters: a 400 here. temperature=1
  and top_p=1 are OpenAI's defaults and are not sent at all.
- `n` > 1, `seed`, penalties, `logprobs`, `logit_bias`, `verbosity`, audio,
  `prediction`, `web_search_options`, legacy `functions`, message `name`,
  non-function tools and any parameter not listed here: 400 naming it.
- Errors keep Anthropic's error type as OpenAI `type` and `code`
  (`overloaded_error` stays `overloaded_error`); a mid-stream `error` event
  becomes an OpenAI `{"error": {...}}` data event, as OpenAI streams report them.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field

from tokensense.providers import chat_format as oa
from tokensense.providers.anthropic.usage import usage_from_anthropic
from tokensense.providers.translation import TranslationError

DEFAULT_MAX_TOKENS = 4096
"""`max_tokens` sent when the client gave no cap (Anthropic requires one)."""

JSON_OBJECT_INSTRUCTION = (
    "Respond with one valid JSON object and nothing else: no prose before or after it and no Markdown code fences."
)
"""Appended to the system prompt for `response_format: {"type": "json_object"}` (Anthropic has no JSON mode)."""

PROVIDER = "Anthropic"

_HANDLED_PARAMS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",  # not OpenAI's, but sent by clients through extra_body; Anthropic has it
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
        "user",
        "safety_identifier",
        "service_tier",
    }
)
_IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
_SERVICE_TIERS = {"auto": "auto", "default": "standard_only"}
_ADAPTIVE_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "max"}
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # only server tools pause, and this translation never sends them
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_ERROR_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_SAMPLING_DEFAULTS = {"temperature": 1, "top_p": 1}
_MODEL_VERSION = re.compile(r"^claude-(?:[a-z]+-)?(?P<major>\d+)(?:-(?P<minor>\d{1,2}))?(?=[-@]|$)")
_THINKING_STATE = "anthropic_thinking"


# --- requests ------------------------------------------------------------------------------


def chat_request_to_provider(body: dict) -> dict:
    """An OpenAI chat-completions request body as an Anthropic Messages request body."""
    body = oa.present(body)
    oa.reject_unmapped(body, _HANDLED_PARAMS, PROVIDER)
    model = oa.require_model(body)
    system, turns = _messages(oa.require_messages(body))

    requested_max = oa.max_output_tokens(body)
    out: dict = {"model": model, "max_tokens": requested_max or DEFAULT_MAX_TOKENS, "messages": turns}
    if "stream" in body:
        out["stream"] = bool(body["stream"])
    _add_sampling(out, body, model)
    if "stop" in body and (stops := oa.stop_sequences(body["stop"])):
        out["stop_sequences"] = stops

    _add_tools(out, body)
    _add_response_format(out, body, system)
    _add_thinking(out, body, model, requested_max)
    if system:
        out["system"] = system

    user_id = body.get("safety_identifier") or body.get("user")
    if user_id:
        out["metadata"] = {"user_id": user_id}
    if "service_tier" in body:
        tier = _SERVICE_TIERS.get(body["service_tier"])
        if tier is None:
            raise TranslationError(
                f"service_tier={body['service_tier']!r} is not supported for Anthropic models; use auto or default",
                param="service_tier",
            )
        out["service_tier"] = tier
    return out


def _add_sampling(out: dict, body: dict, model: str) -> None:
    for key in ("temperature", "top_p", "top_k"):
        if key not in body or body[key] == _SAMPLING_DEFAULTS.get(key):
            continue  # OpenAI's default (1) is Anthropic's too: sending nothing is the same request
        if rejects_sampling_params(model):
            raise TranslationError(
                f"{key}={body[key]!r} is not supported for {model}: Anthropic rejects sampling parameters "
                "on Claude 4.7 and later models; remove it",
                param=key,
            )
        out[key] = body[key]


def rejects_sampling_params(model: str) -> bool:
    """Whether `model` answers 400 to any non-default temperature, top_p or top_k (Claude 4.7 and later).

    Names that carry no version are taken to be current models.
    """
    version = _model_version(model)
    return version is None or version >= (4, 7)


def _model_version(model: str) -> tuple[int, int] | None:
    match = _MODEL_VERSION.match(model.rsplit("/", 1)[-1])
    if not match:
        return None
    return int(match["major"]), int(match["minor"] or 0)


def _messages(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    system: list[dict] = []
    turns: list[dict] = []
    for i, message in enumerate(messages):
        role = message["role"]
        if role in ("system", "developer"):
            oa.reject_message_fields(message, i, {"role", "content"}, PROVIDER)
            texts = oa.text_parts(message.get("content"), f"messages[{i}].content")
            system.extend({"type": "text", "text": text} for text in texts if text)
        elif role == "user":
            oa.reject_message_fields(message, i, {"role", "content"}, PROVIDER)
            _append_turn(turns, "user", _user_blocks(message, i))
        elif role == "assistant":
            oa.reject_message_fields(message, i, {"role", "content", "tool_calls", "refusal"}, PROVIDER)
            if blocks := _assistant_blocks(message, i):
                _append_turn(turns, "assistant", blocks)
        elif role == "tool":
            oa.reject_message_fields(message, i, {"role", "content", "tool_call_id"}, PROVIDER)
            _append_turn(turns, "user", [_tool_result(message, i)])
        else:
            raise TranslationError(
                f"messages[{i}].role {role!r} cannot be translated for Anthropic models "
                "(use system, developer, user, assistant or tool)",
                param=f"messages[{i}].role",
            )
    return system, turns


def _append_turn(turns: list[dict], role: str, blocks: list[dict]) -> None:
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _user_blocks(message: dict, i: int) -> list[dict]:
    blocks = []
    for j, part in enumerate(oa.content_parts(message.get("content"), f"messages[{i}].content")):
        param = f"messages[{i}].content[{j}]"
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text") or ""})
        elif kind == "image_url":
            blocks.append(_image_block(oa.image_url(part, param), param))
        elif kind == "file":
            blocks.append(_document_block(oa.file_part(part, param), param))
        else:
            raise TranslationError(
                f"{param}: content part type {kind!r} is not supported for Anthropic models "
                "(text, image_url and file are)",
                param=f"{param}.type",
            )
    return blocks


def _image_block(url: str, param: str) -> dict:
    if url.startswith("data:"):
        parsed = oa.parse_data_url(url)
        if parsed is None:
            raise TranslationError(f"{param}.image_url.url is not a base64 data URL", param=f"{param}.image_url.url")
        mime, data = parsed
        mime = "image/jpeg" if mime == "image/jpg" else mime
        if mime not in _IMAGE_TYPES:
            raise TranslationError(
                f"{param}: image type {mime} is not supported by Anthropic (jpeg, png, gif, webp are)",
                param=f"{param}.image_url.url",
            )
        return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError(f"{param}.image_url.url must be an http(s) or data URL", param=f"{param}.image_url.url")


def _document_block(file: oa.FilePart, param: str) -> dict:
    if file.mime_type == "application/pdf":
        return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": file.data}}
    if file.mime_type == "text/plain":
        text = base64.b64decode(file.data).decode("utf-8", errors="replace")
        return {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}
    raise TranslationError(
        f"{param}: file type {file.mime_type} is not supported by Anthropic (PDF and plain text are)",
        param=f"{param}.file.file_data",
    )


def _assistant_blocks(message: dict, i: int) -> list[dict]:
    calls = oa.assistant_tool_calls(message, i, PROVIDER)
    text_blocks = [{"type": "text", "text": text} for text in oa.assistant_texts(message, i)]
    if not calls:
        return text_blocks
    # Thinking that preceded the first call leads the message, as Anthropic sent it.
    blocks = _carried_thinking(calls[0].state) + text_blocks
    for j, call in enumerate(calls):
        if j:
            blocks.extend(_carried_thinking(call.state))
        blocks.append({"type": "tool_use", "id": call.base_id, "name": call.name, "input": call.arguments})
    return blocks


def _carried_thinking(state: object) -> list[dict]:
    if not isinstance(state, dict):
        return []
    blocks = state.get(_THINKING_STATE)
    if not isinstance(blocks, list):
        return []
    return [b for b in blocks if isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking")]


def _tool_result(message: dict, i: int) -> dict:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(f"messages[{i}].tool_call_id is required", param=f"messages[{i}].tool_call_id")
    content = message.get("content")
    texts = oa.text_parts(content, f"messages[{i}].content")
    result: dict = {"type": "tool_result", "tool_use_id": oa.decode_tool_call_id(call_id)[0]}
    if isinstance(content, str):
        result["content"] = content
    elif texts:
        result["content"] = [{"type": "text", "text": text} for text in texts if text]
    return result


def _add_tools(out: dict, body: dict) -> None:
    tools = oa.function_tools(body, PROVIDER)
    if tools:
        out["tools"] = [_tool(tool) for tool in tools]
    choice = oa.tool_choice(body, PROVIDER)
    if choice is not None:
        out["tool_choice"] = {
            "auto": {"type": "auto"},
            "none": {"type": "none"},
            "required": {"type": "any"},
            "function": {"type": "tool", "name": choice.name},
        }[choice.mode]
    if body.get("parallel_tool_calls") is False and tools:
        # Inverse switches: OpenAI's parallel_tool_calls=false forbids parallel
        # calls; Anthropic forbids them when disable_parallel_tool_use is true.
        tool_choice = out.setdefault("tool_choice", {"type": "auto"})
        if tool_choice["type"] != "none":
            tool_choice["disable_parallel_tool_use"] = True


def _tool(tool: oa.FunctionTool) -> dict:
    schema = tool.parameters if tool.parameters else {"type": "object", "properties": {}}
    if "type" not in schema:
        schema = {"type": "object", **schema}
    result: dict = {"name": tool.name}
    if tool.description:
        result["description"] = tool.description
    result["input_schema"] = schema
    if tool.strict:
        result["strict"] = True
    return result


def _add_response_format(out: dict, body: dict, system: list[dict]) -> None:
    fmt = oa.response_format(body)
    if fmt is None:
        return
    if fmt.kind == "json_schema":
        out.setdefault("output_config", {})["format"] = {"type": "json_schema", "schema": fmt.schema}
    else:
        system.append({"type": "text", "text": JSON_OBJECT_INSTRUCTION})


def uses_adaptive_thinking(model: str) -> bool:
    """Whether `model` takes `thinking: adaptive` + effort (Claude 4.6 and later) rather than a token budget.

    Names that carry no version are taken to be current models.
    """
    version = _model_version(model)
    return version is None or version >= (4, 6)


def _add_thinking(out: dict, body: dict, model: str, requested_max: int | None) -> None:
    effort = oa.reasoning_effort(body)
    if effort is None:
        return
    if effort == "none":
        out["thinking"] = {"type": "disabled"}
        return
    budget = oa.THINKING_BUDGETS[effort]
    if uses_adaptive_thinking(model):
        out["thinking"] = {"type": "adaptive"}
        out.setdefault("output_config", {})["effort"] = _ADAPTIVE_EFFORTS[effort]
        if requested_max is None:
            out["max_tokens"] = budget + DEFAULT_MAX_TOKENS
        return
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if requested_max is None:
        out["max_tokens"] = budget + DEFAULT_MAX_TOKENS
    elif requested_max <= budget:
        out["max_tokens"] = budget + requested_max


# --- answers -------------------------------------------------------------------------------


def chat_response_from_provider(resp: dict, *, model: str) -> dict:
    """An Anthropic Messages answer as an OpenAI `chat.completion`; `model` is the name the client asked for."""
    texts: list[str] = []
    tool_calls: list[dict] = []
    thinking: list[dict] = []
    for block in resp.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            call_id = oa.encode_tool_call_id(block["id"], _thinking_state(thinking))
            tool_calls.append(oa.tool_call(call_id, block["name"], oa.arguments_json(block.get("input"))))
            thinking = []
        elif kind in ("thinking", "redacted_thinking"):
            thinking.append(_thinking_block(block))
        # Other block types answer server tools, which this translation never sends.
    content = "".join(texts) if texts else (None if tool_calls else "")
    choice = oa.choice(0, content=content, tool_calls=tool_calls, finish_reason=_finish_reason(resp.get("stop_reason")))
    return oa.chat_completion(
        completion_id=oa.completion_id(resp.get("id")),
        model=model,
        choices=[choice],
        usage=usage_to_openai(resp.get("usage") or {}),
    )


def _thinking_block(block: dict) -> dict:
    if block.get("type") == "redacted_thinking":
        return {"type": "redacted_thinking", "data": block.get("data", "")}
    return {"type": "thinking", "thinking": block.get("thinking", ""), "signature": block.get("signature", "")}


def _thinking_state(thinking: list[dict]) -> dict | None:
    return {_THINKING_STATE: thinking} if thinking else None


def _finish_reason(stop_reason: str | None) -> str:
    # A stop reason Anthropic adds later is most likely an ordinary end.
    return _FINISH_REASONS.get(stop_reason or "end_turn", "stop")


def usage_to_openai(usage: dict) -> dict:
    """Anthropic usage as OpenAI usage: prompt = uncached input + cache reads + cache writes.

    Read through the metering reader, so a malformed counter is 0 here too (and logged once), never an error.
    """
    read = usage_from_anthropic(usage)
    if read is None:
        return oa.usage(prompt=0, completion=0)
    return oa.usage(
        prompt=read.input_tokens,
        completion=read.output_tokens,
        cached=read.cached_input_tokens,
        cache_write=read.cache_write_tokens,
        reasoning=read.reasoning_tokens,
    )


# --- streams -------------------------------------------------------------------------------


@dataclass
class _Block:
    kind: str
    call_index: int = -1
    arguments_sent: bool = False
    thinking: list[str] = field(default_factory=list)
    signature: str = ""


class ChatStreamTranslator:
    """Turns Anthropic stream events into OpenAI `chat.completion.chunk` dicts, event by event."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.usage: dict = {}
        self._chunks: oa.ChunkBuilder | None = None
        self._blocks: dict[int, _Block] = {}
        self._tool_calls = 0
        self._thinking: list[dict] = []
        self._finished = False
        self._usage_sent = False
        self._failed = False

    def feed(self, event: dict) -> list[dict]:
        """One event's data (it has a `type`) → the chunks to send now."""
        kind = event.get("type")
        if kind == "error":
            self._failed = True
            return [_openai_error(event.get("error") or {}, status=None)]
        message = (event.get("message") or {}) if kind == "message_start" else {}
        out = self._start(message)
        if kind == "message_start":
            self.usage = dict(message.get("usage") or {})
        elif kind == "content_block_start":
            out.extend(self._block_start(event.get("index", 0), event.get("content_block") or {}))
        elif kind == "content_block_delta":
            out.extend(self._block_delta(event.get("index", 0), event.get("delta") or {}))
        elif kind == "content_block_stop":
            out.extend(self._block_stop(event.get("index", 0)))
        elif kind == "message_delta":
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            stop_reason = (event.get("delta") or {}).get("stop_reason")
            if stop_reason and not self._finished:
                self._finished = True
                out.append(self._chunks.finish(_finish_reason(stop_reason)))
        elif kind == "message_stop":
            out.extend(self._usage_chunk())
        # `ping` and event types Anthropic may add later carry nothing to translate.
        return out

    def finish(self) -> list[dict]:
        """At the end of the stream: the usage chunk if it was asked for and not sent yet."""
        if self._failed or self._chunks is None:
            return []
        return self._usage_chunk()

    def _start(self, message: dict) -> list[dict]:
        if self._chunks is not None:
            return []
        self._chunks = oa.ChunkBuilder(
            completion_id=oa.completion_id(message.get("id")), model=self.model, include_usage=self.include_usage
        )
        return [self._chunks.role()]

    def _block_start(self, index: int, block: dict) -> list[dict]:
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = _Block("text")
            return [self._chunks.content(block["text"])] if block.get("text") else []
        if kind == "tool_use":
            call_index = self._tool_calls
            self._tool_calls += 1
            call_id = oa.encode_tool_call_id(block["id"], _thinking_state(self._thinking))
            self._thinking = []
            state = self._blocks[index] = _Block("tool_use", call_index=call_index)
            out = [self._chunks.tool_call_start(call_index=call_index, call_id=call_id, name=block["name"])]
            if block.get("input"):
                state.arguments_sent = True
                fragment = oa.arguments_json(block["input"])
                out.append(self._chunks.tool_call_arguments(call_index=call_index, fragment=fragment))
            return out
        if kind == "thinking":
            self._blocks[index] = _Block(
                "thinking", thinking=[block.get("thinking") or ""], signature=block.get("signature") or ""
            )
        elif kind == "redacted_thinking":
            self._thinking.append(_thinking_block(block))
        return []

    def _block_delta(self, index: int, delta: dict) -> list[dict]:
        block = self._blocks.get(index)
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunks.content(delta["text"])]
        if kind == "input_json_delta" and block and block.kind == "tool_use" and delta.get("partial_json"):
            block.arguments_sent = True
            return [self._chunks.tool_call_arguments(call_index=block.call_index, fragment=delta["partial_json"])]
        if block and block.kind == "thinking":
            if kind == "thinking_delta":
                block.thinking.append(delta.get("thinking") or "")
            elif kind == "signature_delta":
                block.signature = delta.get("signature") or ""
        return []

    def _block_stop(self, index: int) -> list[dict]:
        block = self._blocks.pop(index, None)
        if block is None:
            return []
        if block.kind == "tool_use" and not block.arguments_sent:
            # A call without arguments streams no input_json_delta; the unstreamed answer says "{}".
            return [self._chunks.tool_call_arguments(call_index=block.call_index, fragment="{}")]
        if block.kind == "thinking":
            thinking = {"type": "thinking", "thinking": "".join(block.thinking), "signature": block.signature}
            self._thinking.append(thinking)
        return []

    def _usage_chunk(self) -> list[dict]:
        if not self.include_usage or self._usage_sent:
            return []
        self._usage_sent = True
        return [self._chunks.usage(usage_to_openai(self.usage))]


# --- errors --------------------------------------------------------------------------------


def error_from_provider(status: int, body: bytes) -> dict:
    """An Anthropic error answer as an OpenAI error body; the caller keeps the HTTP status."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and (error.get("message") or error.get("type")):
        return _openai_error(error, status=status)
    text = oa.error_text(body) or f"Anthropic answered HTTP {status} without a body"
    error_type = _ERROR_TYPES_BY_STATUS.get(status, "api_error")
    return oa.error(text, type=error_type, code=error_type)


def _openai_error(error: dict, *, status: int | None) -> dict:
    # Anthropic's error types mostly share OpenAI's names; keeping them as they
    # are keeps overloaded_error (529) apart from rate_limit_error (429).
    error_type = error.get("type") or _ERROR_TYPES_BY_STATUS.get(status or 500, "api_error")
    message = error.get("message") or f"Anthropic answered with {error_type}"
    return oa.error(message, type=error_type, code=error_type)
