"""OpenAI's Responses API (also spoken by xAI): create (plain and SSE), retrieve, delete, cancel, input items,
input token counts and compaction.

Stored responses live in the app's `RESPONSES` store (a bounded dict, newest last), so `previous_response_id`,
`GET /v1/responses/{id}` and `input_items` work within one fake process. The token formula is the chat one
(docs/fake-provider.md): the words of `instructions`, of every text in `input` (and, with
`previous_response_id`, of the stored conversation before it) plus 10 per image or file.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections import OrderedDict
from typing import Any

from tokensense.demo.fakeprovider.openai_format import MISSING_KEY, authenticated, error  # noqa: F401  (format interface)
from tokensense.demo.fakeprovider.replies import (
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

NAME = "openai"

STORE_SIZE = 1000
"""Stored responses kept per fake process; the oldest go first."""

REASONING_SUMMARY = "Thinking about the answer."
"""The summary text of the fake's reasoning items (when `reasoning.summary` asks for one)."""

_WEB_SEARCH_TOOLS = ("web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11")


@dataclasses.dataclass(slots=True)
class Stored:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    background_pending: bool = False


def new_store() -> OrderedDict[str, Stored]:
    return OrderedDict()


def _store(req: FakeRequest) -> OrderedDict[str, Stored]:
    store = req.state.get("responses")
    if store is None:
        store = req.state["responses"] = new_store()
    return store


def _remember(req: FakeRequest, stored: Stored) -> None:
    store = _store(req)
    store[stored.response["id"]] = stored
    while len(store) > STORE_SIZE:
        store.popitem(last=False)


def _body(req: FakeRequest) -> dict[str, Any]:
    if not isinstance(req.body, dict):
        raise FakeError(400, "We could not parse the JSON body of your request. Send a JSON object.")
    return req.body


def _not_found(response_id: str, param: str | None = None) -> FakeError:
    return FakeError(404, f"Response with id '{response_id}' not found.", param=param)


# --- reading a request ---------------------------------------------------------------------------


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """`input` as a list of items with ids, as `input_items` lists them (a string is one user message)."""
    raw = body.get("input")
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise FakeError(400, "Invalid 'input': expected a string or an array of input items.", param="input")
    items = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise FakeError(400, f"Invalid 'input[{index}]': expected an object.", param=f"input[{index}]")
        item = dict(item)
        kind = item.setdefault("type", "message")
        if kind == "message":
            if item.get("role") not in ("user", "assistant", "system", "developer"):
                raise FakeError(400, f"Invalid value for 'input[{index}].role'.", param=f"input[{index}].role")
            content = item.get("content")
            if isinstance(content, str):
                part = "output_text" if item["role"] == "assistant" else "input_text"
                item["content"] = [{"type": part, "text": content, **({"annotations": []} if part == "output_text" else {})}]
            item.setdefault("id", new_id("msg_", 32))
            item.setdefault("status", "completed")
        elif kind == "function_call_output":
            if not item.get("call_id"):
                raise FakeError(400, f"Missing required parameter: 'input[{index}].call_id'.", param=f"input[{index}].call_id")
            item.setdefault("id", new_id("fco_", 32))
            item.setdefault("status", "completed")
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                if name not in item:
                    raise FakeError(400, f"Missing required parameter: 'input[{index}].{name}'.", param=f"input[{index}].{name}")
        items.append(item)
    return items


def _count_item(conv: Conversation, item: dict[str, Any]) -> None:
    kind = item.get("type")
    if kind == "message":
        for part in item.get("content") or []:
            if not isinstance(part, dict):
                continue
            if part.get("type") in ("input_text", "output_text"):
                conv.prompt.add_text(part.get("text"))
            elif part.get("type") == "refusal":
                conv.prompt.add_text(part.get("refusal"))
            elif part.get("type") in ("input_image", "input_file"):
                conv.prompt.add_image()
    elif kind == "function_call_output":
        conv.prompt.add_text(_output_text(item.get("output")))


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return " ".join(p.get("text", "") for p in output if isinstance(p, dict) and p.get("type") == "input_text")
    return ""


def read_conversation(req: FakeRequest, body: dict[str, Any], items: list[dict[str, Any]], *, need_model: bool = True) -> tuple[Conversation, list[dict[str, Any]]]:
    """The neutral conversation of a Responses request, and the stored items that came before it."""
    model = body.get("model")
    if need_model and (not isinstance(model, str) or not model):
        raise FakeError(400, "Missing required parameter: 'model'.", param="model")
    conv = Conversation(model=str(model or ""))
    history: list[dict[str, Any]] = []
    previous = body.get("previous_response_id")
    if previous:
        stored = _store(req).get(previous)
        if stored is None:
            raise FakeError(400, f"Previous response with id '{previous}' not found.", param="previous_response_id")
        history = conversation_items(stored)
    if isinstance(body.get("instructions"), str):
        conv.prompt.add_text(body["instructions"])
    for item in history + items:
        _count_item(conv, item)
    if items:
        last = items[-1]
        conv.last_is_user = last.get("type") == "message" and last.get("role") == "user"
        if last.get("type") == "function_call_output":
            conv.tool_result = _output_text(last.get("output"))

    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "function" and tool.get("name"):
            conv.tools.append(ToolSpec(tool["name"], tool.get("parameters") or {}))
    choice = body.get("tool_choice")
    if choice in ("none", "auto", "required"):
        conv.tool_choice = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        conv.tool_choice = "tool"
        conv.forced_tool = choice.get("name")

    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        conv.json_mode = True
        schema = fmt.get("schema")
        conv.json_schema = schema if isinstance(schema, dict) else None

    limit = body.get("max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or limit < 16:
            raise FakeError(
                400,
                f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got {limit!r} instead.",
                param="max_output_tokens",
            )
        conv.max_tokens = limit
    return conv, history


def conversation_items(stored: Stored) -> list[dict[str, Any]]:
    """What a response adds to a conversation: its input items, then its output items."""
    return stored.input_items + [item for item in stored.response.get("output") or []]


def _offered_tools(body: dict[str, Any]) -> set[str]:
    return {tool.get("type") for tool in body.get("tools") or [] if isinstance(tool, dict)}


# --- building the answer -------------------------------------------------------------------------


def _usage(conv: Conversation, answer: Answer, controls: Controls) -> dict[str, Any]:
    input_tokens = max(conv.prompt.tokens, controls.cached_tokens)
    output_tokens = answer.output_tokens + controls.reasoning_tokens
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": controls.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": controls.reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def _last_user_text(items: list[dict[str, Any]]) -> str:
    for item in reversed(items):
        if item.get("type") == "message" and item.get("role") == "user":
            return " ".join(
                p.get("text", "") for p in item.get("content") or [] if isinstance(p, dict) and p.get("type") == "input_text"
            )
    return ""


def _output_items(body: dict[str, Any], items: list[dict[str, Any]], conv: Conversation, answer: Answer, controls: Controls) -> list[dict[str, Any]]:
    """The finished output items, in the order the model produced them."""
    output: list[dict[str, Any]] = []
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    if controls.reasoning_tokens:
        item: dict[str, Any] = {"id": new_id("rs_", 32), "type": "reasoning", "summary": []}
        if reasoning.get("summary") or reasoning.get("generate_summary"):
            item["summary"] = [{"type": "summary_text", "text": REASONING_SUMMARY}]
        if "reasoning.encrypted_content" in (body.get("include") or []):
            item["encrypted_content"] = base64.b64encode(f"fake reasoning of {controls.reasoning_tokens} tokens".encode()).decode()
        output.append(item)
    offered = _offered_tools(body)
    searching = not answer.tool_calls and conv.last_is_user and conv.tool_choice != "none"
    query = _last_user_text(items)
    if searching and offered & set(_WEB_SEARCH_TOOLS):
        output.append(
            {
                "id": new_id("ws_", 32),
                "type": "web_search_call",
                "status": "completed",
                "action": {"type": "search", "query": query, "queries": [query]},
            }
        )
    if searching and "file_search" in offered:
        output.append({"id": new_id("fs_", 32), "type": "file_search_call", "status": "completed", "queries": [query], "results": None})
    if answer.text or not answer.tool_calls:
        output.append(
            {
                "id": new_id("msg_", 32),
                "type": "message",
                "status": "incomplete" if answer.truncated else "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": answer.text, "annotations": [], "logprobs": []}],
            }
        )
    for call in answer.tool_calls:
        output.append(
            {
                "id": new_id("fc_", 32),
                "type": "function_call",
                "status": "completed",
                "arguments": call.arguments_json,
                "call_id": call.id,
                "name": call.name,
            }
        )
    return output


def _response(body: dict[str, Any], model: str, *, response_id: str, created_at: int, status: str,
              output: list[dict[str, Any]], usage: dict[str, Any] | None, truncated: bool = False) -> dict[str, Any]:
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": bool(body.get("background")),
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity", "medium")},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": usage,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def create(req: FakeRequest) -> Reply:
    body = _body(req)
    items = input_items(body)
    if not items and not body.get("previous_response_id"):
        raise FakeError(400, "Missing required parameter: 'input'.", param="input")
    conv, _ = read_conversation(req, body, items)
    controls = req.controls
    if body.get("parallel_tool_calls") is False and controls.tool_calls > 1:
        controls = dataclasses.replace(controls, tool_calls=1)
    answer = plan_answer(conv, controls)
    output = _output_items(body, items, conv, answer, controls)
    usage = _usage(conv, answer, controls)
    status = "incomplete" if answer.truncated else "completed"
    response_id = new_id("resp_", 48)
    created_at = int(time.time())
    final = _response(body, conv.model, response_id=response_id, created_at=created_at, status=status,
                      output=output, usage=usage, truncated=answer.truncated)
    headers = {"x-request-id": new_id("req_")}
    background = bool(body.get("background"))
    if body.get("store", True) is not False or background:
        _remember(req, Stored(final, items, background_pending=background))
    if body.get("stream"):
        return StreamReply(200, stream_events(final), "text/event-stream; charset=utf-8", headers)
    if background:
        queued = _response(body, conv.model, response_id=response_id, created_at=created_at, status="queued", output=[], usage=None)
        return json_reply(queued, headers=headers)
    return json_reply(final, headers=headers)


# --- streams -------------------------------------------------------------------------------------


def stream_events(final: dict[str, Any]) -> list[bytes]:
    """The SSE events OpenAI sends for `final`, each `event: TYPE` + `data: {..., "sequence_number": n}`."""
    events: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append(sse_event(kind, {"type": kind, "sequence_number": len(events), **fields}))

    started = {**final, "status": "in_progress", "output": [], "usage": None, "completed_at": None, "incomplete_details": None}
    emit("response.created", response=started)
    emit("response.in_progress", response=started)
    for index, item in enumerate(final["output"]):
        kind = item["type"]
        if kind == "message":
            emit("response.output_item.added", output_index=index, item={**item, "status": "in_progress", "content": []})
            for content_index, part in enumerate(item["content"]):
                ids = {"item_id": item["id"], "output_index": index, "content_index": content_index}
                emit("response.content_part.added", **ids, part={**part, "text": ""})
                for piece in split_pieces(part["text"]):
                    emit("response.output_text.delta", **ids, delta=piece, logprobs=[])
                emit("response.output_text.done", **ids, text=part["text"], logprobs=[])
                emit("response.content_part.done", **ids, part=part)
        elif kind == "function_call":
            emit("response.output_item.added", output_index=index, item={**item, "status": "in_progress", "arguments": ""})
            for piece in split_pieces(item["arguments"]):
                emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=piece)
            emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                 name=item["name"], arguments=item["arguments"])
        elif kind == "reasoning":
            emit("response.output_item.added", output_index=index, item={**item, "summary": []})
            for summary_index, part in enumerate(item["summary"]):
                ids = {"item_id": item["id"], "output_index": index, "summary_index": summary_index}
                emit("response.reasoning_summary_part.added", **ids, part={"type": "summary_text", "text": ""})
                for piece in split_pieces(part["text"]):
                    emit("response.reasoning_summary_text.delta", **ids, delta=piece)
                emit("response.reasoning_summary_text.done", **ids, text=part["text"])
                emit("response.reasoning_summary_part.done", **ids, part=part)
        elif kind in ("web_search_call", "file_search_call"):
            emit("response.output_item.added", output_index=index, item={**item, "status": "in_progress"})
            steps = ("in_progress", "searching", "completed")
            for step in steps:
                emit(f"response.{kind}.{step}", item_id=item["id"], output_index=index)
        emit("response.output_item.done", output_index=index, item=item)
    emit("response.incomplete" if final["status"] == "incomplete" else "response.completed", response=final)
    return events


# --- companion routes ----------------------------------------------------------------------------


def _stored(req: FakeRequest) -> Stored:
    response_id = req.params.get("id", "")
    stored = _store(req).get(response_id)
    if stored is None:
        raise _not_found(response_id)
    return stored


def retrieve(req: FakeRequest) -> Reply:
    stored = _stored(req)
    stored.background_pending = False  # a background response is done by the time anyone asks
    if req.query.get("stream") == "true":
        return StreamReply(200, stream_events(stored.response), "text/event-stream; charset=utf-8")
    return json_reply(stored.response, headers={"x-request-id": new_id("req_")})


def delete(req: FakeRequest) -> Reply:
    stored = _stored(req)
    del _store(req)[stored.response["id"]]
    return json_reply({"id": stored.response["id"], "object": "response.deleted", "deleted": True})


def cancel(req: FakeRequest) -> Reply:
    stored = _stored(req)
    if not stored.response.get("background"):
        raise FakeError(400, "Only responses created with background=true can be cancelled.")
    if stored.background_pending:
        stored.response = {**stored.response, "status": "cancelled", "output": [], "usage": None, "completed_at": None}
        stored.background_pending = False
    return json_reply(stored.response)


def list_input_items(req: FakeRequest) -> Reply:
    stored = _stored(req)
    items = list(stored.input_items)
    order = req.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise FakeError(400, "Invalid 'order': expected asc or desc.", param="order")
    if order == "desc":
        items.reverse()
    after = req.query.get("after")
    if after:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    try:
        limit = int(req.query.get("limit", "20"))
    except ValueError:
        raise FakeError(400, "Invalid 'limit': expected an integer.", param="limit") from None
    if not 1 <= limit <= 100:
        raise FakeError(400, "Invalid 'limit': expected a value from 1 to 100.", param="limit")
    page = items[:limit]
    return json_reply(
        {
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > limit,
        }
    )


def input_tokens(req: FakeRequest) -> Reply:
    body = _body(req)
    items = input_items(body)
    conv, _ = read_conversation(req, body, items, need_model=False)
    return json_reply({"object": "response.input_tokens", "input_tokens": max(conv.prompt.tokens, req.controls.cached_tokens)})


def compact(req: FakeRequest) -> Reply:
    """A compaction keeps the user messages and replaces the rest by one opaque compaction item.

    Usage: the prompt as for a create, and one output token per item compacted away (at least 1).
    """
    body = _body(req)
    items = input_items(body)
    conv, history = read_conversation(req, body, items)
    everything = history + items
    users = [item for item in everything if item.get("type") == "message" and item.get("role") == "user"]
    dropped = len(everything) - len(users)
    summary = base64.b64encode(f"fake compaction of {dropped} items".encode()).decode()
    input_tokens = max(conv.prompt.tokens, req.controls.cached_tokens)
    output_tokens = max(1, dropped)
    return json_reply(
        {
            "id": new_id("resp_", 48),
            "object": "response.compaction",
            "created_at": int(time.time()),
            "output": users + [{"id": new_id("cmp_", 32), "type": "compaction", "encrypted_content": summary}],
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": req.controls.cached_tokens, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
        },
        headers={"x-request-id": new_id("req_")},
    )


def handler_for(method: str, response_id: str | None, action: str | None) -> Any:
    """The handler of `METHOD /v1/responses[/ID[/ACTION]]`, or None when the method does not fit the path."""
    if response_id is None:
        return create if method == "POST" else None
    if action is None:
        if response_id == "input_tokens":
            return input_tokens if method == "POST" else None
        if response_id == "compact":
            return compact if method == "POST" else None
        return {"GET": retrieve, "DELETE": delete}.get(method)
    if action == "cancel":
        return cancel if method == "POST" else None
    if action == "input_items":
        return list_input_items if method == "GET" else None
    return None
