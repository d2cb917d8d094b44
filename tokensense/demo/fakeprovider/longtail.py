"""The providers' other billable paths: image edits and variations, audio translations, moderations, legacy
completions, Mistral FIM and OCR, OpenAI videos, Gemini context caches, and a few resources that a gateway only
passes through (vector stores, fine-tuning jobs, Anthropic's Files API).

Each answers in the provider's wire format with the usage the real API reports (or none where the real API has
none), so the gateway's metering of them can be tested with the official SDKs as clients.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from tokensense.demo.fakeprovider import batches, media, openai_format
from tokensense.demo.fakeprovider.replies import (
    BodyReply,
    FakeError,
    FakeRequest,
    Reply,
    StreamReply,
    json_reply,
    sse_data,
    sse_event,
)
from tokensense.demo.fakeprovider.textgen import count_words, default_reply, new_id

# gpt-image-1 counts each input image of an edit as image input tokens (a fixed share a picture here).
EDIT_IMAGE_TOKENS = 194
VIDEO_BYTES = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(64)


def _form(req: FakeRequest) -> dict[str, str]:
    form = req.body if isinstance(req.body, dict) else {}
    fields = form.get("fields") if isinstance(form.get("fields"), dict) else {}
    return dict(fields or {})


def _images_from_files(req: FakeRequest) -> list[bytes]:
    return [data for name, data in req.files.items() if name == "image" or name.startswith("image[")]


# --- images ------------------------------------------------------------------------------------


def image_edits(req: FakeRequest) -> Reply:
    """`/v1/images/edits` (multipart: `image` or `image[]`, `prompt`, `model`, `n`, `size`, `quality`)."""
    fields = _form(req)
    images = _images_from_files(req)
    if not images:
        raise FakeError(400, "Missing required parameter: 'image'.", param="image")
    body: dict[str, Any] = {"model": fields.get("model") or "dall-e-2", "prompt": fields.get("prompt"),
                            "size": fields.get("size"), "quality": fields.get("quality"),
                            "response_format": fields.get("response_format")}
    if not body["prompt"]:
        raise FakeError(400, "Missing required parameter: 'prompt'.", param="prompt")
    if fields.get("n"):
        body["n"] = int(fields["n"]) if fields["n"].isdigit() else fields["n"]
    reply = openai_format.images(_with_body(req, body))
    if body["model"].startswith("gpt-image") and isinstance(reply, BodyReply) and req.controls.usage is None:
        import json

        answer = json.loads(reply.body)
        usage = answer["usage"]
        image_tokens = EDIT_IMAGE_TOKENS * len(images)
        usage["input_tokens"] += image_tokens
        usage["total_tokens"] += image_tokens
        usage["input_tokens_details"]["image_tokens"] = image_tokens
        return json_reply(answer, headers=reply.headers)
    return reply


def image_variations(req: FakeRequest) -> Reply:
    """`/v1/images/variations` (dall-e-2 only; no usage, priced per image by size)."""
    fields = _form(req)
    if "image" not in req.files:
        raise FakeError(400, "Missing required parameter: 'image'.", param="image")
    model = fields.get("model") or "dall-e-2"
    if model != "dall-e-2":
        raise FakeError(400, "Invalid value for 'model': only dall-e-2 supports variations.", param="model")
    body: dict[str, Any] = {"model": model, "prompt": "variation", "size": fields.get("size"),
                            "response_format": fields.get("response_format")}
    if fields.get("n"):
        body["n"] = int(fields["n"]) if fields["n"].isdigit() else fields["n"]
    return openai_format.images(_with_body(req, body))


def _with_body(req: FakeRequest, body: dict[str, Any]) -> FakeRequest:
    from dataclasses import replace

    return replace(req, body={k: v for k, v in body.items() if v is not None})


# --- audio translations ------------------------------------------------------------------------


def translations(req: FakeRequest) -> Reply:
    """`/v1/audio/translations`: English text of the audio (whisper-1). Like the real API, `json` and `text`
    carry no usage; `verbose_json` has the `duration`."""
    fields = _form(req)
    if "file" not in req.files:
        raise FakeError(400, "Missing required parameter: 'file'.", param="file")
    model = fields.get("model")
    if not model:
        raise FakeError(400, "Missing required parameter: 'model'.", param="model")
    seconds = round(media.audio_seconds(req.files["file"]), 3)
    text = req.controls.reply if req.controls.reply is not None else default_reply(model, 0)
    response_format = fields.get("response_format") or "json"
    headers = {"x-request-id": new_id("req_")}
    if response_format == "text":
        return BodyReply(200, (text + "\n").encode(), "text/plain; charset=utf-8", headers)
    if response_format == "verbose_json":
        return json_reply({"task": "translate", "language": "english", "duration": seconds, "text": text,
                           "segments": []}, headers=headers)
    if response_format != "json":
        raise FakeError(400, f"Invalid 'response_format': {response_format!r}.", param="response_format")
    return json_reply({"text": text}, headers=headers)


# --- moderations -------------------------------------------------------------------------------

_MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent", "self-harm",
    "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence", "violence/graphic",
)


def moderations(req: FakeRequest) -> Reply:
    """`/v1/moderations`: one result per input; flagged when the text says `violence` (free: no usage)."""
    body = req.body if isinstance(req.body, dict) else {}
    raw = body.get("input")
    if raw is None:
        raise FakeError(400, "Missing required parameter: 'input'.", param="input")
    inputs = raw if isinstance(raw, list) else [raw]
    results = []
    for item in inputs:
        text = item if isinstance(item, str) else str((item or {}).get("text", "")) if isinstance(item, dict) else ""
        flagged = "violence" in text.lower()
        categories = {name: flagged and name == "violence" for name in _MODERATION_CATEGORIES}
        scores = {name: (0.91 if categories[name] else 0.0001) for name in _MODERATION_CATEGORIES}
        applied = {name: ["text"] for name in _MODERATION_CATEGORIES}
        results.append({"flagged": flagged, "categories": categories, "category_scores": scores,
                        "category_applied_input_types": applied})
    model = body.get("model") or "omni-moderation-latest"
    return json_reply({"id": new_id("modr-", 20), "model": model, "results": results})


# --- legacy completions and Mistral FIM -------------------------------------------------------


def _completion_text(model: str, prompt: str, max_tokens: Any) -> tuple[str, bool]:
    words = default_reply(model, 0).split()
    cap = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None
    truncated = cap is not None and cap < len(words)
    return " ".join(words[:cap] if truncated else words), truncated


def completions(req: FakeRequest) -> Reply:
    """`/v1/completions` (legacy text completions: gpt-3.5-turbo-instruct, davinci-002), streamed too."""
    body = req.body if isinstance(req.body, dict) else {}
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise FakeError(400, "Missing required parameter: 'model'.", param="model")
    prompt = body.get("prompt")
    if prompt is None:
        raise FakeError(400, "Missing required parameter: 'prompt'.", param="prompt")
    prompts = prompt if isinstance(prompt, list) else [prompt]
    prompt_tokens = sum(max(1, count_words(str(p))) for p in prompts) + count_words(str(body.get("suffix") or ""))
    text, truncated = _completion_text(model, str(prompts[0]), body.get("max_tokens"))
    completion_tokens = max(1, count_words(text)) * len(prompts)
    usage = req.controls.usage or {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                   "total_tokens": prompt_tokens + completion_tokens}
    finish = "length" if truncated else "stop"
    base = {"id": new_id("cmpl-", 29), "object": "text_completion", "created": int(time.time()), "model": model,
            "system_fingerprint": "fp_fake"}
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = []
        for index, _ in enumerate(prompts):
            pieces = text.split(" ")
            for n, piece in enumerate(pieces):
                chunks.append(sse_data({**base, "choices": [{"text": piece if n == 0 else " " + piece, "index": index,
                                                             "logprobs": None, "finish_reason": None}]}))
            chunks.append(sse_data({**base, "choices": [{"text": "", "index": index, "logprobs": None,
                                                         "finish_reason": finish}]}))
        if include_usage:
            chunks.append(sse_data({**base, "choices": [], "usage": usage}))
        chunks.append(b"data: [DONE]\n\n")
        return StreamReply(200, chunks, "text/event-stream; charset=utf-8")
    choices = [{"text": text, "index": i, "logprobs": None, "finish_reason": finish} for i in range(len(prompts))]
    return json_reply({**base, "choices": choices, "usage": usage})


def fim(req: FakeRequest) -> Reply:
    """Mistral's `/v1/fim/completions` (Codestral): the middle between `prompt` and `suffix`, in chat shape."""
    body = req.body if isinstance(req.body, dict) else {}
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise FakeError(422, "model: Field required", param="model")
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise FakeError(422, "prompt: Field required", param="prompt")
    prompt_tokens = max(1, count_words(prompt)) + count_words(str(body.get("suffix") or ""))
    text, truncated = _completion_text(model, prompt, body.get("max_tokens"))
    completion_tokens = max(1, count_words(text))
    usage = req.controls.usage or {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                   "total_tokens": prompt_tokens + completion_tokens}
    finish = "length" if truncated else "stop"
    base = {"id": uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()), "model": model}
    if body.get("stream"):
        chunks = [sse_data({**base, "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "finish_reason": None}]})]
        pieces = text.split(" ")
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            chunk: dict[str, Any] = {**base, "object": "chat.completion.chunk",
                                     "choices": [{"index": 0, "delta": {"content": piece if n == 0 else " " + piece},
                                                  "finish_reason": finish if last else None}]}
            if last:
                chunk["usage"] = usage  # Mistral puts the usage on the last chunk
            chunks.append(sse_data(chunk))
        chunks.append(b"data: [DONE]\n\n")
        return StreamReply(200, chunks, "text/event-stream")
    return json_reply({**base, "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                                                    "tool_calls": None},
                                            "finish_reason": finish}], "usage": usage})


def ocr(req: FakeRequest) -> Reply:
    """Mistral's `/v1/ocr`: one page of markdown per `x-fake-pages` (default 2); priced per page."""
    body = req.body if isinstance(req.body, dict) else {}
    document = body.get("document")
    if not isinstance(document, dict) or document.get("type") not in ("document_url", "image_url", "file"):
        raise FakeError(422, "document: a document_url, image_url or file chunk is required", param="document")
    pages_header = req.headers.get("x-fake-pages", "2")
    pages = int(pages_header) if pages_header.isdigit() and int(pages_header) > 0 else 2
    if document["type"] == "image_url":
        pages = 1
    model = body.get("model") or "mistral-ocr-latest"
    return json_reply({
        "pages": [{"index": i, "markdown": f"# Page {i + 1}\n\nText of page {i + 1}.", "images": [],
                   "dimensions": {"dpi": 200, "height": 2200, "width": 1700}} for i in range(pages)],
        "model": model, "document_annotation": None,
        "usage_info": {"pages_processed": pages, "doc_size_bytes": 1024 * pages},
    })


# --- OpenAI videos -----------------------------------------------------------------------------

VIDEOS = "openai_videos"


def _video_object(video: dict[str, Any]) -> dict[str, Any]:
    if video["status"] in ("queued", "in_progress") and time.time() >= video["_finish_at"]:
        if video.get("_fail"):  # `x-fake-video-fail: 1`: the job fails instead (OpenAI bills nothing)
            video.update(status="failed", error={"code": "video_generation_failed", "message": "The fake failed."})
        else:
            video.update(status="completed", progress=100, completed_at=int(time.time()),
                         expires_at=int(time.time()) + 3600)
    return {k: v for k, v in video.items() if not k.startswith("_")}


def videos(req: FakeRequest) -> Reply:
    """`/v1/videos`: POST (multipart: `prompt`, `model`, `seconds`, `size`) starts a job, GET lists."""
    store = req.state.setdefault(VIDEOS, {})
    if req.method == "GET":
        data = [_video_object(v) for v in store.values()]
        return json_reply({"object": "list", "data": data, "has_more": False,
                           "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})
    fields = _form(req) if req.files or isinstance((req.body or {}).get("fields") if isinstance(req.body, dict)
                                                   else None, dict) else dict(req.body or {})
    prompt = fields.get("prompt")
    if not prompt:
        raise FakeError(400, "Missing required parameter: 'prompt'.", param="prompt")
    seconds = str(fields.get("seconds") or "4")
    if seconds not in ("4", "8", "12"):
        raise FakeError(400, f"Invalid value for 'seconds': {seconds!r}; use 4, 8 or 12.", param="seconds")
    size = str(fields.get("size") or "720x1280")
    if size not in ("720x1280", "1280x720", "1024x1792", "1792x1024"):
        raise FakeError(400, f"Invalid value for 'size': {size!r}.", param="size")
    video = {"id": f"video_{uuid.uuid4().hex[:24]}", "object": "video", "model": fields.get("model") or "sora-2",
             "status": "queued", "progress": 0, "created_at": int(time.time()), "completed_at": None,
             "expires_at": None, "prompt": prompt, "remixed_from_video_id": None, "seconds": seconds, "size": size,
             "error": None, "_finish_at": time.time() + batches.finish_after(req),
             "_fail": req.headers.get("x-fake-video-fail") == "1"}
    store[video["id"]] = video
    return json_reply(_video_object(video))


def _find_video(req: FakeRequest) -> dict[str, Any]:
    video = req.state.setdefault(VIDEOS, {}).get(req.params.get("id", ""))
    if video is None:
        raise FakeError(404, f"Video with id '{req.params.get('id', '')}' not found.", param="video_id")
    return video


def video(req: FakeRequest) -> Reply:
    """`/v1/videos/{id}`: GET retrieves, DELETE deletes."""
    found = _find_video(req)
    if req.method == "DELETE":
        del req.state[VIDEOS][found["id"]]
        return json_reply({"id": found["id"], "object": "video.deleted", "deleted": True})
    return json_reply(_video_object(found))


def video_content(req: FakeRequest) -> Reply:
    """`/v1/videos/{id}/content`: the MP4 once completed."""
    found = _video_object(_find_video(req))
    if found["status"] != "completed":
        raise FakeError(400, "Video is not ready yet.")
    return BodyReply(200, VIDEO_BYTES, content_type="video/mp4")


# --- Gemini context caches ---------------------------------------------------------------------

CACHES = "gemini_cached_contents"


def _ttl_seconds(value: Any) -> float:
    if isinstance(value, str) and value.endswith("s"):
        try:
            return float(value[:-1])
        except ValueError:
            pass
    raise FakeError(400, f"Invalid ttl {value!r}: a duration such as \"300s\".")


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(seconds))


def _cache_tokens(body: dict[str, Any]) -> int:
    words = 0
    for content in body.get("contents") or []:
        for part in (content or {}).get("parts") or []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                words += count_words(part["text"])
    system = body.get("systemInstruction") or body.get("system_instruction") or {}
    for part in system.get("parts") or [] if isinstance(system, dict) else []:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            words += count_words(part["text"])
    return words


def cached_contents(req: FakeRequest) -> Reply:
    """`/v1beta/cachedContents`: POST creates (model, contents, `ttl` or `expireTime`), GET lists."""
    store = req.state.setdefault(CACHES, {})
    if req.method == "GET":
        return json_reply({"cachedContents": [_public(c) for c in store.values()]})
    body = req.body if isinstance(req.body, dict) else {}
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise FakeError(400, "model is required.")
    now = time.time()
    expire = now + (_ttl_seconds(body["ttl"]) if "ttl" in body else 3600)
    tokens = _cache_tokens(body)
    cache = {"name": f"cachedContents/{uuid.uuid4().hex[:16]}", "model": model if model.startswith("models/")
             else f"models/{model}", "displayName": body.get("displayName") or "", "createTime": _rfc3339(now),
             "updateTime": _rfc3339(now), "expireTime": _rfc3339(expire), "usageMetadata": {"totalTokenCount": tokens}}
    store[cache["name"]] = cache
    return json_reply(_public(cache))


def _public(cache: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cache.items() if not k.startswith("_")}


def cached_content(req: FakeRequest) -> Reply:
    """`/v1beta/cachedContents/{id}`: GET, PATCH (a new `ttl` or `expireTime`), DELETE."""
    store = req.state.setdefault(CACHES, {})
    name = f"cachedContents/{req.params.get('id', '')}"
    cache = store.get(name)
    if cache is None:
        raise FakeError(404, f"CachedContent not found (or permission denied): {name}")
    if req.method == "DELETE":
        del store[name]
        return json_reply({})
    if req.method == "PATCH":
        body = req.body if isinstance(req.body, dict) else {}
        now = time.time()
        if "ttl" in body:
            cache["expireTime"] = _rfc3339(now + _ttl_seconds(body["ttl"]))
        elif isinstance(body.get("expireTime"), str):
            cache["expireTime"] = body["expireTime"]
        cache["updateTime"] = _rfc3339(now)
    return json_reply(_public(cache))


# --- resources a gateway only passes through ----------------------------------------------------


def vector_stores(req: FakeRequest) -> Reply:
    """`/v1/vector_stores`: GET lists (empty), POST creates one."""
    if req.method == "GET":
        return json_reply({"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False})
    body = req.body if isinstance(req.body, dict) else {}
    return json_reply({"id": f"vs_{uuid.uuid4().hex[:24]}", "object": "vector_store", "created_at": int(time.time()),
                       "name": body.get("name") or "", "usage_bytes": 0, "last_active_at": int(time.time()),
                       "status": "completed", "expires_after": None, "expires_at": None, "metadata": {},
                       "file_counts": {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 0}})


def fine_tuning_jobs(req: FakeRequest) -> Reply:
    """`/v1/fine_tuning/jobs`: GET lists (empty)."""
    return json_reply({"object": "list", "data": [], "has_more": False})


def anthropic_files(req: FakeRequest) -> Reply:
    """Anthropic's Files API `/v1/files` (beta): POST uploads (multipart `file`), GET lists."""
    store = req.state.setdefault("anthropic_files", {})
    if req.method == "GET":
        data = list(store.values())
        return json_reply({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                           "last_id": data[-1]["id"] if data else None})
    if "file" not in req.files:
        raise FakeError(400, "file: Field required")
    form = req.body if isinstance(req.body, dict) else {}
    meta = (form.get("files") or {}).get("file") or {}
    entry = {"id": f"file_{uuid.uuid4().hex[:24]}", "type": "file", "filename": meta.get("filename") or "upload",
             "mime_type": meta.get("content_type") or "application/octet-stream", "size_bytes": len(req.files["file"]),
             "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "downloadable": False}
    store[entry["id"]] = entry
    return json_reply(entry)



def vector_store(req: FakeRequest) -> Reply:
    """`/v1/vector_stores/{id}`: DELETE deletes (the fake keeps no stores: any id is deleted)."""
    return json_reply({"id": req.params.get("id", ""), "object": "vector_store.deleted", "deleted": True})


def thread_runs(req: FakeRequest) -> Reply:
    """`/v1/threads/runs` (Assistants API, create a thread and run it): streamed, the run's events with its `usage`
    on `thread.run.completed`; unstreamed, the queued run (no usage yet)."""
    body = req.body if isinstance(req.body, dict) else {}
    if not isinstance(body.get("assistant_id"), str):
        raise FakeError(400, "Missing required parameter: 'assistant_id'.", param="assistant_id")
    now = int(time.time())
    thread = {"id": f"thread_{uuid.uuid4().hex[:24]}", "object": "thread", "created_at": now, "metadata": {},
              "tool_resources": {}}
    run: dict[str, Any] = {
        "id": f"run_{uuid.uuid4().hex[:24]}", "object": "thread.run", "created_at": now, "thread_id": thread["id"],
        "assistant_id": body["assistant_id"], "status": "queued", "model": body.get("model") or "gpt-4o-mini",
        "instructions": "", "tools": [], "metadata": {}, "usage": None, "parallel_tool_calls": True,
        "response_format": "auto", "tool_choice": "auto", "truncation_strategy": {"type": "auto", "last_messages": None},
        "temperature": 1.0, "top_p": 1.0, "max_prompt_tokens": None, "max_completion_tokens": None,
        "incomplete_details": None, "last_error": None, "required_action": None, "started_at": None,
        "expires_at": None, "cancelled_at": None, "failed_at": None, "completed_at": None,
    }
    if not body.get("stream"):
        return json_reply(run)
    usage = req.controls.usage or {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
    completed = {**run, "status": "completed", "started_at": now, "completed_at": now, "usage": usage}
    return StreamReply(200, [sse_event("thread.created", thread), sse_event("thread.run.created", run),
                             sse_event("thread.run.completed", completed), b"event: done\ndata: [DONE]\n\n"],
                       "text/event-stream")


def container_file_content(req: FakeRequest) -> Reply:
    """`/v1/containers/{id}/files/{file}/content`: a file's bytes (`x-fake-bytes` of them, default 1 MiB)."""
    size_header = req.headers.get("x-fake-bytes", "")
    size = int(size_header) if size_header.isdigit() else 1024 * 1024
    pattern = f"{req.params.get('id', '')}/{req.params.get('file', '')}\n".encode()
    return BodyReply(200, (pattern * (size // len(pattern) + 1))[:size], content_type="application/octet-stream")
