"""OpenAI chat-completions pieces the provider translators share: reading requests, building answers and chunks."""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
import re
import time
import uuid
from typing import Any, NamedTuple
from urllib.parse import urlparse

from tokensense.providers.translation import TranslationError

REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")

# Thinking-token budgets for providers that take a number instead of a level
# (Anthropic models before Claude 4.6, Gemini 2.x). low/medium/high are the
# budgets Google's own OpenAI-compatible endpoint uses (1K, 8K, 24K);
# minimal is Anthropic's smallest allowed budget; xhigh and max get the largest
# budget Gemini 2.5 Pro accepts.
THINKING_BUDGETS: dict[str, int] = {
    "minimal": 1024,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
    "max": 32768,
}

# OpenAI parameters whose value is OpenAI's own default: sending them changes
# nothing, so they are accepted for every provider.
_OPENAI_DEFAULTS: dict[str, Any] = {
    "n": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "logit_bias": {},
    "store": False,
    "parallel_tool_calls": True,
    "modalities": ["text"],
}

# Accepted everywhere although no provider field receives them. None of them
# changes a word of the answer:
# - stream_options: read by ChatStreamTranslator (include_usage), not sent.
# - prompt_cache_key / prompt_cache_retention / prompt_cache_options: routing
#   and retention hints for OpenAI's own prompt cache; Anthropic and Gemini
#   cache by their own rules.
# - metadata: OpenAI keeps it with stored completions only, and store=true is
#   rejected, so it has no effect.
NO_EFFECT_PARAMS = frozenset(
    {"stream_options", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "metadata"}
)

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]*)*?);base64,(?P<data>.*)$", re.S)
_STATE_SEPARATOR = "__ts__"


# --- reading OpenAI requests ---------------------------------------------------------------


def present(body: dict) -> dict:
    """`body` without the keys set to null: OpenAI treats an explicit null like an absent key."""
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    return {key: value for key, value in body.items() if value is not None}


def reject_unmapped(body: dict, handled: set[str] | frozenset[str], provider: str) -> None:
    """Raise for the first parameter that `provider` cannot honour.

    Whitelist, not blacklist: a parameter OpenAI adds tomorrow is a 400 here
    until someone maps it, instead of being dropped on the way.
    """
    for key, value in body.items():
        if key in handled or key in NO_EFFECT_PARAMS:
            continue
        if key in _OPENAI_DEFAULTS and value == _OPENAI_DEFAULTS[key]:
            continue
        shown = f"{key}={value!r}" if isinstance(value, (int, float, str, bool)) else f"'{key}'"
        raise TranslationError(
            f"{shown} is not supported for {provider} models; remove it from the request",
            param=key,
            code="unsupported_parameter",
        )


def require_model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise TranslationError("'model' is required", param="model")
    return model


def require_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TranslationError("'messages' must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise TranslationError(f"messages[{i}] must be an object with a 'role'", param=f"messages[{i}]")
    return messages


def reject_message_fields(message: dict, i: int, allowed: set[str], provider: str) -> None:
    """Raise for message fields that have no place in the provider's format (`name`, `audio`, ...)."""
    for key, value in message.items():
        if key in allowed or value is None:
            continue
        raise TranslationError(
            f"messages[{i}].{key} is not supported for {provider} models; remove it from the message",
            param=f"messages[{i}].{key}",
            code="unsupported_parameter",
        )


def content_parts(content: Any, param: str) -> list[dict]:
    """A message's content as a list of parts: a string becomes one text part; None becomes no parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        return content
    raise TranslationError(f"{param} must be a string or a list of content parts", param=param)


def text_parts(content: Any, param: str) -> list[str]:
    """The texts of a content that may hold only text parts (system, developer and tool messages)."""
    texts = []
    for j, part in enumerate(content_parts(content, param)):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise TranslationError(
                f"{param}[{j}]: only text parts are allowed here, got type {part.get('type')!r}",
                param=f"{param}[{j}].type",
            )
        texts.append(part["text"])
    return texts


def parse_data_url(url: str) -> tuple[str, str] | None:
    """(mime type, base64 data) of a `data:...;base64,` URL, or None for any other URL."""
    match = _DATA_URL.match(url)
    if not match:
        return None
    data = match["data"].strip()
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    return (match["mime"] or "application/octet-stream").lower(), data


def guess_mime_type(url: str, default: str) -> str:
    """The mime type a URL's file extension suggests, or `default`."""
    guessed, _ = mimetypes.guess_type(urlparse(url).path)
    return guessed or default


def image_url(part: dict, param: str) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise TranslationError(f"{param}.image_url.url is required", param=f"{param}.image_url.url")
    # `detail` (low/high/auto) is OpenAI's resolution hint; neither Anthropic nor
    # Gemini take one per image, and it never changes what the model is asked.
    return url


class FilePart(NamedTuple):
    mime_type: str
    data: str  # base64


def file_part(part: dict, param: str) -> FilePart:
    """An OpenAI `file` content part given inline (`file_data`); `file_id` refers to OpenAI's file store."""
    file = part.get("file") or {}
    if file.get("file_id"):
        raise TranslationError(
            f"{param}.file.file_id refers to OpenAI's file storage, which other providers cannot read; "
            "send the file inline as file_data",
            param=f"{param}.file.file_id",
        )
    data = file.get("file_data")
    if not isinstance(data, str) or not data:
        raise TranslationError(f"{param}.file.file_data is required", param=f"{param}.file.file_data")
    parsed = parse_data_url(data)
    if parsed:
        return FilePart(*parsed)
    filename = file.get("filename") or ""
    return FilePart(guess_mime_type(filename, "application/pdf"), data)


def tool_call_arguments(arguments: Any, param: str) -> dict:
    """An assistant tool call's `arguments` string as the JSON object both providers require."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        parsed = json.loads(arguments)
    except (TypeError, json.JSONDecodeError) as e:
        raise TranslationError(f"{param} is not valid JSON ({e})", param=param) from e
    if not isinstance(parsed, dict):
        raise TranslationError(f"{param} must encode a JSON object", param=param)
    return parsed


def tool_result_value(text: str) -> Any:
    """A tool message's text as the value it encodes: parsed JSON when it is JSON, else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def stop_sequences(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise TranslationError("'stop' must be a string or a list of strings", param="stop")


def max_output_tokens(body: dict) -> int | None:
    """The client's output cap; `max_completion_tokens` wins over the deprecated `max_tokens`."""
    for key in ("max_completion_tokens", "max_tokens"):
        if key in body:
            value = body[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TranslationError(f"'{key}' must be a positive integer", param=key)
            return value
    return None


def reasoning_effort(body: dict) -> str | None:
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in REASONING_EFFORTS:
        raise TranslationError(
            f"reasoning_effort={effort!r} is not one of {', '.join(REASONING_EFFORTS)}", param="reasoning_effort"
        )
    return effort


class FunctionTool(NamedTuple):
    name: str
    description: str | None
    parameters: dict | None
    strict: bool


def function_tools(body: dict, provider: str) -> list[FunctionTool]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be a list", param="tools")
    result = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise TranslationError(
                f"tools[{i}]: only function tools can be translated for {provider} models, got type {kind!r}",
                param=f"tools[{i}].type",
            )
        function = tool.get("function") or {}
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError(f"tools[{i}].function.name is required", param=f"tools[{i}].function.name")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise TranslationError(
                f"tools[{i}].function.parameters must be a JSON schema object", param=f"tools[{i}].function.parameters"
            )
        result.append(FunctionTool(name, function.get("description"), parameters, bool(function.get("strict"))))
    return result


class ToolChoice(NamedTuple):
    mode: str  # "auto" | "none" | "required" | "function"
    name: str | None = None


def tool_choice(body: dict, provider: str) -> ToolChoice | None:
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if not body.get("tools"):
        raise TranslationError("'tool_choice' is only allowed when 'tools' are given", param="tool_choice")
    if choice in ("auto", "none", "required"):
        return ToolChoice(choice)
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str) and name:
            return ToolChoice("function", name)
        raise TranslationError("tool_choice.function.name is required", param="tool_choice.function.name")
    shown = choice.get("type") if isinstance(choice, dict) else choice
    raise TranslationError(
        f"tool_choice {shown!r} is not supported for {provider} models; use auto, none, required or a function",
        param="tool_choice",
    )


class ResponseFormat(NamedTuple):
    kind: str  # "json_object" | "json_schema"
    schema: dict | None = None


def response_format(body: dict) -> ResponseFormat | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise TranslationError(
                "response_format.json_schema.schema is required", param="response_format.json_schema.schema"
            )
        # `name` only labels the schema; `description` is kept inside the schema
        # where both providers read it. `strict` needs nothing: both providers
        # constrain decoding to the schema whenever one is given.
        if spec.get("description") and "description" not in schema:
            schema = {**schema, "description": spec["description"]}
        return ResponseFormat("json_schema", schema)
    raise TranslationError(f"response_format type {kind!r} is not supported", param="response_format.type")


def encode_tool_call_id(base: str, state: Any = None) -> str:
    """An OpenAI tool-call id carrying provider state the client will echo back unchanged.

    OpenAI's format has no place for Anthropic thinking blocks or Gemini thought
    signatures, which the providers require back with the tool calls of the turn
    in progress; every client returns the tool-call id verbatim, so they ride
    there, base64url-encoded after `__ts__`.
    """
    if not state:
        return base
    packed = base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")
    return f"{base}{_STATE_SEPARATOR}{packed}"


def decode_tool_call_id(tool_call_id: str) -> tuple[str, Any]:
    """(provider id, state) of an id made by `encode_tool_call_id`; foreign ids come back as (id, None)."""
    base, sep, packed = tool_call_id.partition(_STATE_SEPARATOR)
    if not sep:
        return tool_call_id, None
    try:
        return base, json.loads(base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4)))
    except (binascii.Error, ValueError):
        return tool_call_id, None


class AssistantToolCall(NamedTuple):
    id: str  # as the client sent it
    base_id: str  # without carried state
    state: Any
    name: str
    arguments: dict


def assistant_tool_calls(message: dict, i: int, provider: str) -> list[AssistantToolCall]:
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise TranslationError(f"messages[{i}].tool_calls must be a list", param=f"messages[{i}].tool_calls")
    result = []
    for j, call in enumerate(calls):
        param = f"messages[{i}].tool_calls[{j}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise TranslationError(
                f"{param}: only function tool calls can be translated for {provider} models", param=f"{param}.type"
            )
        call_id = call.get("id")
        function = call.get("function") or {}
        name = function.get("name")
        if not isinstance(call_id, str) or not call_id:
            raise TranslationError(f"{param}.id is required", param=f"{param}.id")
        if not isinstance(name, str) or not name:
            raise TranslationError(f"{param}.function.name is required", param=f"{param}.function.name")
        base, state = decode_tool_call_id(call_id)
        arguments = tool_call_arguments(function.get("arguments"), f"{param}.function.arguments")
        result.append(AssistantToolCall(call_id, base, state, name, arguments))
    return result


def assistant_texts(message: dict, i: int) -> list[str]:
    """The texts of an assistant message: text and refusal parts, or the `refusal` field of an earlier refusal."""
    texts = []
    for j, part in enumerate(content_parts(message.get("content"), f"messages[{i}].content")):
        kind = part.get("type")
        if kind == "text":
            texts.append(part.get("text") or "")
        elif kind == "refusal":
            texts.append(part.get("refusal") or "")
        else:
            raise TranslationError(
                f"messages[{i}].content[{j}]: assistant content parts must be text or refusal, got {kind!r}",
                param=f"messages[{i}].content[{j}].type",
            )
    if not texts and message.get("refusal"):
        texts.append(message["refusal"])
    return [text for text in texts if text]


# --- building OpenAI answers ---------------------------------------------------------------


def completion_id(provider_id: str | None) -> str:
    return f"chatcmpl-{provider_id or uuid.uuid4().hex}"


def tool_call(call_id: str, name: str, arguments: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def arguments_json(arguments: Any) -> str:
    return json.dumps(arguments if arguments is not None else {}, ensure_ascii=False, separators=(",", ":"))


def choice(index: int, *, content: str | None, tool_calls: list[dict], finish_reason: str | None) -> dict:
    message: dict = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def chat_completion(*, completion_id: str, model: str, choices: list[dict], usage: dict | None) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def usage(*, prompt: int, completion: int, cached: int = 0, reasoning: int = 0, cache_write: int = 0) -> dict:
    """OpenAI's usage object; prompt counts cached tokens, completion counts reasoning tokens (OpenAI's convention)."""
    prompt_details: dict = {"cached_tokens": cached}
    if cache_write:
        prompt_details["cache_write_tokens"] = cache_write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def error(message: str, *, type: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_text(body: bytes, limit: int = 2000) -> str:
    """A non-JSON error body as readable text, for the message of the error we answer with."""
    return body.decode("utf-8", errors="replace").strip()[:limit]


class ChunkBuilder:
    """Makes the `chat.completion.chunk` dicts of one stream: same id, created and model on every chunk.

    With `include_usage`, every chunk but the last carries `"usage": null` and
    the last one has `choices: []` and the usage, as OpenAI streams do.
    """

    def __init__(self, *, completion_id: str, model: str, include_usage: bool) -> None:
        self.completion_id = completion_id
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time())

    def _chunk(self, choices: list[dict]) -> dict:
        chunk = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def delta(self, delta: dict, *, index: int = 0, finish_reason: str | None = None) -> dict:
        return self._chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def role(self, *, index: int = 0) -> dict:
        return self.delta({"role": "assistant", "content": "", "refusal": None}, index=index)

    def content(self, text: str, *, index: int = 0) -> dict:
        return self.delta({"content": text}, index=index)

    def tool_call_start(self, *, call_index: int, call_id: str, name: str, index: int = 0) -> dict:
        call = {"index": call_index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        return self.delta({"tool_calls": [call]}, index=index)

    def tool_call_arguments(self, *, call_index: int, fragment: str, index: int = 0) -> dict:
        return self.delta({"tool_calls": [{"index": call_index, "function": {"arguments": fragment}}]}, index=index)

    def finish(self, finish_reason: str, *, index: int = 0) -> dict:
        return self.delta({}, index=index, finish_reason=finish_reason)

    def usage(self, usage: dict) -> dict:
        chunk = self._chunk([])
        chunk["usage"] = usage
        return chunk
