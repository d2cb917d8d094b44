"""The Gemini API wire format: generateContent, streamGenerateContent, countTokens, embeddings, Imagen predict."""

from __future__ import annotations

import base64
import json
from typing import Any

from tokensense.demo.fakeprovider import media
from tokensense.demo.fakeprovider.replies import (
    BodyReply,
    FakeError,
    FakeRequest,
    Reply,
    StreamReply,
    dumps,
    json_reply,
)
from tokensense.demo.fakeprovider.textgen import (
    Answer,
    Controls,
    Conversation,
    PromptCount,
    ToolSpec,
    embedding_vector,
    new_id,
    plan_answer,
)

NAME = "gemini"

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_EMBEDDING_DIMENSIONS = {"gemini-embedding-001": 3072, "text-embedding-004": 768}
_DEFAULT_EMBEDDING_DIMENSIONS = 768

_ASPECT_SIZES = {
    "1:1": (1024, 1024),
    "3:4": (896, 1280),
    "4:3": (1280, 896),
    "9:16": (768, 1408),
    "16:9": (1408, 768),
}

MISSING_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)


def authenticated(req: FakeRequest) -> bool:
    if "/upload/" in req.path and req.query.get("upload_id"):
        return True  # a resumable upload's session URL is its credential (the SDK sends no key with the bytes)
    if req.headers.get("x-goog-api-key", "").strip() or req.query.get("key", "").strip():
        return True
    auth = req.headers.get("authorization", "")
    return auth[:7].lower() == "bearer " and bool(auth[7:].strip())


def error(status: int, message: str, param: str | None = None) -> BodyReply:
    name = _STATUS_NAMES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    headers = {"retry-after": "1"} if status == 429 else {}
    return json_reply({"error": {"code": status, "message": message, "status": name}}, status=status, headers=headers)


def _body(req: FakeRequest) -> dict[str, Any]:
    if not isinstance(req.body, dict):
        raise FakeError(400, "Invalid JSON payload received. Send a JSON object.")
    return req.body


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    """The REST API accepts both spellings of every field."""
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def function_response_text(response: Any) -> str:
    """A function response reads as its only string value (`{"result": "22C"}` → `22C`), else as its JSON."""
    if isinstance(response, dict) and len(response) == 1:
        (value,) = response.values()
        if isinstance(value, str):
            return value
    return json.dumps(response)


def _count_parts(parts: Any, count: PromptCount) -> None:
    for part in parts or []:
        if not isinstance(part, dict) or part.get("thought"):
            continue
        if "text" in part:
            count.add_text(part["text"])
        elif _get(part, "inlineData", "inline_data") is not None or _get(part, "fileData", "file_data") is not None:
            count.add_image()
        else:
            response = _get(part, "functionResponse", "function_response")
            if isinstance(response, dict):
                count.add_text(function_response_text(response.get("response")))


def count_contents(body: dict[str, Any], count: PromptCount) -> list[Any]:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise FakeError(400, "* GenerateContentRequest.contents: contents is not specified")
    system = _get(body, "systemInstruction", "system_instruction")
    if isinstance(system, dict):
        _count_parts(system.get("parts"), count)
    for content in contents:
        if not isinstance(content, dict):
            raise FakeError(400, "* GenerateContentRequest.contents: each content must be an object with parts")
        _count_parts(content.get("parts"), count)
    return contents


def read_conversation(body: dict[str, Any], model: str) -> Conversation:
    conv = Conversation(model=model)
    contents = count_contents(body, conv.prompt)
    last = contents[-1]
    responses = [
        _get(part, "functionResponse", "function_response")
        for part in last.get("parts") or []
        if isinstance(part, dict) and _get(part, "functionResponse", "function_response") is not None
    ]
    if responses:
        conv.tool_result = " ".join(function_response_text(r.get("response")) for r in responses if isinstance(r, dict))
    conv.last_is_user = last.get("role", "user") == "user"

    for tool in body.get("tools") or []:
        for declaration in _get(tool, "functionDeclarations", "function_declarations") or []:
            if isinstance(declaration, dict) and declaration.get("name"):
                schema = _get(declaration, "parametersJsonSchema", "parameters_json_schema") or declaration.get("parameters") or {}
                conv.tools.append(ToolSpec(declaration["name"], schema))
    config = _get(_get(body, "toolConfig", "tool_config") or {}, "functionCallingConfig", "function_calling_config") or {}
    mode = str(config.get("mode", "AUTO")).upper()
    if mode == "NONE":
        conv.tool_choice = "none"
    elif mode == "ANY":
        allowed = _get(config, "allowedFunctionNames", "allowed_function_names") or []
        conv.tool_choice = "tool" if len(allowed) == 1 else "required"
        conv.forced_tool = allowed[0] if len(allowed) == 1 else None

    generation = _get(body, "generationConfig", "generation_config") or {}
    if _get(generation, "responseMimeType", "response_mime_type") == "application/json":
        conv.json_mode = True
        schema = _get(generation, "responseJsonSchema", "response_json_schema") or _get(generation, "responseSchema", "response_schema")
        conv.json_schema = schema if isinstance(schema, dict) else None
    limit = _get(generation, "maxOutputTokens", "max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise FakeError(400, f"* GenerateContentRequest.generation_config.max_output_tokens: must be a positive integer, got {limit!r}")
        conv.max_tokens = limit
    return conv


def usage_metadata(conv: Conversation, answer: Answer, controls: Controls) -> dict[str, Any]:
    """Gemini counts cached tokens inside promptTokenCount, thoughts outside candidatesTokenCount."""
    if controls.usage is not None:
        return controls.usage
    prompt = max(conv.prompt.tokens, controls.cached_tokens)
    metadata: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": answer.output_tokens,
        "totalTokenCount": prompt + answer.output_tokens + controls.reasoning_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if controls.cached_tokens:
        metadata["cachedContentTokenCount"] = controls.cached_tokens
        metadata["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": controls.cached_tokens}]
    if controls.reasoning_tokens:
        metadata["thoughtsTokenCount"] = controls.reasoning_tokens
    return metadata


def _answer_parts(answer: Answer) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": answer.text}] if answer.text or not answer.tool_calls else []
    parts.extend({"functionCall": {"name": call.name, "args": call.arguments}} for call in answer.tool_calls)
    return parts


def generate(req: FakeRequest) -> Reply:
    body = _body(req)
    model = req.params["model"]
    conv = read_conversation(body, model)
    answer = plan_answer(conv, req.controls)
    metadata = usage_metadata(conv, answer, req.controls)
    response_id = new_id("", 22)
    finish = "MAX_TOKENS" if answer.truncated else "STOP"
    if req.params["action"] == "generateContent":
        return json_reply(
            {
                "candidates": [{"content": {"parts": _answer_parts(answer), "role": "model"}, "finishReason": finish, "index": 0}],
                "usageMetadata": metadata,
                "modelVersion": model,
                "responseId": response_id,
            }
        )

    prompt_count = metadata.get("promptTokenCount", 0)
    partial = {"promptTokenCount": prompt_count, "totalTokenCount": prompt_count}
    pieces = [] if answer.tool_calls else answer.text_pieces
    chunks: list[dict[str, Any]] = [
        {
            "candidates": [{"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}],
            "usageMetadata": partial,
            "modelVersion": model,
            "responseId": response_id,
        }
        for piece in pieces[:-1]
    ]
    last_parts = [{"text": pieces[-1]}] if pieces else _answer_parts(answer)
    chunks.append(
        {
            "candidates": [{"content": {"parts": last_parts, "role": "model"}, "finishReason": finish, "index": 0}],
            "usageMetadata": metadata,
            "modelVersion": model,
            "responseId": response_id,
        }
    )
    if req.query.get("alt") == "sse":
        return StreamReply(200, [b"data: " + dumps(chunk) + b"\r\n\r\n" for chunk in chunks], "text/event-stream")
    # Without alt=sse the API streams one JSON array, element by element.
    encoded = [dumps(chunk) for chunk in chunks]
    array = [b"[" + encoded[0]] + [b",\r\n" + item for item in encoded[1:]] + [b"]"]
    return StreamReply(200, array, "application/json; charset=UTF-8")


def count_tokens(req: FakeRequest) -> Reply:
    body = _body(req)
    inner = _get(body, "generateContentRequest", "generate_content_request")
    count = PromptCount()
    count_contents(inner if isinstance(inner, dict) else body, count)
    return json_reply({"totalTokens": count.tokens, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": count.tokens}]})


def _embedding(content: Any, model: str, dimensions: Any) -> dict[str, Any]:
    if not isinstance(content, dict):
        raise FakeError(400, "* EmbedContentRequest.content: content is not specified")
    text = " ".join(part.get("text", "") for part in content.get("parts") or [] if isinstance(part, dict))
    size = dimensions or _EMBEDDING_DIMENSIONS.get(model, _DEFAULT_EMBEDDING_DIMENSIONS)
    if not isinstance(size, int) or not 1 <= size <= 8192:
        raise FakeError(400, f"outputDimensionality must be an integer from 1 to 8192, got {size!r}")
    return {"values": list(embedding_vector(text, size))}


def _with_usage(answer: dict[str, Any], req: FakeRequest) -> dict[str, Any]:
    """Embedding answers carry only the vectors (the REST reference's EmbedContentResponse and
    BatchEmbedContentsResponse); `x-fake-usage` adds a `usageMetadata`, which newer google-genai SDKs read
    when the API sends one."""
    if req.controls.usage is not None:
        answer["usageMetadata"] = req.controls.usage
    return answer


def embed_content(req: FakeRequest) -> Reply:
    body = _body(req)
    model = req.params["model"]
    dimensions = _get(body, "outputDimensionality", "output_dimensionality")
    return json_reply(_with_usage({"embedding": _embedding(body.get("content"), model, dimensions)}, req))


def batch_embed_contents(req: FakeRequest) -> Reply:
    body = _body(req)
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise FakeError(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
    model = req.params["model"]
    embeddings = [
        _embedding(item.get("content"), model, _get(item, "outputDimensionality", "output_dimensionality"))
        for item in requests
        if isinstance(item, dict)
    ]
    return json_reply(_with_usage({"embeddings": embeddings}, req))


def predict(req: FakeRequest) -> Reply:
    """Imagen through the Gemini API: `instances[].prompt`, `parameters.sampleCount`/`aspectRatio`."""
    body = _body(req)
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict) or not instances[0].get("prompt"):
        raise FakeError(400, "* PredictRequest.instances[0].prompt: prompt is not specified")
    parameters = body.get("parameters") or {}
    count = parameters.get("sampleCount") or 4
    if not isinstance(count, int) or not 1 <= count <= 8:
        raise FakeError(400, f"sampleCount must be between 1 and 8, got {count}")
    width, height = _ASPECT_SIZES.get(parameters.get("aspectRatio") or "1:1", (1024, 1024))
    encoded = base64.b64encode(media.png_bytes(width, height)).decode()
    return json_reply({"predictions": [{"bytesBase64Encoded": encoded, "mimeType": "image/png"} for _ in range(count)]})


ACTIONS = {
    "generateContent": generate,
    "streamGenerateContent": generate,
    "countTokens": count_tokens,
    "embedContent": embed_content,
    "batchEmbedContents": batch_embed_contents,
    "predict": predict,
}
