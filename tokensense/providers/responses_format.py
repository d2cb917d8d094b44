"""OpenAI Responses API pieces the provider translators share: reading requests, building answers and SSE events.

A Responses request is read into an OpenAI chat-completions request (`to_chat_request`) so that the chat
translators (providers/anthropic/chat.py, providers/gemini/chat.py) build the provider body: one mapping of
roles, images, tools and reasoning effort for both client formats. What the chat format has no word for is
checked here first, so a 400 names the Responses field (`input[3].type`, `text.format`), and a 400 raised by a
chat translator is renamed back (`messages[2]` → `input[1]`, `response_format` → `text.format`).

Provider state that must come back with the next request (Anthropic thinking blocks, Gemini thought
signatures) rides in the function call's `call_id`, exactly as in chat translation (`chat_format
.encode_tool_call_id`); reasoning items in the input are therefore not needed and are skipped. Reasoning
items in the output show the model's thinking: with a `summary_text` when the request asked for a summary
(`reasoning.summary`), empty otherwise, as OpenAI does.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, NamedTuple

from tokensense.providers import chat_format as oa
from tokensense.providers.translation import TranslationError

_HANDLED_PARAMS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "stream",
        "max_output_tokens",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "reasoning",
        "user",
        "safety_identifier",
        "service_tier",
        "store",
        "include",
        "metadata",
        "max_tool_calls",
    }
)
# Accepted everywhere and sent nowhere; none changes a word of the answer:
# - stream_options (include_obfuscation pads deltas against side channels; there is nothing to pad),
# - prompt_cache_key / prompt_cache_retention / prompt_cache_options: hints for OpenAI's own prompt cache,
# - max_tool_calls caps OpenAI's built-in tools, which are never sent to another provider.
# - client_metadata: labels for OpenAI's own logs (Codex sends its session and turn ids there).
_NO_EFFECT_PARAMS = frozenset(
    {"stream_options", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "client_metadata"}
)
NAMESPACE_SEPARATOR = "__"
"""Joins a namespace and a function name (`multi_agent_v1__spawn_agent`): other providers have no namespaces."""
# Parameters whose value is OpenAI's default: sending them changes nothing.
_DEFAULTS: dict[str, Any] = {"background": False, "truncation": "disabled", "top_logprobs": 0, "parallel_tool_calls": True}
# `include` asks for extra fields in the answer; these concern tools that are never translated (so there is
# nothing to include) or reasoning content, which translated answers carry in the call ids instead.
_HARMLESS_INCLUDES = frozenset(
    {
        "reasoning.encrypted_content",
        "web_search_call.action.sources",
        "web_search_call.results",
        "file_search_call.results",
        "code_interpreter_call.outputs",
        "computer_call_output.output.image_url",
        "message.input_image.image_url",
    }
)
_CHAT_PARAM_NAMES = {
    "response_format": "text.format",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
}
_MESSAGE_INDEX = re.compile(r"messages\[(\d+)\]")
_SUMMARY_MODES = ("auto", "concise", "detailed")


# Headers of the Responses WebSocket handshake that belong to the socket, not to the HTTP call of each of its
# responses: the beta flag naming the socket protocol (`OpenAI-Beta: responses_websockets=2026-02-06`).
SOCKET_HANDSHAKE_HEADERS = frozenset({"openai-beta"})


def compact_refusal(requested: str, provider: str) -> str:
    """Why `POST /v1/responses/compact` is not served for a model whose Responses calls are translated.

    OpenAI's compact answers the user messages plus one `compaction` item whose `encrypted_content`
    only OpenAI's models can read back; nothing TokenSense could write there means anything to
    another provider. Codex calls it only for its built-in OpenAI provider (codex-rs
    `should_use_remote_compact_task`) and compacts locally, with a normal turn, otherwise.
    """
    return (f"POST /v1/responses/compact is served for OpenAI models only: its `compaction` item is encrypted "
            f"content that only OpenAI can read, so `{requested}` ({provider}) cannot produce one. Compact with a "
            "normal request instead (Codex does this by itself with a custom model provider).")


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}{uuid.uuid4().hex[:16]}"


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# --- reading Responses requests ------------------------------------------------------------------


class ChatRequest(NamedTuple):
    body: dict
    """The request as an OpenAI chat-completions body."""
    origins: list[str]
    """For each chat message, the Responses field it came from (`instructions`, `input[2]`)."""
    summary: bool
    """Whether the client asked for reasoning summaries (`reasoning.summary`)."""


def to_chat_request(body: dict, provider: str) -> ChatRequest:
    """A Responses request body as an OpenAI chat-completions body for the chat translators.

    Raises TranslationError naming the Responses field for anything the chat format (and so the
    translators) cannot carry.
    """
    body = oa.present(body)
    _reject_unmapped(body, provider)
    model = oa.require_model(body)
    messages: list[dict] = []
    origins: list[str] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise TranslationError("'instructions' must be a string", param="instructions")
        if instructions:
            messages.append({"role": "system", "content": instructions})
            origins.append("instructions")
    for i, item in enumerate(_input_items(body)):
        message = _chat_message(item, i, provider)
        if message is not None:
            messages.append(message)
            origins.append(f"input[{i}]")
    if not messages:
        raise TranslationError("'input' must hold at least one message", param="input")

    chat: dict = {"model": model, "messages": messages}
    if "stream" in body:
        chat["stream"] = bool(body["stream"])
    for key in ("temperature", "top_p", "user", "safety_identifier", "service_tier", "parallel_tool_calls"):
        if key in body:
            chat[key] = body[key]
    if "max_output_tokens" in body:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    tools = _tools(body, provider)
    if tools:
        chat["tools"] = tools
    if "tool_choice" in body:
        chat["tool_choice"] = _tool_choice(body["tool_choice"], provider)
    if (fmt := _text_format(body, provider)) is not None:
        chat["response_format"] = fmt
    effort, summary = _reasoning(body)
    if effort is not None:
        chat["reasoning_effort"] = effort
    return ChatRequest(chat, origins, summary)


def renamed(error: TranslationError, origins: list[str]) -> TranslationError:
    """A chat translator's error with chat field names replaced by the Responses fields they came from."""

    def origin(match: re.Match) -> str:
        index = int(match[1])
        return origins[index] if index < len(origins) else match[0]

    def rename(text: str) -> str:
        text = _MESSAGE_INDEX.sub(origin, text)
        for chat_name, responses_name in _CHAT_PARAM_NAMES.items():
            text = re.sub(rf"(?<![\w.]){chat_name}(?![\w])", responses_name, text)
        return text

    param = rename(error.param) if error.param else error.param
    return TranslationError(rename(error.message), param=param, code=error.code)


def _reject_unmapped(body: dict, provider: str) -> None:
    for key, value in body.items():
        if key in _HANDLED_PARAMS or key in _NO_EFFECT_PARAMS:
            continue
        if key in _DEFAULTS and value == _DEFAULTS[key]:
            continue
        if key == "previous_response_id":
            raise TranslationError(
                f"previous_response_id {value!r} is unknown to TokenSense: it serves previous_response_id for "
                f"{provider} models only from responses made through it with store enabled; send the whole "
                "conversation in 'input' instead",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        shown = f"{key}={value!r}" if isinstance(value, (int, float, str, bool)) else f"'{key}'"
        raise TranslationError(
            f"{shown} is not supported for {provider} models; remove it from the request",
            param=key,
            code="unsupported_parameter",
        )
    for j, include in enumerate(body.get("include") or []):
        if include not in _HARMLESS_INCLUDES:
            raise TranslationError(
                f"include value {include!r} is not supported for {provider} models", param=f"include[{j}]"
            )


def _input_items(body: dict) -> list[dict]:
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise TranslationError("'input' must be a string or a list of input items", param="input")
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise TranslationError(f"input[{i}] must be an object", param=f"input[{i}]")
    return raw


def _chat_message(item: dict, i: int, provider: str) -> dict | None:
    kind = item.get("type") or ("message" if "role" in item else None)
    param = f"input[{i}]"
    if kind == "message":
        return _message(item, param, provider)
    if kind == "function_call":
        for name in ("call_id", "name"):
            if not isinstance(item.get(name), str) or not item[name]:
                raise TranslationError(f"{param}.{name} is required", param=f"{param}.{name}")
        arguments = item.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            raise TranslationError(f"{param}.arguments must be a JSON string", param=f"{param}.arguments")
        name = item["name"]
        if isinstance(item.get("namespace"), str) and item["namespace"]:
            name = f"{item['namespace']}{NAMESPACE_SEPARATOR}{name}"
        call = oa.tool_call(item["call_id"], name, arguments or "{}")
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if kind == "function_call_output":
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise TranslationError(f"{param}.call_id is required", param=f"{param}.call_id")
        return {"role": "tool", "tool_call_id": call_id, "content": _tool_output(item.get("output"), param, provider)}
    if kind == "reasoning":
        # Translated answers carry the provider's reasoning state in the call ids (see the module docstring);
        # a reasoning item from an OpenAI model cannot be read by another provider and changes no instruction.
        return None
    if kind == "item_reference":
        raise TranslationError(
            f"{param}: item_reference points into OpenAI's storage, which {provider} models cannot read; "
            "send the item itself",
            param=f"{param}.type",
        )
    raise TranslationError(
        f"{param}: input items of type {kind!r} cannot be translated for {provider} models "
        "(message, function_call, function_call_output and reasoning can)",
        param=f"{param}.type",
    )


def _message(item: dict, param: str, provider: str) -> dict:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise TranslationError(
            f"{param}.role {role!r} is not one of user, assistant, system, developer", param=f"{param}.role"
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise TranslationError(f"{param}.content must be a string or a list of content parts", param=f"{param}.content")
    parts = []
    for j, part in enumerate(content):
        part_param = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if role == "assistant":
            if kind == "output_text":
                parts.append({"type": "text", "text": part.get("text") or ""})
            elif kind == "refusal":
                parts.append({"type": "refusal", "refusal": part.get("refusal") or ""})
            else:
                raise TranslationError(
                    f"{part_param}: assistant content must be output_text or refusal, got {kind!r}",
                    param=f"{part_param}.type",
                )
        elif kind in ("input_text", "output_text"):
            parts.append({"type": "text", "text": part.get("text") or ""})
        elif kind == "input_image" and role == "user":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(part, part_param, provider)}})
        elif kind == "input_file" and role == "user":
            parts.append({"type": "file", "file": _file(part, part_param, provider)})
        else:
            allowed = "input_text, input_image and input_file" if role == "user" else "input_text"
            raise TranslationError(
                f"{part_param}: content part type {kind!r} is not supported in a {role} message for {provider} "
                f"models ({allowed} are)",
                param=f"{part_param}.type",
            )
    return {"role": role, "content": parts}


def _image_url(part: dict, param: str, provider: str) -> str:
    if part.get("file_id"):
        raise TranslationError(
            f"{param}.file_id refers to OpenAI's file storage, which {provider} models cannot read; "
            "send image_url (a data URL or an http(s) URL)",
            param=f"{param}.file_id",
        )
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise TranslationError(f"{param}.image_url is required", param=f"{param}.image_url")
    # `detail` is OpenAI's resolution hint; neither provider takes one per image.
    return url


def _file(part: dict, param: str, provider: str) -> dict:
    for field in ("file_id", "file_url"):
        if part.get(field):
            raise TranslationError(
                f"{param}.{field} is not supported for {provider} models; send the file inline as file_data",
                param=f"{param}.{field}",
            )
    data = part.get("file_data")
    if not isinstance(data, str) or not data:
        raise TranslationError(f"{param}.file_data is required", param=f"{param}.file_data")
    file = {"file_data": data}
    if part.get("filename"):
        file["filename"] = part["filename"]
    return file


def _tool_output(output: Any, param: str, provider: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("input_text", "output_text"):
                raise TranslationError(
                    f"{param}.output[{j}]: only text can be a function output for {provider} models, got {kind!r}",
                    param=f"{param}.output[{j}].type",
                )
            texts.append(part.get("text") or "")
        return "".join(texts)
    raise TranslationError(f"{param}.output must be a string or a list of content parts", param=f"{param}.output")


def _tools(body: dict, provider: str) -> list[dict]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be a list", param="tools")
    result = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "namespace" and isinstance(tool.get("tools"), list):
            result.extend(_namespace_tools(tool, i, provider))
            continue
        if kind != "function":
            raise TranslationError(
                f"tools[{i}]: only function tools can be translated for {provider} models, got type {kind!r}",
                param=f"tools[{i}].type",
            )
        function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if tool.get(key) is not None}
        result.append({"type": "function", "function": function})
    return result


def _namespace_tools(namespace: dict, i: int, provider: str) -> list[dict]:
    """A namespace's function tools, each named `namespace__function` (see `split_namespace`)."""
    prefix = namespace.get("name")
    if not isinstance(prefix, str) or not prefix:
        raise TranslationError(f"tools[{i}].name is required", param=f"tools[{i}].name")
    result = []
    for j, tool in enumerate(namespace["tools"]):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not tool.get("name"):
            raise TranslationError(
                f"tools[{i}].tools[{j}]: only function tools can be translated for {provider} models",
                param=f"tools[{i}].tools[{j}].type",
            )
        function = {key: tool[key] for key in ("description", "parameters", "strict") if tool.get(key) is not None}
        function["name"] = f"{prefix}{NAMESPACE_SEPARATOR}{tool['name']}"
        result.append({"type": "function", "function": function})
    return result


def split_namespace(name: str, request: dict | None) -> tuple[str, str | None]:
    """(function name, namespace) of a called function, for the namespaces the request declared."""
    for tool in (request or {}).get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "namespace" and isinstance(tool.get("name"), str):
            prefix = tool["name"] + NAMESPACE_SEPARATOR
            if name.startswith(prefix):
                return name[len(prefix):], tool["name"]
    return name, None


def _tool_choice(choice: Any, provider: str) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError("tool_choice.name is required", param="tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    shown = choice.get("type") if isinstance(choice, dict) else choice
    raise TranslationError(
        f"tool_choice {shown!r} is not supported for {provider} models; use auto, none, required or a function",
        param="tool_choice",
    )


def _text_format(body: dict, provider: str) -> dict | None:
    text = body.get("text")
    if text is None:
        return None
    if not isinstance(text, dict):
        raise TranslationError("'text' must be an object", param="text")
    for key, value in text.items():
        if key == "verbosity" and value in ("medium", None):
            continue  # OpenAI's default; other levels have no switch elsewhere
        if key != "format":
            shown = f"text.{key}={value!r}" if isinstance(value, str) else f"text.{key}"
            raise TranslationError(
                f"{shown} is not supported for {provider} models; remove it", param=f"text.{key}",
                code="unsupported_parameter",
            )
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise TranslationError("text.format.schema is required", param="text.format.schema")
        spec = {"name": fmt.get("name") or "response", "schema": schema}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        return {"type": "json_schema", "json_schema": spec}
    raise TranslationError(f"text.format type {kind!r} is not supported", param="text.format.type")


def _reasoning(body: dict) -> tuple[str | None, bool]:
    reasoning = body.get("reasoning")
    if reasoning is None:
        return None, False
    if not isinstance(reasoning, dict):
        raise TranslationError("'reasoning' must be an object", param="reasoning")
    summary = reasoning.get("summary") or reasoning.get("generate_summary")
    if summary is not None and summary not in _SUMMARY_MODES:
        raise TranslationError(
            f"reasoning.summary={summary!r} is not one of {', '.join(_SUMMARY_MODES)}", param="reasoning.summary"
        )
    for key in reasoning:
        if key not in ("effort", "summary", "generate_summary"):
            raise TranslationError(f"reasoning.{key} is not supported", param=f"reasoning.{key}")
    return reasoning.get("effort"), summary is not None


def with_previous_conversation(body: dict, items: list[dict]) -> dict:
    """`body` with the stored conversation of its `previous_response_id` put before its input.

    `items` are the input and output items of every earlier response of the chain, oldest first
    (instructions are not carried over, as OpenAI does not carry them either).
    """
    out = {key: value for key, value in body.items() if key != "previous_response_id"}
    current = body.get("input")
    if isinstance(current, str):
        current = [{"type": "message", "role": "user", "content": current}]
    out["input"] = [*items, *(current or [])]
    return out


def input_items_of(body: dict) -> list[dict]:
    """A request's `input` as a list of items (a string is one user message), to store with its answer."""
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    return [item for item in raw or [] if isinstance(item, dict)]


# --- building Responses answers ------------------------------------------------------------------


def usage_from_chat(chat_usage: dict) -> dict:
    """An OpenAI chat usage object (as the chat translators make them) in Responses terms."""
    prompt = chat_usage.get("prompt_tokens") or 0
    completion = chat_usage.get("completion_tokens") or 0
    prompt_details = chat_usage.get("prompt_tokens_details") or {}
    completion_details = chat_usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": prompt_details.get("cached_tokens") or 0,
            "cache_write_tokens": prompt_details.get("cache_write_tokens") or 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": completion_details.get("reasoning_tokens") or 0},
        "total_tokens": prompt + completion,
    }


def message_item(text: str, *, item_id: str | None = None, status: str = "completed") -> dict:
    return {
        "id": item_id or new_item_id("msg"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [output_text(text)],
    }


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(call_id: str, name: str, arguments: str, *, item_id: str | None = None,
                       status: str = "completed", request: dict | None = None) -> dict:
    name, namespace = split_namespace(name, request)
    item = {
        "id": item_id or new_item_id("fc"),
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }
    if namespace:
        item["namespace"] = namespace
    return item


def reasoning_item(summary: list[str], *, item_id: str | None = None) -> dict:
    return {
        "id": item_id or new_item_id("rs"),
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text} for text in summary],
    }


class Outcome(NamedTuple):
    """How an answer ended, in Responses terms."""

    status: str  # completed | incomplete | failed
    incomplete_reason: str | None = None  # max_output_tokens | content_filter


COMPLETED = Outcome("completed")


def ended_output(output: list[dict], outcome: Outcome) -> list[dict]:
    """The output items of a finished response: message items say `incomplete` when the response is."""
    if outcome.status != "incomplete":
        return output
    return [{**item, "status": "incomplete"} if item["type"] == "message" else item for item in output]


def response_object(*, response_id: str, model: str, request: dict | None, output: list[dict], usage: dict | None,
                    outcome: Outcome = COMPLETED, status: str | None = None, created_at: int | None = None,
                    error: dict | None = None) -> dict:
    """A whole `response` object; the request's settings are echoed as OpenAI echoes them."""
    request = request or {}
    reasoning: dict = request["reasoning"] if isinstance(request.get("reasoning"), dict) else {}
    text: dict = request["text"] if isinstance(request.get("text"), dict) else {}
    status = status or outcome.status
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at or int(time.time()),
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": outcome.incomplete_reason} if outcome.incomplete_reason else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"),
        "model": model,
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": request.get("safety_identifier"),
        "service_tier": request.get("service_tier") or "default",
        "store": request.get("store", True),
        "temperature": request.get("temperature", 1.0),
        "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity") or "medium"},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_logprobs": 0,
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def wants_summary(request: dict | None) -> bool:
    reasoning = (request or {}).get("reasoning")
    return isinstance(reasoning, dict) and bool(reasoning.get("summary") or reasoning.get("generate_summary"))


# --- building Responses streams ------------------------------------------------------------------


class _OpenItem:
    __slots__ = ("index", "item", "parts", "arguments_sent")

    def __init__(self, index: int, item: dict) -> None:
        self.index = index
        self.item = item
        self.parts: list[str] = []
        self.arguments_sent = False


class ResponseEvents:
    """Makes the SSE event dicts of one Responses stream: sequence numbers, output indexes, item lifecycles.

    Provider stream translators call `text_*`, `call_*` and `reasoning_*` with a key of their own (an
    Anthropic block index, a Gemini part kind) and end with `complete` or `fail`. The events are those
    OpenAI sends, in its order, so the openai SDK's `responses.stream` rebuilds the same response it would
    get unstreamed.
    """

    def __init__(self, *, model: str, request: dict | None, response_id: str | None = None) -> None:
        self.model = model
        self.request = request or {}
        self.response_id = response_id or new_response_id()
        self.created_at = int(time.time())
        self.summary = wants_summary(request)
        self.output: list[dict | None] = []
        self.final: dict | None = None
        self._sequence = 0
        self._open: dict[Any, _OpenItem] = {}

    def _event(self, kind: str, **fields: Any) -> dict:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _response(self, status: str, **kwargs: Any) -> dict:
        return response_object(response_id=self.response_id, model=self.model, request=self.request,
                               created_at=self.created_at, status=status, **kwargs)

    def start(self) -> list[dict]:
        started = self._response("in_progress", output=[], usage=None)
        return [self._event("response.created", response=started), self._event("response.in_progress", response=started)]

    def is_open(self, key: Any) -> bool:
        return key in self._open

    def _add(self, key: Any, item: dict) -> tuple[_OpenItem, dict]:
        opened = _OpenItem(len(self.output), item)
        self.output.append(None)
        self._open[key] = opened
        return opened, self._event("response.output_item.added", output_index=opened.index, item=dict(item))

    def _done(self, opened: _OpenItem, item: dict) -> dict:
        self.output[opened.index] = item
        return self._event("response.output_item.done", output_index=opened.index, item=item)

    # messages

    def text_start(self, key: Any) -> list[dict]:
        item = message_item("", status="in_progress")
        item["content"] = []
        opened, added = self._add(key, item)
        ids = {"item_id": item["id"], "output_index": opened.index, "content_index": 0}
        return [added, self._event("response.content_part.added", **ids, part=output_text(""))]

    def text_delta(self, key: Any, delta: str) -> list[dict]:
        opened = self._open[key]
        opened.parts.append(delta)
        ids = {"item_id": opened.item["id"], "output_index": opened.index, "content_index": 0}
        return [self._event("response.output_text.delta", **ids, delta=delta, logprobs=[])]

    def text_end(self, key: Any, *, status: str = "completed") -> list[dict]:
        opened = self._open.pop(key)
        text = "".join(opened.parts)
        ids = {"item_id": opened.item["id"], "output_index": opened.index, "content_index": 0}
        return [
            self._event("response.output_text.done", **ids, text=text, logprobs=[]),
            self._event("response.content_part.done", **ids, part=output_text(text)),
            self._done(opened, message_item(text, item_id=opened.item["id"], status=status)),
        ]

    # function calls

    def call_start(self, key: Any, *, call_id: str, name: str) -> list[dict]:
        _, added = self._add(key, function_call_item(call_id, name, "", status="in_progress", request=self.request))
        return [added]

    def call_delta(self, key: Any, fragment: str) -> list[dict]:
        opened = self._open[key]
        opened.parts.append(fragment)
        opened.arguments_sent = True
        return [self._event("response.function_call_arguments.delta", item_id=opened.item["id"],
                            output_index=opened.index, delta=fragment)]

    def call_end(self, key: Any, *, empty_arguments: str = "{}") -> list[dict]:
        out = [] if self._open[key].arguments_sent else self.call_delta(key, empty_arguments)
        opened = self._open.pop(key)
        arguments = "".join(opened.parts)
        item = {**opened.item, "arguments": arguments, "status": "completed"}
        out.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=opened.index,
                               name=item["name"], arguments=arguments))
        out.append(self._done(opened, item))
        return out

    # reasoning

    def reasoning_start(self, key: Any) -> list[dict]:
        opened, added = self._add(key, reasoning_item([]))
        out = [added]
        if self.summary:
            out.append(self._event("response.reasoning_summary_part.added", item_id=opened.item["id"],
                                   output_index=opened.index, summary_index=0,
                                   part={"type": "summary_text", "text": ""}))
        return out

    def reasoning_delta(self, key: Any, text: str) -> list[dict]:
        opened = self._open[key]
        opened.parts.append(text)
        if not self.summary or not text:
            return []
        return [self._event("response.reasoning_summary_text.delta", item_id=opened.item["id"],
                            output_index=opened.index, summary_index=0, delta=text)]

    def reasoning_end(self, key: Any) -> list[dict]:
        opened = self._open.pop(key)
        out = []
        text = "".join(opened.parts)
        ids = {"item_id": opened.item["id"], "output_index": opened.index, "summary_index": 0}
        if self.summary:
            out.append(self._event("response.reasoning_summary_text.done", **ids, text=text))
            out.append(self._event("response.reasoning_summary_part.done", **ids,
                                   part={"type": "summary_text", "text": text}))
        out.append(self._done(opened, reasoning_item([text] if self.summary else [], item_id=opened.item["id"])))
        return out

    # the end

    def close_all(self, *, status: str = "completed") -> list[dict]:
        """Ends every item still open (a stream that stops early leaves some open)."""
        out: list[dict] = []
        for key, opened in list(self._open.items()):
            kind = opened.item["type"]
            if kind == "message":
                out.extend(self.text_end(key, status=status))
            elif kind == "function_call":
                out.extend(self.call_end(key))
            else:
                out.extend(self.reasoning_end(key))
        return out

    def complete(self, outcome: Outcome, usage: dict | None) -> list[dict]:
        out = self.close_all(status="incomplete" if outcome.status == "incomplete" else "completed")
        # The provider says why it stopped after the last item ended; the final object says it per item.
        output = ended_output([item for item in self.output if item is not None], outcome)
        self.final = self._response(outcome.status, output=output, usage=usage, outcome=outcome)
        kind = "response.incomplete" if outcome.status == "incomplete" else "response.completed"
        out.append(self._event(kind, response=self.final))
        return out

    def fail(self, *, code: str, message: str, usage: dict | None = None) -> list[dict]:
        """An `error` event, the open items ended as incomplete, then `response.failed` with what was produced."""
        out = [self._event("error", code=code, message=message, param=None)]
        out.extend(self.close_all(status="incomplete"))
        error = {"code": code, "message": message}
        self.final = self._response("failed", output=[item for item in self.output if item is not None],
                                    usage=usage, outcome=Outcome("failed"), error=error)
        out.append(self._event("response.failed", response=self.final))
        return out


def input_tokens_answer(tokens: object) -> dict:
    """The answer of `POST /v1/responses/input_tokens` (openai-python `InputTokenCountResponse`)."""
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise ValueError("the provider's token count is missing")
    return {"object": "response.input_tokens", "input_tokens": tokens}
