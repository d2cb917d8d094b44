"""Deterministic replies and token counts shared by every fake provider format.

Token formula (see docs/fake-provider.md):

- prompt tokens = whitespace-separated words in every text of the request
  + 10 per image (or document) part, at least 1;
- output tokens = words in the reply text + words in each tool call's JSON
  arguments string (`json.dumps(args)`), at least 1.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

IMAGE_TOKENS = 10
"""Prompt tokens counted for each image (or document) part."""

SCHEMA_STRING = "Paris"
MAX_SCHEMA_DEPTH = 8


class ControlError(ValueError):
    """A malformed `x-fake-*` header; answered as a 400 in the provider's shape."""


def count_words(text: str) -> int:
    return len(text.split())


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + uuid.uuid4().hex[:length]


@dataclass(frozen=True, slots=True)
class Controls:
    """What the `x-fake-*` request headers asked for."""

    reply: str | None = None
    status: int | None = None
    delay: float = 0.0
    chunks: int | None = None
    chunk_delay: float = 0.0
    broken: str | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    tool_calls: int = 1
    usage: dict[str, Any] | None = None
    """`x-fake-usage`: the usage object to answer verbatim (OpenAI `usage`, Anthropic `usage`, Gemini `usageMetadata`)."""
    service_tier: str | None = None
    """`x-fake-service-tier`: the `service_tier` an OpenAI answer names."""


NO_CONTROLS = Controls()


def _int_header(headers: Mapping[str, str], name: str, *, minimum: int) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise ControlError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ControlError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float_header(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        raise ControlError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ControlError(f"{name} must not be negative, got {raw!r}")
    return value


def _reply_header(raw: str | None) -> str | None:
    """`x-fake-reply` is plain ASCII, or `b64:` + base64 of UTF-8 text."""
    if raw is None or not raw.startswith("b64:"):
        return raw
    try:
        return base64.b64decode(raw[4:], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ControlError("x-fake-reply starting with 'b64:' must be base64 of UTF-8 text") from None


def _usage_header(raw: str | None) -> dict[str, Any] | None:
    """`x-fake-usage` is a JSON object, or `b64:` + base64 of one."""
    if raw is None:
        return None
    text = raw
    if raw.startswith("b64:"):
        try:
            text = base64.b64decode(raw[4:], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ControlError("x-fake-usage starting with 'b64:' must be base64 of a UTF-8 JSON object") from None
    try:
        usage = json.loads(text)
    except ValueError:
        raise ControlError("x-fake-usage must be a JSON object (the provider's usage object)") from None
    if not isinstance(usage, dict):
        raise ControlError("x-fake-usage must be a JSON object (the provider's usage object)")
    return usage


def parse_controls(headers: Mapping[str, str]) -> Controls:
    """Read the `x-fake-*` headers; the common case (none given) costs one scan."""
    if not any(key[:7].lower() == "x-fake-" for key in headers.keys()):
        return NO_CONTROLS
    status = _int_header(headers, "x-fake-status", minimum=100)
    chunk_delay_ms = _float_header(headers, "x-fake-chunk-delay-ms")
    broken = headers.get("x-fake-broken")
    if broken is not None:
        broken = broken.strip().lower()
        if broken in ("", "0", "false", "no"):
            broken = None
        elif broken not in ("1", "true", "yes", "reset"):
            raise ControlError(f"x-fake-broken must be 1 (close mid-response) or reset (close before answering), got {broken!r}")
    return Controls(
        reply=_reply_header(headers.get("x-fake-reply")),
        status=status if status is not None and status >= 400 else None,
        delay=_float_header(headers, "x-fake-delay") or 0.0,
        chunks=_int_header(headers, "x-fake-chunks", minimum=1),
        chunk_delay=(chunk_delay_ms or 0.0) / 1000.0,
        broken=broken,
        cached_tokens=_int_header(headers, "x-fake-cached-tokens", minimum=0) or 0,
        cache_write_tokens=_int_header(headers, "x-fake-cache-write-tokens", minimum=0) or 0,
        reasoning_tokens=_int_header(headers, "x-fake-reasoning-tokens", minimum=0) or 0,
        tool_calls=_int_header(headers, "x-fake-tool-calls", minimum=1) or 1,
        usage=_usage_header(headers.get("x-fake-usage")),
        service_tier=headers.get("x-fake-service-tier") or None,
    )


@dataclass(slots=True)
class PromptCount:
    """Running count of the prompt's words and image parts."""

    words: int = 0
    images: int = 0

    def add_text(self, text: Any) -> None:
        if isinstance(text, str):
            self.words += len(text.split())

    def add_image(self, count: int = 1) -> None:
        self.images += count

    @property
    def tokens(self) -> int:
        return max(1, self.words + IMAGE_TOKENS * self.images)


class ToolSpec(NamedTuple):
    name: str
    schema: dict[str, Any]


class ToolCall(NamedTuple):
    id: str
    name: str
    arguments: dict[str, Any]
    arguments_json: str


@dataclass(slots=True)
class Conversation:
    """What a format module read from a generation request, in neutral terms."""

    model: str
    prompt: PromptCount = field(default_factory=PromptCount)
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: str = "auto"
    """`auto`, `none`, `required`, or `tool` (then `forced_tool` names it)."""
    forced_tool: str | None = None
    last_is_user: bool = False
    tool_result: str | None = None
    """Text of the tool result when the last message is one."""
    json_mode: bool = False
    json_schema: dict[str, Any] | None = None
    max_tokens: int | None = None


@dataclass(slots=True)
class Answer:
    text: str
    tool_calls: list[ToolCall]
    truncated: bool
    output_tokens: int
    """Visible output tokens: reply words + tool argument words, at least 1 (reasoning not included)."""

    @property
    def text_pieces(self) -> list[str]:
        """The reply split word by word for streaming; joined they give `text` exactly."""
        return split_pieces(self.text)


def split_pieces(text: str) -> list[str]:
    if not text:
        return []
    words = text.split(" ")
    return [words[0]] + [" " + word for word in words[1:]]


def default_reply(model: str, images: int) -> str:
    reply = f"Hello from {model}."
    if images:
        reply += f" I saw {images} image{'s' if images != 1 else ''}."
    return reply


def repeat_words(text: str, count: int) -> str:
    words = text.split() or ["word"]
    return " ".join(words[i % len(words)] for i in range(count))


def plan_answer(conv: Conversation, controls: Controls, *, tool_preamble: bool = False, id_prefix: str = "call_") -> Answer:
    """Decide the reply: a tool call, a tool-result echo, JSON, or the greeting.

    `tool_preamble` adds the short text Anthropic models write before tool_use
    blocks (`Calling NAME.`, or `x-fake-reply`).
    """
    if conv.tool_result is None and conv.tools and conv.last_is_user and conv.tool_choice != "none":
        calls = _tool_calls(conv, controls.tool_calls, id_prefix)
        if calls:
            text = (controls.reply or f"Calling {calls[0].name}.") if tool_preamble else ""
            tokens = count_words(text) + sum(count_words(call.arguments_json) for call in calls)
            return Answer(text=text, tool_calls=calls, truncated=False, output_tokens=max(1, tokens))

    if conv.tool_result is not None:
        text = controls.reply if controls.reply is not None else f"The tool returned: {conv.tool_result}"
        plain = True
    elif conv.json_mode:
        if controls.reply is not None:
            text = controls.reply
        elif conv.json_schema:
            text = json.dumps(example_from_schema(conv.json_schema))
        else:
            text = json.dumps({"answer": default_reply(conv.model, conv.prompt.images)})
        plain = False
    else:
        text = controls.reply if controls.reply is not None else default_reply(conv.model, conv.prompt.images)
        plain = True
    if plain and controls.chunks:
        text = repeat_words(text, controls.chunks)

    truncated = False
    if conv.max_tokens is not None and count_words(text) > conv.max_tokens:
        text = " ".join(text.split()[: max(conv.max_tokens, 0)])
        truncated = True
    return Answer(text=text, tool_calls=[], truncated=truncated, output_tokens=max(1, count_words(text)))


def _tool_calls(conv: Conversation, count: int, id_prefix: str) -> list[ToolCall]:
    if conv.tool_choice == "tool" and conv.forced_tool:
        chosen = [tool for tool in conv.tools if tool.name == conv.forced_tool] or [ToolSpec(conv.forced_tool, {})]
    else:
        chosen = conv.tools
    calls = []
    for index in range(count):
        tool = chosen[index % len(chosen)]
        arguments = example_from_schema(tool.schema) if tool.schema else {}
        if not isinstance(arguments, dict):
            arguments = {}
        calls.append(ToolCall(new_id(id_prefix), tool.name, arguments, json.dumps(arguments)))
    return calls


def example_from_schema(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A value that satisfies a JSON schema (OpenAPI-style upper-case types too).

    Objects get their `required` properties (all properties when `required` is
    absent); strings are "Paris", numbers 1, booleans true, arrays empty.
    """
    if not isinstance(schema, dict) or depth > MAX_SCHEMA_DEPTH:
        return SCHEMA_STRING if not isinstance(schema, dict) else {}
    root = root if root is not None else schema
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return example_from_schema(_resolve_ref(root, ref), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf", "any_of"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [opt for opt in options if not (isinstance(opt, dict) and str(opt.get("type", "")).lower() == "null")]
            return example_from_schema((non_null or options)[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    kind = str(kind).lower() if kind is not None else None
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        required = schema.get("required")
        names = list(required) if isinstance(required, list) else list(properties)
        return {name: example_from_schema(properties.get(name, {"type": "string"}), root, depth + 1) for name in names}
    if kind in ("number", "integer"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "null":
        return None
    return SCHEMA_STRING


def _resolve_ref(root: Any, ref: str) -> Any:
    if not ref.startswith("#/"):
        return {}
    node = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict):
            return {}
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {})
    return node


def prompt_with_cache(prompt_tokens: int, cached: int, cache_write: int = 0) -> int:
    """The prompt size once cache headers are applied: never smaller than its cached parts."""
    return max(prompt_tokens, cached + cache_write)


@lru_cache(maxsize=4096)
def embedding_vector(text: str, dimensions: int) -> tuple[float, ...]:
    """A unit vector that depends only on the text and the size asked for."""
    rng = random.Random(f"{dimensions}:{text}")
    values = [rng.uniform(-1.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return tuple(round(v / norm, 8) for v in values)
