"""The Anthropic Messages wire format: messages (plain and streamed), count_tokens, models."""

from __future__ import annotations

import dataclasses
from typing import Any

from tokensense.demo.fakeprovider.replies import (
    BodyReply,
    FakeError,
    FakeRequest,
    Reply,
    StreamReply,
    json_reply,
    sse_event,
)
from tokensense.demo.fakeprovider.textgen import (
    Answer,
    Controls,
    Conversation,
    ToolSpec,
    new_id,
    plan_answer,
    split_pieces,
)

NAME = "anthropic"

_ERROR_TYPES = {
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

MODELS = [
    ("claude-opus-4-6", "Claude Opus 4.6"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6"),
    ("claude-sonnet-4-5", "Claude Sonnet 4.5"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
]

MISSING_KEY = "x-api-key header is required"


def authenticated(req: FakeRequest) -> bool:
    if req.headers.get("x-api-key", "").strip():
        return True
    auth = req.headers.get("authorization", "")
    return auth[:7].lower() == "bearer " and bool(auth[7:].strip())


def error(status: int, message: str, param: str | None = None) -> BodyReply:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    request_id = new_id("req_")
    headers = {"request-id": request_id}
    if status == 429:
        headers["retry-after"] = "1"
    return json_reply(
        {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}, status=status, headers=headers
    )


def _body(req: FakeRequest) -> dict[str, Any]:
    if not isinstance(req.body, dict):
        raise FakeError(400, "The request body is not valid JSON. Send a JSON object.")
    return req.body


def _field_required(body: dict[str, Any], name: str) -> Any:
    value = body.get(name)
    if value is None:
        raise FakeError(400, f"{name}: Field required")
    return value


def _tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(block.get("text", "") for block in content if isinstance(block, dict) and block.get("type") == "text")
    return ""


def read_conversation(body: dict[str, Any], *, need_max_tokens: bool = True) -> Conversation:
    model = _field_required(body, "model")
    messages = _field_required(body, "messages")
    if need_max_tokens:
        _field_required(body, "max_tokens")
    if not isinstance(messages, list) or not messages:
        raise FakeError(400, "messages: at least one message is required")
    conv = Conversation(model=str(model))
    count = conv.prompt
    system = body.get("system")
    if isinstance(system, str):
        count.add_text(system)
    elif isinstance(system, list):
        for block in system:
            if isinstance(block, dict):
                count.add_text(block.get("text"))
    for message in messages:
        if not isinstance(message, dict):
            raise FakeError(400, "messages: each message must be an object with role and content")
        content = message.get("content")
        if isinstance(content, str):
            count.add_text(content)
            continue
        for block in content or []:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                count.add_text(block.get("text"))
            elif kind in ("image", "document"):
                count.add_image()
            elif kind == "tool_result":
                inner = block.get("content")
                if isinstance(inner, str):
                    count.add_text(inner)
                elif isinstance(inner, list):
                    for part in inner:
                        if isinstance(part, dict) and part.get("type") == "text":
                            count.add_text(part.get("text"))
                        elif isinstance(part, dict) and part.get("type") in ("image", "document"):
                            count.add_image()

    last = messages[-1]
    conv.last_is_user = last.get("role") == "user"
    if conv.last_is_user and isinstance(last.get("content"), list):
        results = [_tool_result_text(b.get("content")) for b in last["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
        if results:
            conv.tool_result = " ".join(results)

    for tool in body.get("tools") or []:
        # Server tools (web_search, code_execution, ...) carry no input_schema; the fake never calls them.
        if isinstance(tool, dict) and tool.get("name") and isinstance(tool.get("input_schema"), dict):
            conv.tools.append(ToolSpec(tool["name"], tool["input_schema"]))
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "none":
            conv.tool_choice = "none"
        elif kind == "any":
            conv.tool_choice = "required"
        elif kind == "tool":
            conv.tool_choice = "tool"
            conv.forced_tool = choice.get("name")

    # Structured outputs: GA `output_config.format`, beta `output_format`.
    fmt = (body.get("output_config") or {}).get("format") or body.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        conv.json_mode = True
        conv.json_schema = fmt.get("schema") if isinstance(fmt.get("schema"), dict) else None

    limit = body.get("max_tokens")
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise FakeError(400, f"max_tokens: must be an integer greater than or equal to 1, got {limit!r}")
        conv.max_tokens = limit
    return conv


def usage(conv: Conversation, answer: Answer, controls: Controls) -> dict[str, Any]:
    """Anthropic's input_tokens exclude cache reads and writes; the three add up to the prompt."""
    if controls.usage is not None:
        return controls.usage
    cached, written = controls.cached_tokens, controls.cache_write_tokens
    total_prompt = max(conv.prompt.tokens, cached + written)
    result: dict[str, Any] = {
        "input_tokens": total_prompt - cached - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "cache_creation": {"ephemeral_5m_input_tokens": written, "ephemeral_1h_input_tokens": 0},
        "output_tokens": answer.output_tokens + controls.reasoning_tokens,
        "service_tier": "standard",
    }
    if controls.reasoning_tokens:
        result["output_tokens_details"] = {"thinking_tokens": controls.reasoning_tokens}
    return result


def _stop_reason(answer: Answer) -> str:
    if answer.tool_calls:
        return "tool_use"
    return "max_tokens" if answer.truncated else "end_turn"


def messages(req: FakeRequest) -> Reply:
    body = _body(req)
    conv = read_conversation(body)
    controls = req.controls
    if isinstance(body.get("tool_choice"), dict) and body["tool_choice"].get("disable_parallel_tool_use"):
        controls = dataclasses.replace(controls, tool_calls=1)
    answer = plan_answer(conv, controls, tool_preamble=True, id_prefix="toolu_")
    message_id = new_id("msg_")
    headers = {"request-id": new_id("req_")}
    full_usage = usage(conv, answer, controls)
    if body.get("stream"):
        return StreamReply(200, _message_events(message_id, conv.model, answer, full_usage), "text/event-stream; charset=utf-8", headers)
    content: list[dict[str, Any]] = []
    if answer.text or not answer.tool_calls:
        content.append({"type": "text", "text": answer.text})
    content.extend({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments} for call in answer.tool_calls)
    return json_reply(
        {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": conv.model,
            "content": content,
            "stop_reason": _stop_reason(answer),
            "stop_sequence": None,
            "usage": full_usage,
        },
        headers=headers,
    )


def _message_events(message_id: str, model: str, answer: Answer, full_usage: dict[str, Any]) -> list[bytes]:
    # message_start reports the prompt side and a provisional output count of 1, as
    # the real API does; message_delta carries the final (cumulative) output_tokens.
    start_usage = {**full_usage, "output_tokens": 1}
    start_usage.pop("output_tokens_details", None)
    start_usage.pop("server_tool_use", None)
    events = [
        sse_event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        )
    ]
    index = 0
    if answer.text or not answer.tool_calls:
        events.append(
            sse_event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        )
        events.append(sse_event("ping", {"type": "ping"}))
        events.extend(
            sse_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
            for piece in answer.text_pieces
        )
        events.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        index = 1
    for call in answer.tool_calls:
        events.append(
            sse_event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}},
                },
            )
        )
        if index == 0:
            events.append(sse_event("ping", {"type": "ping"}))
        for piece in [""] + split_pieces(call.arguments_json):
            events.append(
                sse_event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": piece}},
                )
            )
        events.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    delta_usage: dict[str, Any] = {"output_tokens": full_usage["output_tokens"]}
    if "output_tokens_details" in full_usage:
        delta_usage["output_tokens_details"] = full_usage["output_tokens_details"]
    if "server_tool_use" in full_usage:
        # With server tools the final message_delta repeats the whole usage, cumulative, server_tool_use
        # included (as in the web search streaming example of Anthropic's docs).
        delta_usage = {k: v for k, v in full_usage.items() if k not in ("cache_creation", "service_tier")}
    events.append(
        sse_event(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": _stop_reason(answer), "stop_sequence": None}, "usage": delta_usage},
        )
    )
    events.append(sse_event("message_stop", {"type": "message_stop"}))
    return events


def count_tokens(req: FakeRequest) -> Reply:
    conv = read_conversation(_body(req), need_max_tokens=False)
    return json_reply({"input_tokens": conv.prompt.tokens}, headers={"request-id": new_id("req_")})


def models(req: FakeRequest) -> Reply:
    data = [{"type": "model", "id": model_id, "display_name": name, "created_at": "2025-01-01T00:00:00Z"} for model_id, name in MODELS]
    return json_reply({"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]})
