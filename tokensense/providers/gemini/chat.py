"""OpenAI chat completions ⇄ Gemini generateContent: requests, answers, streams, errors and usage.

Mapping decisions (each one is a 400 `TranslationError` where noted):

- The model and streaming live in the URL (`models/{model}:generateContent` or
  `:streamGenerateContent?alt=sse`), which the gateway builds: `model` and
  `stream` are read here but not put in the body.
- system and developer messages, wherever they stand, become
  `systemInstruction` parts in order. Roles are `user` and `model`; consecutive
  turns of one role are merged, so the `functionResponse` parts answering
  parallel calls share one user turn, as Gemini requires.
- Tool results become `functionResponse` parts named after the function of the
  earlier assistant tool call with that id (a 400 when no such call exists),
  with `response: {"result": <the tool's text parsed as JSON, else the text>}`.
- Gemini function calls usually carry no id: the OpenAI id is
  `call_` + the first 24 hex digits of sha256(responseId:candidate:call), the
  same streamed or not. A Gemini-given id is used as is. Thought signatures
  (required back with the calls of the turn in progress on Gemini 3) travel
  inside the tool-call id (`openai_format.encode_tool_call_id`) and return on
  the same `functionCall` part; an `extra_content.google.thought_signature` on
  a tool call (what Google's own OpenAI endpoint emits) is honoured too.
  Signatures on text parts are optional for Gemini and are not kept.
- Images: data URLs → `inlineData`; http(s) URLs → `fileData` with a mime type
  guessed from the extension (image/jpeg when there is none). `input_audio` →
  `inlineData` audio/<format>; inline `file` data → `inlineData`.
- `tools` → `functionDeclarations` with `parametersJsonSchema`; `tool_choice`
  auto/none/required/named → AUTO/NONE/ANY/ANY + allowedFunctionNames; a
  function with `strict: true` turns AUTO into VALIDATED (schema-checked calls).
- `parallel_tool_calls: false` is a 400 when tools may be called: Gemini has no
  switch for it and may answer with several calls. `true` is Gemini's behaviour.
- generationConfig: temperature, topP, topK, maxOutputTokens
  (`max_completion_tokens`, else `max_tokens`; both count thinking, like
  Gemini's), stopSequences, candidateCount (`n`), seed, presencePenalty,
  frequencyPenalty; `response_format` json_object → responseMimeType
  application/json, json_schema → the same plus responseJsonSchema.
- `reasoning_effort`: Gemini 3 and later → thinkingConfig.thinkingLevel
  (minimal/low/medium/high → MINIMAL/LOW/MEDIUM/HIGH, xhigh and max → XHIGH;
  "none" is a 400: these models always think); Gemini 2.x →
  thinkingConfig.thinkingBudget from `openai_format.THINKING_BUDGETS`, "none"
  → 0. Thought parts are never requested (no includeThoughts) and are skipped if
  present; thoughtsTokenCount is reported as reasoning tokens.
- `user` and `safety_identifier` identify the end user for OpenAI's abuse
  monitoring; Gemini has no such field and they change nothing in the answer,
  so they are accepted and not sent. `service_tier` auto/default likewise.
- `logprobs`, `logit_bias`, `verbosity`, audio output, `prediction`,
  `web_search_options`, legacy `functions`, message `name`, non-function tools
  and any parameter not listed here: 400 naming it.
- finishReason: STOP → stop (tool_calls when the candidate called functions),
  MAX_TOKENS → length, SAFETY/RECITATION/BLOCKLIST/PROHIBITED_CONTENT/SPII and
  the image variants → content_filter; a prompt blocked before any candidate
  (promptFeedback.blockReason) → one empty choice with content_filter. Reasons
  OpenAI has no word for (OTHER, MALFORMED_FUNCTION_CALL, ...) → stop.
- Errors: Google's status name becomes OpenAI `code`, with the nearest OpenAI
  `type`; a mid-stream `{"error": ...}` becomes an OpenAI error data event.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass

from tokensense.providers import chat_format as oa
from tokensense.providers.gemini.usage import usage_from_gemini
from tokensense.providers.translation import TranslationError

PROVIDER = "Gemini"

_HANDLED_PARAMS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",  # not OpenAI's, but sent by clients through extra_body; Gemini has it
        "stop",
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
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
_THINKING_LEVELS = {
    "minimal": "MINIMAL",
    "low": "LOW",
    "medium": "MEDIUM",
    "high": "HIGH",
    "xhigh": "XHIGH",
    "max": "XHIGH",
}
_CONTENT_FILTER_REASONS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
_ERROR_TYPES_BY_STATUS_NAME = {
    "INVALID_ARGUMENT": "invalid_request_error",
    "FAILED_PRECONDITION": "invalid_request_error",
    "OUT_OF_RANGE": "invalid_request_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "NOT_FOUND": "not_found_error",
    "RESOURCE_EXHAUSTED": "rate_limit_error",
    "INTERNAL": "server_error",
    "UNAVAILABLE": "server_error",
    "DEADLINE_EXCEEDED": "timeout_error",
}
_ERROR_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}
_MODEL_MAJOR = re.compile(r"^gemini-(?P<major>\d+)")
_SIGNATURE_STATE = "gemini_thought_signature"
_ID_STATE = "gemini_id"


# --- requests ------------------------------------------------------------------------------


def chat_request_to_provider(body: dict) -> dict:
    """An OpenAI chat-completions request body as a Gemini GenerateContentRequest body.

    The model and streaming go in the URL, which the gateway builds.
    """
    body = oa.present(body)
    oa.reject_unmapped(body, _HANDLED_PARAMS, PROVIDER)
    model = oa.require_model(body)
    system, contents = _contents(oa.require_messages(body))

    out: dict = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    _add_tools(out, body)
    if config := _generation_config(body, model):
        out["generationConfig"] = config
    if "service_tier" in body and body["service_tier"] not in ("auto", "default"):
        raise TranslationError(
            f"service_tier={body['service_tier']!r} is not supported for Gemini models; use auto or default",
            param="service_tier",
        )
    return out


def _contents(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    system: list[dict] = []
    contents: list[dict] = []
    calls_by_id: dict[str, oa.AssistantToolCall] = {}
    for i, message in enumerate(messages):
        role = message["role"]
        if role in ("system", "developer"):
            oa.reject_message_fields(message, i, {"role", "content"}, PROVIDER)
            texts = oa.text_parts(message.get("content"), f"messages[{i}].content")
            system.extend({"text": text} for text in texts if text)
        elif role == "user":
            oa.reject_message_fields(message, i, {"role", "content"}, PROVIDER)
            _append_turn(contents, "user", _user_parts(message, i))
        elif role == "assistant":
            oa.reject_message_fields(message, i, {"role", "content", "tool_calls", "refusal"}, PROVIDER)
            calls = oa.assistant_tool_calls(message, i, PROVIDER)
            calls_by_id.update((call.id, call) for call in calls)
            parts = [{"text": text} for text in oa.assistant_texts(message, i)]
            parts.extend(_function_call_part(call, message, j) for j, call in enumerate(calls))
            if parts:
                _append_turn(contents, "model", parts)
        elif role == "tool":
            oa.reject_message_fields(message, i, {"role", "content", "tool_call_id"}, PROVIDER)
            _append_turn(contents, "user", [_function_response_part(message, i, calls_by_id)])
        else:
            raise TranslationError(
                f"messages[{i}].role {role!r} cannot be translated for Gemini models "
                "(use system, developer, user, assistant or tool)",
                param=f"messages[{i}].role",
            )
    return system, contents


def _append_turn(contents: list[dict], role: str, parts: list[dict]) -> None:
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _user_parts(message: dict, i: int) -> list[dict]:
    parts = []
    for j, part in enumerate(oa.content_parts(message.get("content"), f"messages[{i}].content")):
        param = f"messages[{i}].content[{j}]"
        kind = part.get("type")
        if kind == "text":
            parts.append({"text": part.get("text") or ""})
        elif kind == "image_url":
            parts.append(_image_part(oa.image_url(part, param), param))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            if not audio.get("data") or not audio.get("format"):
                raise TranslationError(f"{param}.input_audio needs data and format", param=f"{param}.input_audio")
            parts.append({"inlineData": {"mimeType": f"audio/{audio['format']}", "data": audio["data"]}})
        elif kind == "file":
            file = oa.file_part(part, param)
            parts.append({"inlineData": {"mimeType": file.mime_type, "data": file.data}})
        else:
            raise TranslationError(
                f"{param}: content part type {kind!r} is not supported for Gemini models "
                "(text, image_url, input_audio and file are)",
                param=f"{param}.type",
            )
    return parts


def _image_part(url: str, param: str) -> dict:
    if url.startswith("data:"):
        parsed = oa.parse_data_url(url)
        if parsed is None:
            raise TranslationError(f"{param}.image_url.url is not a base64 data URL", param=f"{param}.image_url.url")
        mime, data = parsed
        return {"inlineData": {"mimeType": "image/jpeg" if mime == "image/jpg" else mime, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"fileData": {"mimeType": oa.guess_mime_type(url, "image/jpeg"), "fileUri": url}}
    raise TranslationError(f"{param}.image_url.url must be an http(s) or data URL", param=f"{param}.image_url.url")


def _function_call_part(call: oa.AssistantToolCall, message: dict, j: int) -> dict:
    state = call.state if isinstance(call.state, dict) else {}
    function_call: dict = {"name": call.name, "args": call.arguments}
    if state.get(_ID_STATE):
        function_call["id"] = call.base_id
    part: dict = {"functionCall": function_call}
    signature = state.get(_SIGNATURE_STATE) or _google_extra_signature(message, j)
    if signature:
        part["thoughtSignature"] = signature
    return part


def _google_extra_signature(message: dict, j: int) -> str | None:
    """The signature Google's own OpenAI-compatible endpoint puts on a tool call, if the client kept it."""
    extra = (message["tool_calls"][j] or {}).get("extra_content") or {}
    signature = (extra.get("google") or {}).get("thought_signature")
    return signature if isinstance(signature, str) else None


def _function_response_part(message: dict, i: int, calls_by_id: dict[str, oa.AssistantToolCall]) -> dict:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(f"messages[{i}].tool_call_id is required", param=f"messages[{i}].tool_call_id")
    call = calls_by_id.get(call_id)
    if call is None:
        raise TranslationError(
            f"messages[{i}].tool_call_id {call_id!r} matches no tool call of an earlier assistant message; "
            "Gemini needs the function's name, which only that call gives",
            param=f"messages[{i}].tool_call_id",
        )
    text = "".join(oa.text_parts(message.get("content"), f"messages[{i}].content"))
    response: dict = {"name": call.name, "response": {"result": oa.tool_result_value(text)}}
    if isinstance(call.state, dict) and call.state.get(_ID_STATE):
        response["id"] = call.base_id
    return {"functionResponse": response}


def _add_tools(out: dict, body: dict) -> None:
    tools = oa.function_tools(body, PROVIDER)
    choice = oa.tool_choice(body, PROVIDER)
    if tools:
        out["tools"] = [{"functionDeclarations": [_declaration(tool) for tool in tools]}]
    if body.get("parallel_tool_calls") is False and tools and (choice is None or choice.mode != "none"):
        raise TranslationError(
            "parallel_tool_calls=false is not supported for Gemini models: Gemini has no switch to limit "
            "an answer to one function call; remove it",
            param="parallel_tool_calls",
        )
    config: dict = {}
    if choice is not None:
        config["mode"] = {"auto": "AUTO", "none": "NONE", "required": "ANY", "function": "ANY"}[choice.mode]
        if choice.mode == "function":
            config["allowedFunctionNames"] = [choice.name]
    if any(tool.strict for tool in tools) and config.get("mode", "AUTO") == "AUTO":
        # OpenAI's strict promises schema-valid arguments; Gemini checks them in VALIDATED mode.
        config["mode"] = "VALIDATED"
    if config:
        out["toolConfig"] = {"functionCallingConfig": config}


def _declaration(tool: oa.FunctionTool) -> dict:
    declaration: dict = {"name": tool.name}
    if tool.description:
        declaration["description"] = tool.description
    if tool.parameters:
        declaration["parametersJsonSchema"] = tool.parameters
    return declaration


def _generation_config(body: dict, model: str) -> dict:
    config: dict = {}
    for key, name in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("n", "candidateCount"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if key in body:
            config[name] = body[key]
    if (max_tokens := oa.max_output_tokens(body)) is not None:
        config["maxOutputTokens"] = max_tokens
    if "stop" in body and (stops := oa.stop_sequences(body["stop"])):
        config["stopSequences"] = stops
    fmt = oa.response_format(body)
    if fmt is not None:
        config["responseMimeType"] = "application/json"
        if fmt.kind == "json_schema":
            config["responseJsonSchema"] = fmt.schema
    if (thinking := _thinking_config(body, model)) is not None:
        config["thinkingConfig"] = thinking
    return config


def uses_thinking_levels(model: str) -> bool:
    """Whether `model` takes thinkingLevel (Gemini 3 and later) rather than thinkingBudget.

    Names that carry no version (`gemini-flash-latest`) are taken to be current models.
    """
    match = _MODEL_MAJOR.match(model.rsplit("/", 1)[-1])
    return match is None or int(match["major"]) >= 3


def _thinking_config(body: dict, model: str) -> dict | None:
    effort = oa.reasoning_effort(body)
    if effort is None:
        return None
    if uses_thinking_levels(model):
        if effort == "none":
            raise TranslationError(
                "reasoning_effort='none' is not supported for this Gemini model: it always thinks; "
                "use 'minimal' or 'low'",
                param="reasoning_effort",
            )
        return {"thinkingLevel": _THINKING_LEVELS[effort]}
    return {"thinkingBudget": 0 if effort == "none" else oa.THINKING_BUDGETS[effort]}


# --- answers -------------------------------------------------------------------------------


def chat_response_from_provider(resp: dict, *, model: str) -> dict:
    """A Gemini GenerateContentResponse as an OpenAI `chat.completion`; `model` is the name the client asked for."""
    id_seed = resp.get("responseId") or uuid.uuid4().hex
    choices = []
    for position, candidate in enumerate(resp.get("candidates") or []):
        index = candidate.get("index", position)
        texts: list[str] = []
        tool_calls: list[dict] = []
        for part in (candidate.get("content") or {}).get("parts") or []:
            if part.get("thought"):
                continue
            if "functionCall" in part:
                tool_calls.append(_tool_call(part, id_seed, index, len(tool_calls)))
            elif "text" in part:
                texts.append(part["text"])
            # Other parts (code execution, generated images) come from features this translation never enables.
        finish = _finish_reason(candidate.get("finishReason"), called=bool(tool_calls))
        content = "".join(texts) if texts else (None if tool_calls or finish == "content_filter" else "")
        choices.append(oa.choice(index, content=content, tool_calls=tool_calls, finish_reason=finish))
    if not choices and (resp.get("promptFeedback") or {}).get("blockReason"):
        choices.append(oa.choice(0, content=None, tool_calls=[], finish_reason="content_filter"))
    return oa.chat_completion(
        completion_id=oa.completion_id(resp.get("responseId")),
        model=model,
        choices=choices,
        usage=usage_to_openai(resp.get("usageMetadata") or {}),
    )


def _tool_call(part: dict, id_seed: str, candidate: int, call: int) -> dict:
    function_call = part["functionCall"]
    state: dict = {}
    if function_call.get("id"):
        base = function_call["id"]
        state[_ID_STATE] = True
    else:
        digest = hashlib.sha256(f"{id_seed}:{candidate}:{call}".encode()).hexdigest()
        base = f"call_{digest[:24]}"
    if part.get("thoughtSignature"):
        state[_SIGNATURE_STATE] = part["thoughtSignature"]
    call_id = oa.encode_tool_call_id(base, state)
    return oa.tool_call(call_id, function_call.get("name", ""), oa.arguments_json(function_call.get("args")))


def _finish_reason(reason: str | None, *, called: bool) -> str:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _CONTENT_FILTER_REASONS:
        return "content_filter"
    return "tool_calls" if called else "stop"


def usage_to_openai(usage: dict) -> dict:
    """Gemini usageMetadata as OpenAI usage: thoughts count as completion (reasoning) tokens.

    Read through the metering reader, so a malformed counter is 0 here too (and logged once), never an error.
    """
    read = usage_from_gemini(usage)
    if read is None:
        return oa.usage(prompt=0, completion=0)
    return oa.usage(
        prompt=read.input_tokens,
        completion=read.output_tokens,
        cached=read.cached_input_tokens,
        reasoning=read.reasoning_tokens,
    )


# --- streams -------------------------------------------------------------------------------


@dataclass
class _Candidate:
    tool_calls: int = 0
    finished: bool = False


class ChatStreamTranslator:
    """Turns Gemini stream chunks (`streamGenerateContent?alt=sse`) into OpenAI `chat.completion.chunk` dicts."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.usage: dict = {}
        self._chunks: oa.ChunkBuilder | None = None
        self._id_seed = ""
        self._candidates: dict[int, _Candidate] = {}
        self._usage_sent = False
        self._failed = False

    def feed(self, event: dict) -> list[dict]:
        """One GenerateContentResponse chunk → the chunks to send now."""
        if "error" in event:
            self._failed = True
            return [_openai_error(event["error"], status=None)]
        if self._chunks is None:
            self._id_seed = event.get("responseId") or uuid.uuid4().hex
            self._chunks = oa.ChunkBuilder(
                completion_id=oa.completion_id(event.get("responseId")),
                model=self.model,
                include_usage=self.include_usage,
            )
        if event.get("usageMetadata"):
            self.usage = event["usageMetadata"]
        out: list[dict] = []
        candidates = event.get("candidates") or []
        if not candidates and (event.get("promptFeedback") or {}).get("blockReason"):
            state = self._candidate(0, out)
            if not state.finished:
                state.finished = True
                out.append(self._chunks.finish("content_filter"))
        for position, candidate in enumerate(candidates):
            index = candidate.get("index", position)
            state = self._candidate(index, out)
            for part in (candidate.get("content") or {}).get("parts") or []:
                if part.get("thought"):
                    continue
                if "functionCall" in part:
                    out.extend(self._tool_call(part, index, state))
                elif part.get("text"):
                    out.append(self._chunks.content(part["text"], index=index))
            if candidate.get("finishReason") and not state.finished:
                state.finished = True
                reason = _finish_reason(candidate["finishReason"], called=state.tool_calls > 0)
                out.append(self._chunks.finish(reason, index=index))
        return out

    def finish(self) -> list[dict]:
        """At the end of the stream: the usage chunk if it was asked for."""
        if self._failed or self._chunks is None or not self.include_usage or self._usage_sent:
            return []
        self._usage_sent = True
        return [self._chunks.usage(usage_to_openai(self.usage))]

    def _candidate(self, index: int, out: list[dict]) -> _Candidate:
        state = self._candidates.get(index)
        if state is None:
            state = self._candidates[index] = _Candidate()
            out.append(self._chunks.role(index=index))
        return state

    def _tool_call(self, part: dict, index: int, state: _Candidate) -> list[dict]:
        # Gemini sends each call whole: the id/name chunk, then all arguments in one chunk.
        call = _tool_call(part, self._id_seed, index, state.tool_calls)
        call_index = state.tool_calls
        state.tool_calls += 1
        function = call["function"]
        return [
            self._chunks.tool_call_start(call_index=call_index, call_id=call["id"], name=function["name"], index=index),
            self._chunks.tool_call_arguments(call_index=call_index, fragment=function["arguments"], index=index),
        ]


# --- errors --------------------------------------------------------------------------------


def error_from_provider(status: int, body: bytes) -> dict:
    """A Gemini error answer as an OpenAI error body; the caller keeps the HTTP status."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, list) and data:  # streamGenerateContent without alt=sse answers a JSON array
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and (error.get("message") or error.get("status")):
        return _openai_error(error, status=status)
    text = oa.error_text(body) or f"Gemini answered HTTP {status} without a body"
    return oa.error(text, type=_ERROR_TYPES_BY_STATUS.get(status, "api_error"))


def _openai_error(error: dict, *, status: int | None) -> dict:
    status_name = error.get("status")
    code = error.get("code") if isinstance(error.get("code"), int) else status
    error_type = _ERROR_TYPES_BY_STATUS_NAME.get(status_name or "") or _ERROR_TYPES_BY_STATUS.get(
        code or 500, "api_error"
    )
    message = error.get("message") or f"Gemini answered with {status_name or code}"
    return oa.error(message, type=error_type, code=status_name)
