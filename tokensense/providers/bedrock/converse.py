"""OpenAI chat completions ⇄ Bedrock Converse: requests, answers, stream events, errors and usage.

The same five names as the Anthropic and Gemini translators
(`chat_request_to_provider`, `chat_response_from_provider`, `ChatStreamTranslator`,
`error_from_provider`, `usage_to_openai`). Converse is Bedrock's one format for
every model, so OpenAI-format chat reaches any Bedrock model through it.

Mapping decisions (each one is a 400 `TranslationError` where noted):

- system and developer messages become `system` text blocks, in order.
- Consecutive turns of one role are merged (Converse wants alternation); tool
  messages become `toolResult` blocks of a user turn (`json` content when the
  result is a JSON object, else `text`).
- `max_tokens`/`max_completion_tokens` → `inferenceConfig.maxTokens`,
  `temperature`, `top_p` → `topP`, `stop` → `stopSequences`.
- Images: base64 data URLs of png, jpeg, gif or webp → `image.source.bytes`;
  http(s) image URLs cannot be fetched by Bedrock: 400. Files: PDF and plain
  text data → `document` blocks.
- tools → `toolConfig.tools[].toolSpec` (`inputSchema.json`); tool_choice
  auto → auto, required → any, a function → tool; `none` has no Converse
  equivalent: 400 (leave tools out instead).
- `response_format`: json_schema → `outputConfig.textFormat` (Converse
  structured outputs); json_object → an instruction appended to the system prompt.
- `reasoning_effort` (Claude models) → `additionalModelRequestFields.thinking`
  with the budget of `chat_format.THINKING_BUDGETS`; `none` → nothing.
- Anything else (n > 1, penalties, logprobs, seed, audio, ...): 400 naming it.
- Finish reasons: end_turn/stop_sequence → stop, max_tokens → length,
  tool_use → tool_calls, guardrail_intervened/content_filtered → content_filter.
- Errors: Bedrock's `{"message"}` bodies and mid-stream exception frames become
  OpenAI error objects typed by the HTTP status or exception name.
"""

from __future__ import annotations

import json
from typing import Any

from tokensense.providers import chat_format as oa
from tokensense.providers.translation import TranslationError

PROVIDER = "Bedrock"
JSON_OBJECT_INSTRUCTION = (
    "Respond with one valid JSON object and nothing else: no prose before or after it and no Markdown code fences."
)

_HANDLED_PARAMS = frozenset({
    "model", "messages", "stream", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort", "user",
})
_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                  "image/webp": "webp"}
_DOCUMENT_FORMATS = {"application/pdf": "pdf", "text/plain": "txt", "text/csv": "csv", "text/html": "html",
                     "text/markdown": "md"}
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
_ERROR_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    424: "model_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "service_unavailable",
}


# --- requests ------------------------------------------------------------------------------


def chat_request_to_provider(body: dict) -> dict:
    """An OpenAI chat-completions request body as a Converse request body (the model goes in the path)."""
    body = oa.present(body)
    oa.reject_unmapped(body, _HANDLED_PARAMS, PROVIDER)
    model = oa.require_model(body)
    system, messages = _messages(oa.require_messages(body))
    out: dict = {"messages": messages}

    inference: dict = {}
    if (cap := oa.max_output_tokens(body)) is not None:
        inference["maxTokens"] = cap
    if "temperature" in body:
        inference["temperature"] = body["temperature"]
    if "top_p" in body:
        inference["topP"] = body["top_p"]
    if "stop" in body and (stops := oa.stop_sequences(body["stop"])):
        inference["stopSequences"] = stops
    if inference:
        out["inferenceConfig"] = inference

    _add_tools(out, body)
    fmt = oa.response_format(body)
    if fmt is not None and fmt.kind == "json_schema":
        out["outputConfig"] = {"textFormat": {"type": "json_schema", "structure": {
            "jsonSchema": {"schema": json.dumps(fmt.schema), "name": "response"}}}}
    elif fmt is not None:
        system.append({"text": JSON_OBJECT_INSTRUCTION})
    _add_thinking(out, body, model, inference)
    if system:
        out["system"] = system
    return out


def _messages(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    system: list[dict] = []
    turns: list[dict] = []
    for i, message in enumerate(messages):
        role = message["role"]
        if role in ("system", "developer"):
            oa.reject_message_fields(message, i, {"role", "content"}, PROVIDER)
            system.extend({"text": text} for text in oa.text_parts(message.get("content"), f"messages[{i}].content") if text)
        elif role == "user":
            oa.reject_message_fields(message, i, {"role", "content"}, PROVIDER)
            _append(turns, "user", _user_blocks(message, i))
        elif role == "assistant":
            oa.reject_message_fields(message, i, {"role", "content", "tool_calls", "refusal"}, PROVIDER)
            blocks: list[dict[str, Any]] = [{"text": text} for text in oa.assistant_texts(message, i)]
            blocks += [{"toolUse": {"toolUseId": call.base_id, "name": call.name, "input": call.arguments}}
                       for call in oa.assistant_tool_calls(message, i, PROVIDER)]
            if blocks:
                _append(turns, "assistant", blocks)
        elif role == "tool":
            oa.reject_message_fields(message, i, {"role", "content", "tool_call_id"}, PROVIDER)
            _append(turns, "user", [_tool_result(message, i)])
        else:
            raise TranslationError(
                f"messages[{i}].role {role!r} cannot be translated for Bedrock models "
                "(use system, developer, user, assistant or tool)", param=f"messages[{i}].role")
    return system, turns


def _append(turns: list[dict], role: str, blocks: list[dict]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _user_blocks(message: dict, i: int) -> list[dict]:
    blocks: list[dict] = []
    for j, part in enumerate(oa.content_parts(message.get("content"), f"messages[{i}].content")):
        param = f"messages[{i}].content[{j}]"
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(oa.image_url(part, param), param))
        elif kind == "file":
            file = oa.file_part(part, param)
            fmt = _DOCUMENT_FORMATS.get(file.mime_type)
            if fmt is None:
                raise TranslationError(f"{param}: file type {file.mime_type} is not supported by Bedrock",
                                       param=f"{param}.file.file_data")
            blocks.append({"document": {"format": fmt, "name": f"document{i}x{j}", "source": {"bytes": file.data}}})
        else:
            raise TranslationError(f"{param}: content part type {kind!r} is not supported for Bedrock models "
                                   "(text, image_url and file are)", param=f"{param}.type")
    return blocks


def _image(url: str, param: str) -> dict:
    parsed = oa.parse_data_url(url) if url.startswith("data:") else None
    if parsed is None:
        raise TranslationError(f"{param}.image_url.url must be a base64 data URL: Bedrock does not fetch image URLs",
                               param=f"{param}.image_url.url")
    mime, data = parsed
    fmt = _IMAGE_FORMATS.get(mime)
    if fmt is None:
        raise TranslationError(f"{param}: image type {mime} is not supported by Bedrock (png, jpeg, gif, webp are)",
                               param=f"{param}.image_url.url")
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _tool_result(message: dict, i: int) -> dict:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(f"messages[{i}].tool_call_id is required", param=f"messages[{i}].tool_call_id")
    text = "".join(oa.text_parts(message.get("content"), f"messages[{i}].content"))
    value = oa.tool_result_value(text)
    content = [{"json": value}] if isinstance(value, dict) else [{"text": text}]
    return {"toolResult": {"toolUseId": oa.decode_tool_call_id(call_id)[0], "content": content}}


def _add_tools(out: dict, body: dict) -> None:
    tools = oa.function_tools(body, PROVIDER)
    choice = oa.tool_choice(body, PROVIDER)
    if not tools:
        return
    if choice is not None and choice.mode == "none":
        raise TranslationError("tool_choice 'none' has no Bedrock equivalent; leave the tools out instead",
                               param="tool_choice")
    specs = []
    for tool in tools:
        schema = tool.parameters or {"type": "object", "properties": {}}
        spec: dict = {"name": tool.name, "inputSchema": {"json": schema}}
        if tool.description:
            spec["description"] = tool.description
        specs.append({"toolSpec": spec})
    config: dict = {"tools": specs}
    if choice is not None:
        config["toolChoice"] = {"auto": {"auto": {}}, "required": {"any": {}},
                                "function": {"tool": {"name": choice.name}}}[choice.mode]
    out["toolConfig"] = config


def _add_thinking(out: dict, body: dict, model: str, inference: dict) -> None:
    effort = oa.reasoning_effort(body)
    if effort is None or effort == "none":
        return
    if "anthropic." not in model:
        raise TranslationError(f"reasoning_effort is only translated for Claude models on Bedrock, not {model}",
                               param="reasoning_effort")
    budget = oa.THINKING_BUDGETS[effort]
    out["additionalModelRequestFields"] = {"thinking": {"type": "enabled", "budget_tokens": budget}}
    cap = inference.get("maxTokens")
    inference = out.setdefault("inferenceConfig", inference)
    inference["maxTokens"] = budget + (cap or 4096) if cap is None or cap <= budget else cap


# --- answers -------------------------------------------------------------------------------


def chat_response_from_provider(resp: dict, *, model: str) -> dict:
    """A Converse answer as an OpenAI `chat.completion`; `model` is the name the client asked for."""
    message = ((resp.get("output") or {}).get("message")) or {}
    texts: list[str] = []
    tool_calls: list[dict] = []
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        if "text" in block:
            texts.append(block.get("text") or "")
        elif "toolUse" in block:
            use = block["toolUse"] or {}
            tool_calls.append(oa.tool_call(use.get("toolUseId", ""), use.get("name", ""), oa.arguments_json(use.get("input"))))
        # reasoningContent is not OpenAI content and is not shown.
    content = "".join(texts) if texts else (None if tool_calls else "")
    finish = _finish_reason(resp.get("stopReason"))
    return oa.chat_completion(
        completion_id=oa.completion_id(None),
        model=model,
        choices=[oa.choice(0, content=content, tool_calls=tool_calls, finish_reason=finish)],
        usage=usage_to_openai(resp.get("usage") or {}),
    )


def _finish_reason(stop_reason: str | None) -> str:
    return _FINISH_REASONS.get(stop_reason or "end_turn", "stop")


def usage_to_openai(usage: dict) -> dict:
    """Converse usage as OpenAI usage: prompt = input + cache reads + cache writes."""
    read = usage.get("cacheReadInputTokens") or 0
    write = usage.get("cacheWriteInputTokens") or 0
    return oa.usage(prompt=(usage.get("inputTokens") or 0) + read + write, completion=usage.get("outputTokens") or 0,
                    cached=read, cache_write=write)


# --- streams -------------------------------------------------------------------------------


class ChatStreamTranslator:
    """Turns ConverseStream events into OpenAI `chat.completion.chunk` dicts, event by event.

    `feed` takes one event as boto3 shows it: `{"messageStart": {...}}`,
    `{"contentBlockDelta": {...}}`, ..., or `{"exception": {"type", "message"}}`
    for an exception frame.
    """

    def __init__(self, *, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.usage: dict = {}
        self._chunks = oa.ChunkBuilder(completion_id=oa.completion_id(None), model=model, include_usage=include_usage)
        self._started = False
        self._calls: dict[int, int] = {}  # content block index -> tool call index
        self._finish: str | None = None
        self._finish_sent = False
        self._usage_sent = False
        self._failed = False

    def feed(self, event: dict) -> list[dict]:
        if "exception" in event:
            self._failed = True
            error = event["exception"] or {}
            kind = str(error.get("type") or "api_error")
            return [oa.error(str(error.get("message") or f"Bedrock sent {kind}"), type=kind, code=kind)]
        out = self._start()
        if "contentBlockStart" in event:
            start = event["contentBlockStart"] or {}
            use = (start.get("start") or {}).get("toolUse")
            if isinstance(use, dict):
                call_index = self._calls[start.get("contentBlockIndex", 0)] = len(self._calls)
                out.append(self._chunks.tool_call_start(call_index=call_index, call_id=use.get("toolUseId", ""),
                                                        name=use.get("name", "")))
        elif "contentBlockDelta" in event:
            delta_event = event["contentBlockDelta"] or {}
            delta = delta_event.get("delta") or {}
            if delta.get("text"):
                out.append(self._chunks.content(delta["text"]))
            elif isinstance(delta.get("toolUse"), dict) and delta["toolUse"].get("input"):
                found = self._calls.get(delta_event.get("contentBlockIndex", 0))
                if found is not None:
                    out.append(self._chunks.tool_call_arguments(call_index=found, fragment=delta["toolUse"]["input"]))
        elif "messageStop" in event:
            self._finish = _finish_reason((event["messageStop"] or {}).get("stopReason"))
            out.extend(self._finish_chunk())
        elif "metadata" in event:
            self.usage = dict((event["metadata"] or {}).get("usage") or {})
            out.extend(self._usage_chunk())
        return out

    def finish(self) -> list[dict]:
        if self._failed or not self._started:
            return []
        return self._finish_chunk() + self._usage_chunk()

    def _start(self) -> list[dict]:
        if self._started:
            return []
        self._started = True
        return [self._chunks.role()]

    def _finish_chunk(self) -> list[dict]:
        if self._finish_sent or self._finish is None:
            return []
        self._finish_sent = True
        return [self._chunks.finish(self._finish)]

    def _usage_chunk(self) -> list[dict]:
        if not self.include_usage or self._usage_sent or not self.usage:
            return []
        self._usage_sent = True
        return [self._chunks.usage(usage_to_openai(self.usage))]


# --- errors --------------------------------------------------------------------------------


def error_from_provider(status: int, body: bytes) -> dict:
    """A Bedrock error answer (`{"message": ...}`, type in `x-amzn-errortype`) as an OpenAI error body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    message = None
    if isinstance(data, dict):
        message = data.get("message") or data.get("Message")
    text = str(message) if message else (oa.error_text(body) or f"Bedrock answered HTTP {status} without a body")
    kind = _ERROR_TYPES_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return oa.error(text, type=kind, code=kind)


def stream_event(frame_message_type: str, event_type: str, payload: Any) -> dict | None:
    """The `feed` input for one event-stream frame (see ChatStreamTranslator)."""
    if frame_message_type != "event":
        message = payload.get("message") if isinstance(payload, dict) else None
        return {"exception": {"type": event_type, "message": message}}
    if not isinstance(payload, dict):
        return None
    return {event_type: payload}


class TranslatingEventStream:
    """The `flow.response.stream` callable for OpenAI-format chat answered by ConverseStream.

    Event-stream frames in, OpenAI SSE chunks out, frame by frame as they
    arrive (the counterpart of `providers.chat_stream.TranslatingStream` for
    SSE providers); `data: [DONE]` at the end, and `on_end` gets the Converse usage.
    """

    def __init__(self, translator: ChatStreamTranslator, *, on_first: Any = None, on_end: Any = None) -> None:
        from tokensense.providers.bedrock.eventstream import FrameReader

        self.translator = translator
        self.reader = FrameReader()
        self.on_first = on_first
        self.on_end = on_end
        self.failed = False

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        if data:
            if self.on_first:
                self.on_first()
                self.on_first = None
            out = self._emit(data)
            return out if out else []  # an empty bytes would end a chunked HTTP/1.1 body
        out = b""
        if not self.failed:
            if self.reader.failed:
                out += _sse(oa.error("The Bedrock stream was corrupt; the answer is incomplete.", type="api_error",
                                     code="api_error"))
            else:
                out += b"".join(_sse(chunk) for chunk in self.translator.finish())
        out += b"data: [DONE]\n\n"
        if self.on_end:
            self.on_end(dict(self.translator.usage or {}))
        return out

    def _emit(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for frame in self.reader.feed(data):
            if self.failed:
                break
            event = stream_event(frame.message_type, frame.event_type, frame.json())
            if event is None:
                continue
            for chunk in self.translator.feed(event):
                out.append(_sse(chunk))
                if "error" in chunk:
                    self.failed = True
        return b"".join(out)


def _sse(chunk: dict) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
