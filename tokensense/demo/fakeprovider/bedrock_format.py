"""The AWS Bedrock runtime wire format: Converse, ConverseStream, InvokeModel, InvokeModelWithResponseStream.

Requests must be SigV4-signed with one of the test credentials (`FAKE_AWS_KEYS`,
or more from `FAKE_AWS_CREDENTIALS="AKID:SECRET,..."` in the fake's environment):
the signature is recomputed with botocore and a mismatch is a 403
`InvalidSignatureException`, as AWS answers. A Bedrock API key
(`Authorization: Bearer ...`) is accepted too. Streams are AWS event-stream
frames; InvokeModel serves Claude (`anthropic.*` model ids) in Anthropic's
Messages format with `anthropic_version`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from tokensense.demo.fakeprovider import anthropic_format
from tokensense.demo.fakeprovider.replies import BodyReply, FakeError, FakeRequest, Reply, StreamReply, json_reply
from tokensense.demo.fakeprovider.textgen import (
    Answer,
    Controls,
    Conversation,
    ToolSpec,
    new_id,
    plan_answer,
    split_pieces,
)
from tokensense.providers.bedrock.eventstream import CONTENT_TYPE, chunk_payload, event_frame
from tokensense.providers.bedrock.sigv4 import verify_signature

NAME = "bedrock"

FAKE_AWS_KEYS = {"AKIAFAKETOKENSENSE01": "fake/secret/key/for/tests/only"}
"""Access key id -> secret the fake accepts (documented test credentials, not real ones)."""

MISSING_KEY = "Missing Authentication Token"

_ERROR_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _secrets() -> dict[str, str]:
    secrets = dict(FAKE_AWS_KEYS)
    for pair in os.environ.get("FAKE_AWS_CREDENTIALS", "").split(","):
        akid, _, secret = pair.strip().partition(":")
        if akid and secret:
            secrets[akid] = secret
    return secrets


def authenticated(req: FakeRequest) -> bool:
    auth = req.headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        req.params["auth"] = "bearer"
        return True
    if not auth.startswith("AWS4-HMAC-SHA256"):
        return False
    signed = verify_signature(method=req.method, url=f"{req.origin}{req.raw_path}", headers=req.headers,
                              body=req.raw_body, secrets=_secrets())
    if signed is None:
        raise FakeError(403, "The request signature we calculated does not match the signature you provided. "
                             "Check your AWS Secret Access Key and signing method.", param="InvalidSignatureException")
    req.params["auth"] = f"sigv4:{signed.access_key}:{signed.region}:{signed.service}"
    return True


def error(status: int, message: str, param: str | None = None) -> BodyReply:
    """Bedrock errors: `{"message"}` with the type in `x-amzn-ErrorType` (`param` overrides the type)."""
    kind = param if param and param.endswith("Exception") else _ERROR_TYPES.get(
        status, "InternalServerException" if status >= 500 else "ValidationException")
    headers = {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
               "x-amzn-RequestId": new_id("", 32)}
    if status == 429:
        headers["retry-after"] = "1"
    return json_reply({"message": message}, status=status, headers=headers)


def _body(req: FakeRequest) -> dict[str, Any]:
    if not isinstance(req.body, dict):
        raise FakeError(400, "Malformed input request, please reformat your input and try again.")
    return req.body


# --- Converse ----------------------------------------------------------------------------


def read_converse(body: dict[str, Any], model: str) -> Conversation:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise FakeError(400, "1 validation error detected: Value null at 'messages' failed to satisfy constraint: "
                             "Member must not be null")
    conv = Conversation(model=model)
    count = conv.prompt
    for block in body.get("system") or []:
        if isinstance(block, dict):
            count.add_text(block.get("text"))
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise FakeError(400, "A conversation must alternate between user and assistant roles.")
        for block in message.get("content") or []:
            if not isinstance(block, dict):
                continue
            if "text" in block:
                count.add_text(block["text"])
            elif "image" in block or "document" in block:
                count.add_image()
            elif "toolResult" in block:
                for part in (block["toolResult"] or {}).get("content") or []:
                    if isinstance(part, dict) and "text" in part:
                        count.add_text(part["text"])
                    elif isinstance(part, dict) and "json" in part:
                        count.add_text(json.dumps(part["json"]))
    last = messages[-1]
    conv.last_is_user = last.get("role") == "user"
    results = [block["toolResult"] for block in last.get("content") or []
               if isinstance(block, dict) and isinstance(block.get("toolResult"), dict)]
    if conv.last_is_user and results:
        texts = []
        for result in results:
            for part in result.get("content") or []:
                if isinstance(part, dict):
                    texts.append(part["text"] if "text" in part else json.dumps(part.get("json")))
        conv.tool_result = " ".join(texts)
    tool_config = body.get("toolConfig") or {}
    for tool in tool_config.get("tools") or []:
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        if isinstance(spec, dict) and spec.get("name"):
            schema = (spec.get("inputSchema") or {}).get("json")
            conv.tools.append(ToolSpec(spec["name"], schema if isinstance(schema, dict) else {}))
    choice = tool_config.get("toolChoice") or {}
    if "any" in choice:
        conv.tool_choice = "required"
    elif isinstance(choice.get("tool"), dict):
        conv.tool_choice, conv.forced_tool = "tool", choice["tool"].get("name")
    text_format = (body.get("outputConfig") or {}).get("textFormat") or {}
    if text_format.get("type") == "json_schema":
        conv.json_mode = True
        schema = ((text_format.get("structure") or {}).get("jsonSchema") or {}).get("schema")
        try:
            conv.json_schema = json.loads(schema) if isinstance(schema, str) else None
        except ValueError:
            raise FakeError(400, "outputConfig.textFormat.structure.jsonSchema.schema is not valid JSON") from None
    limit = (body.get("inferenceConfig") or {}).get("maxTokens")
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise FakeError(400, "inferenceConfig.maxTokens must be at least 1")
        conv.max_tokens = limit
    return conv


def converse_usage(conv: Conversation, answer: Answer, controls: Controls) -> dict[str, Any]:
    """Like Anthropic: inputTokens exclude cache reads and writes; totalTokens adds all four."""
    cached, written = controls.cached_tokens, controls.cache_write_tokens
    total_prompt = max(conv.prompt.tokens, cached + written)
    output = answer.output_tokens + controls.reasoning_tokens
    usage: dict[str, Any] = {"inputTokens": total_prompt - cached - written, "outputTokens": output,
                             "totalTokens": total_prompt + output}
    if cached:
        usage["cacheReadInputTokens"] = cached
    if written:
        usage["cacheWriteInputTokens"] = written
    return usage


def _stop_reason(answer: Answer) -> str:
    if answer.tool_calls:
        return "tool_use"
    return "max_tokens" if answer.truncated else "end_turn"


def converse(req: FakeRequest) -> Reply:
    body = _body(req)
    model = req.params["model"]
    conv = read_converse(body, model)
    answer = plan_answer(conv, req.controls, id_prefix="tooluse_")
    usage = converse_usage(conv, answer, req.controls)
    headers = {"x-amzn-RequestId": new_id("", 32)}
    if req.params["action"] == "converse":
        content: list[dict[str, Any]] = []
        if answer.text or not answer.tool_calls:
            content.append({"text": answer.text})
        content.extend({"toolUse": {"toolUseId": call.id, "name": call.name, "input": call.arguments}}
                       for call in answer.tool_calls)
        return json_reply({"output": {"message": {"role": "assistant", "content": content}},
                           "stopReason": _stop_reason(answer), "usage": usage, "metrics": {"latencyMs": 42}},
                          headers=headers)
    return StreamReply(200, _converse_frames(answer, usage), CONTENT_TYPE, headers)


def _padded(payload: dict[str, Any]) -> dict[str, Any]:
    """Bedrock pads event payloads with a `p` field of varying length (hides the token lengths)."""
    return {**payload, "p": _PADDING[: 5 + len(json.dumps(payload)) % 40]}


def _converse_frames(answer: Answer, usage: dict[str, Any]) -> list[bytes]:
    frames = [event_frame("messageStart", _padded({"role": "assistant"}))]
    index = 0
    if answer.text or not answer.tool_calls:
        for piece in answer.text_pieces or [""]:
            frames.append(event_frame("contentBlockDelta", _padded({"contentBlockIndex": 0, "delta": {"text": piece}})))
        frames.append(event_frame("contentBlockStop", _padded({"contentBlockIndex": 0})))
        index = 1
    for call in answer.tool_calls:
        frames.append(event_frame("contentBlockStart", _padded(
            {"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": call.id, "name": call.name}}})))
        for piece in split_pieces(call.arguments_json):
            frames.append(event_frame("contentBlockDelta", _padded(
                {"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}})))
        frames.append(event_frame("contentBlockStop", _padded({"contentBlockIndex": index})))
        index += 1
    frames.append(event_frame("messageStop", _padded({"stopReason": _stop_reason(answer)})))
    frames.append(event_frame("metadata", _padded({"usage": usage, "metrics": {"latencyMs": 42}})))
    return frames


# --- InvokeModel (Claude) ------------------------------------------------------------------


def invoke(req: FakeRequest) -> Reply:
    body = _body(req)
    model = req.params["model"]
    if "anthropic." not in model and not model.startswith("arn:"):
        raise FakeError(400, f"The fake serves InvokeModel for Claude (anthropic.*) models only, not {model}.")
    if "anthropic_version" not in body:
        raise FakeError(400, "Malformed input request: #: required key [anthropic_version] not found, "
                             "please reformat your input and try again.")
    stream = req.params["action"] == "invoke-with-response-stream"
    inner = dataclasses.replace(req, body={**body, "model": model, "stream": stream})
    try:
        reply = anthropic_format.messages(inner)
    except FakeError as e:
        raise FakeError(400, e.message) from None
    headers = {"x-amzn-RequestId": new_id("", 32)}
    if isinstance(reply, BodyReply):
        message = json.loads(reply.body)
        usage = message["usage"]
        headers.update({
            "x-amzn-bedrock-input-token-count": str(usage["input_tokens"]),
            "x-amzn-bedrock-output-token-count": str(usage["output_tokens"]),
            "x-amzn-bedrock-invocation-latency": "42",
        })
        if usage.get("cache_read_input_tokens"):
            headers["x-amzn-bedrock-cache-read-input-token-count"] = str(usage["cache_read_input_tokens"])
        if usage.get("cache_creation_input_tokens"):
            headers["x-amzn-bedrock-cache-write-input-token-count"] = str(usage["cache_creation_input_tokens"])
        return BodyReply(200, reply.body, "application/json", headers)
    return StreamReply(200, _invoke_frames(reply.chunks), CONTENT_TYPE, headers)


def _invoke_frames(sse_chunks: list[bytes]) -> list[bytes]:
    """Anthropic's SSE events re-wrapped as Bedrock `chunk` frames; the last carries invocation metrics."""
    events = []
    for raw in sse_chunks:
        for line in raw.decode().splitlines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    start_usage = next((e["message"]["usage"] for e in events if e.get("type") == "message_start"), {})
    output = next((e["usage"]["output_tokens"] for e in reversed(events) if e.get("type") == "message_delta"), 0)
    frames = []
    for event in events:
        if event.get("type") == "ping":
            continue  # Bedrock does not forward Anthropic's pings
        if event.get("type") == "message_stop":
            event = {**event, "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": start_usage.get("input_tokens", 0),
                "outputTokenCount": output,
                "invocationLatency": 42,
                "firstByteLatency": 21,
                "cacheReadInputTokenCount": start_usage.get("cache_read_input_tokens", 0),
                "cacheWriteInputTokenCount": start_usage.get("cache_creation_input_tokens", 0),
            }}
        frames.append(event_frame("chunk", {**chunk_payload(event), "p": _PADDING[:12]}))
    return frames


ACTIONS = {
    "converse": converse,
    "converse-stream": converse,
    "invoke": invoke,
    "invoke-with-response-stream": invoke,
}
