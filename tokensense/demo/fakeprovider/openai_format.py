"""The OpenAI wire format (also spoken by xAI and Mistral): chat, embeddings, images, audio, models."""

from __future__ import annotations

import base64
import dataclasses
import math
import struct
import time
from typing import Any

from tokensense.demo.fakeprovider import media
from tokensense.demo.fakeprovider.replies import (
    BodyReply,
    FakeError,
    FakeRequest,
    Reply,
    StreamReply,
    json_reply,
    sse_data,
)
from tokensense.demo.fakeprovider.textgen import (
    Answer,
    Controls,
    Conversation,
    ToolSpec,
    count_words,
    default_reply,
    embedding_vector,
    new_id,
    plan_answer,
    split_pieces,
)

NAME = "openai"

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}

MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-5",
    "gpt-5-mini",
    "o3",
    "o4-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "dall-e-3",
    "gpt-image-1",
    "tts-1",
    "gpt-4o-mini-tts",
    "whisper-1",
    "gpt-4o-transcribe",
    "grok-4",
    "grok-3-mini",
    "mistral-large-latest",
    "mistral-small-latest",
    "mistral-embed",
]

_EMBEDDING_DIMENSIONS = {"text-embedding-3-large": 3072, "mistral-embed": 1024}
_DEFAULT_EMBEDDING_DIMENSIONS = 1536

# gpt-image-1 output tokens per image by quality, for square and non-square sizes
# (OpenAI's published table); dall-e models report no usage at all.
_GPT_IMAGE_TOKENS = {"low": (272, 408), "medium": (1056, 1584), "high": (4160, 6240)}


def authenticated(req: FakeRequest) -> bool:
    auth = req.headers.get("authorization", "")
    return auth[:7].lower() == "bearer " and bool(auth[7:].strip())


def error(status: int, message: str, param: str | None = None) -> BodyReply:
    kind, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    if status == 401 and "didn't provide" in message:
        code = None
    headers = {"x-request-id": new_id("req_")}
    if status == 429:
        headers["retry-after"] = "1"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return json_reply(body, status=status, headers=headers)


MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


def _body(req: FakeRequest) -> dict[str, Any]:
    if not isinstance(req.body, dict):
        raise FakeError(400, "We could not parse the JSON body of your request. Send a JSON object.")
    return req.body


def _require(body: dict[str, Any], name: str) -> Any:
    value = body.get(name)
    if value is None or value == "":
        raise FakeError(400, f"Missing required parameter: '{name}'.", param=name)
    return value


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")
    return ""


def read_conversation(body: dict[str, Any]) -> Conversation:
    model = _require(body, "model")
    messages = _require(body, "messages")
    if not isinstance(messages, list) or not messages:
        raise FakeError(400, "Invalid 'messages': expected a non-empty array of messages.", param="messages")
    conv = Conversation(model=str(model))
    count = conv.prompt
    for message in messages:
        if not isinstance(message, dict):
            raise FakeError(400, "Invalid 'messages': each message must be an object.", param="messages")
        content = message.get("content")
        if isinstance(content, str):
            count.add_text(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text":
                    count.add_text(part.get("text"))
                elif part.get("type") == "image_url":
                    count.add_image()
    last = messages[-1]
    role = last.get("role")
    conv.last_is_user = role == "user"
    if role in ("tool", "function"):
        conv.tool_result = _content_text(last.get("content"))

    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type", "function") == "function" and isinstance(function, dict) and function.get("name"):
            conv.tools.append(ToolSpec(function["name"], function.get("parameters") or {}))
    choice = body.get("tool_choice")
    if choice in ("none", "auto", "required"):
        conv.tool_choice = choice
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        conv.tool_choice = "tool"
        conv.forced_tool = choice["function"].get("name")

    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_object":
            conv.json_mode = True
        elif response_format.get("type") == "json_schema":
            conv.json_mode = True
            schema = (response_format.get("json_schema") or {}).get("schema")
            conv.json_schema = schema if isinstance(schema, dict) else None

    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise FakeError(
                400,
                f"Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got {limit!r} instead.",
                param="max_tokens",
            )
        conv.max_tokens = limit
    return conv


def chat_usage(conv: Conversation, answer: Answer, controls: Controls) -> dict[str, Any]:
    if controls.usage is not None:
        return controls.usage
    prompt_tokens = max(conv.prompt.tokens, controls.cached_tokens)
    completion_tokens = answer.output_tokens + controls.reasoning_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": controls.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": controls.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish_reason(answer: Answer) -> str:
    if answer.tool_calls:
        return "tool_calls"
    return "length" if answer.truncated else "stop"


def chat(req: FakeRequest) -> Reply:
    body = _body(req)
    conv = read_conversation(body)
    controls = req.controls
    if body.get("parallel_tool_calls") is False and controls.tool_calls > 1:
        controls = dataclasses.replace(controls, tool_calls=1)
    answer = plan_answer(conv, controls)
    usage = chat_usage(conv, answer, controls)
    tier = _service_tier(body, controls)
    completion_id = new_id("chatcmpl-", 29)
    created = int(time.time())
    headers = {"x-request-id": new_id("req_")}
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamReply(
            200, _chat_chunks(completion_id, created, conv.model, answer, usage, include_usage, tier), "text/event-stream; charset=utf-8", headers
        )

    message: dict[str, Any] = {
        "role": "assistant",
        "content": answer.text if answer.text or not answer.tool_calls else None,
        "refusal": None,
        "annotations": [],
    }
    if answer.tool_calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}
            for call in answer.tool_calls
        ]
    return json_reply(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": conv.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _finish_reason(answer)}],
            "usage": usage,
            "service_tier": tier,
            "system_fingerprint": "fp_fake",
        },
        headers=headers,
    )


def _service_tier(body: dict[str, Any], controls: Controls) -> str:
    """The tier the answer names: `x-fake-service-tier`, else the one asked for (OpenAI serves `auto` as default)."""
    if controls.service_tier:
        return controls.service_tier
    asked = body.get("service_tier")
    return asked if asked in ("default", "flex", "priority", "scale") else "default"


def _chat_chunks(completion_id: str, created: int, model: str, answer: Answer, usage: dict[str, Any], include_usage: bool,
                 tier: str = "default") -> list[bytes]:
    base: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "service_tier": tier,
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return sse_data({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]})

    chunks = [chunk({"role": "assistant", "content": None if answer.tool_calls else "", "refusal": None})]
    chunks.extend(chunk({"content": piece}) for piece in answer.text_pieces)
    for index, call in enumerate(answer.tool_calls):
        chunks.append(
            chunk({"tool_calls": [{"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}]})
        )
        chunks.extend(
            chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}) for piece in split_pieces(call.arguments_json)
        )
    chunks.append(chunk({}, _finish_reason(answer)))
    if include_usage:
        chunks.append(sse_data({**base, "choices": [], "usage": usage}))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def embeddings(req: FakeRequest) -> Reply:
    body = _body(req)
    model = str(_require(body, "model"))
    raw_input = _require(body, "input")
    if isinstance(raw_input, str) or (isinstance(raw_input, list) and raw_input and isinstance(raw_input[0], int)):
        inputs: list[Any] = [raw_input]
    elif isinstance(raw_input, list) and raw_input:
        inputs = raw_input
    else:
        raise FakeError(400, "'input' must be a non-empty string, array of strings, or array of token arrays.", param="input")
    dimensions = body.get("dimensions") or _EMBEDDING_DIMENSIONS.get(model, _DEFAULT_EMBEDDING_DIMENSIONS)
    if not isinstance(dimensions, int) or not 1 <= dimensions <= 8192:
        raise FakeError(400, f"Invalid 'dimensions': expected an integer from 1 to 8192, got {dimensions!r}.", param="dimensions")
    as_base64 = body.get("encoding_format") == "base64"
    words = 0
    data = []
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            words += count_words(item)
            seed = item
        elif isinstance(item, list):
            words += len(item)
            seed = ",".join(str(token) for token in item)
        else:
            raise FakeError(400, "'input' must be a string, an array of strings, or an array of token arrays.", param="input")
        vector = embedding_vector(seed, int(dimensions))
        encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else list(vector)
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = max(1, words)
    return json_reply(
        {"object": "list", "data": data, "model": model,
         "usage": req.controls.usage or {"prompt_tokens": tokens, "total_tokens": tokens}},
        headers={"x-request-id": new_id("req_")},
    )


def _image_size(size: Any) -> tuple[int, int]:
    if isinstance(size, str) and "x" in size:
        width, _, height = size.partition("x")
        if width.isdigit() and height.isdigit():
            return int(width), int(height)
    return 1024, 1024


def images(req: FakeRequest) -> Reply:
    body = _body(req)
    model = str(body.get("model") or "dall-e-2")
    prompt = _require(body, "prompt")
    count = body.get("n") or 1
    if not isinstance(count, int) or not 1 <= count <= 10:
        raise FakeError(400, f"Invalid 'n': expected a value between 1 and 10, got {count}.", param="n")
    width, height = _image_size(body.get("size"))
    gpt_image = model.startswith("gpt-image")
    as_base64 = gpt_image or body.get("response_format") == "b64_json"
    data = []
    for _ in range(count):
        if as_base64:
            item: dict[str, Any] = {"b64_json": base64.b64encode(media.png_bytes(width, height)).decode()}
        else:
            item = {"url": f"{req.origin}/_fake/images/{new_id('img-', 16)}-{width}x{height}.png"}
        if model == "dall-e-3":
            item["revised_prompt"] = str(prompt)
        data.append(item)
    answer: dict[str, Any] = {"created": int(time.time()), "data": data}
    if gpt_image:
        quality = body.get("quality") if body.get("quality") in _GPT_IMAGE_TOKENS else "medium"
        per_image = _GPT_IMAGE_TOKENS[quality][0 if width == height else 1]
        prompt_tokens = max(1, count_words(str(prompt)))
        answer.update(
            background=body.get("background") or "opaque",
            output_format=body.get("output_format") or "png",
            quality=quality,
            size=f"{width}x{height}",
            usage=req.controls.usage or {
                "input_tokens": prompt_tokens,
                "output_tokens": per_image * count,
                "total_tokens": prompt_tokens + per_image * count,
                "input_tokens_details": {"text_tokens": prompt_tokens, "image_tokens": 0},
            },
        )
    return json_reply(answer, headers={"x-request-id": new_id("req_")})


def speech(req: FakeRequest) -> Reply:
    body = _body(req)
    _require(body, "model")
    text = str(_require(body, "input"))
    _require(body, "voice")
    response_format = body.get("response_format") or "mp3"
    if response_format not in media.AUDIO_CONTENT_TYPES:
        raise FakeError(
            400,
            f"Invalid 'response_format': {response_format!r} is not one of {sorted(media.AUDIO_CONTENT_TYPES)}.",
            param="response_format",
        )
    audio = media.speech_audio(text, response_format)
    step = max(1, math.ceil(len(audio) / 4))
    chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
    return StreamReply(200, chunks, media.AUDIO_CONTENT_TYPES[response_format], {"x-request-id": new_id("req_")})


def transcriptions(req: FakeRequest) -> Reply:
    form = req.body if isinstance(req.body, dict) else {}
    fields = form.get("fields") or {}
    if "file" not in req.files:
        raise FakeError(400, "Missing required parameter: 'file'. Send it as a multipart/form-data file field.", param="file")
    model = fields.get("model")
    if not model:
        raise FakeError(400, "Missing required parameter: 'model'.", param="model")
    response_format = fields.get("response_format") or "json"
    seconds = round(media.audio_seconds(req.files["file"]), 3)
    text = req.controls.reply if req.controls.reply is not None else default_reply(model, 0)
    billed_seconds = max(1, math.ceil(seconds))
    if model.startswith("whisper"):
        usage: dict[str, Any] = {"type": "duration", "seconds": billed_seconds}
    else:
        audio_tokens = max(1, math.ceil(seconds * 10))
        output_tokens = max(1, count_words(text))
        usage = {
            "type": "tokens",
            "input_tokens": audio_tokens,
            "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
            "output_tokens": output_tokens,
            "total_tokens": audio_tokens + output_tokens,
        }
    if req.controls.usage is not None:
        usage = req.controls.usage
    headers = {"x-request-id": new_id("req_")}
    if response_format == "text":
        return BodyReply(200, (text + "\n").encode(), "text/plain; charset=utf-8", headers)
    if response_format in ("srt", "vtt"):
        return BodyReply(200, _captions(text, seconds, response_format).encode(), "text/plain; charset=utf-8", headers)
    if response_format == "verbose_json":
        segment = {
            "id": 0,
            "seek": 0,
            "start": 0.0,
            "end": seconds,
            "text": text,
            "tokens": list(range(50364, 50364 + max(1, count_words(text)))),
            "temperature": 0.0,
            "avg_logprob": -0.2,
            "compression_ratio": 1.0,
            "no_speech_prob": 0.01,
        }
        return json_reply(
            {"task": "transcribe", "language": "english", "duration": seconds, "text": text, "segments": [segment], "usage": usage},
            headers=headers,
        )
    if response_format != "json":
        raise FakeError(
            400, f"Invalid 'response_format': {response_format!r}; use json, text, srt, verbose_json or vtt.", param="response_format"
        )
    return json_reply({"text": text, "usage": usage}, headers=headers)


def _captions(text: str, seconds: float, kind: str) -> str:
    def stamp(value: float, sep: str) -> str:
        whole = int(value)
        return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}{sep}{int(round((value - whole) * 1000)):03d}"

    if kind == "srt":
        return f"1\n{stamp(0, ',')} --> {stamp(seconds, ',')}\n{text}\n\n"
    return f"WEBVTT\n\n{stamp(0, '.')} --> {stamp(seconds, '.')}\n{text}\n\n"


def models(req: FakeRequest) -> Reply:
    return json_reply(
        {"object": "list", "data": [{"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "fake"} for name in MODELS]}
    )
