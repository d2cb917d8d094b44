"""The fake provider's aiohttp app: suffix routing, auth, control headers, request log."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from types import ModuleType
from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from tokensense.demo.fakeprovider import (
    anthropic_format,
    azure_format,
    batches,
    bedrock_format,
    fal_format,
    gemini_format,
    gemini_live,
    longtail,
    media,
    openai_format,
    realtime,
    responses_format,
    responses_ws,
    vertex_format,
)
from tokensense.demo.fakeprovider.replies import BodyReply, FakeError, FakeRequest, Reply, json_reply
from tokensense.demo.fakeprovider.textgen import NO_CONTROLS, ControlError, Controls, parse_controls

REQUEST_LOG_SIZE = 2000
REQUEST_LOG = web.AppKey("tokensense_fake_request_log", deque)
FAULTS = web.AppKey("tokensense_fake_faults", list)
STATE = web.AppKey("tokensense_fake_state", dict)
MAX_UPLOAD_BYTES = 64 * 1024 * 1024

Handler = Callable[[FakeRequest], Reply]


class Route(NamedTuple):
    fmt: ModuleType
    """One of the `*_format` modules: NAME, authenticated(), error(), MISSING_KEY."""
    handler: Handler | None
    """None when the path is known but the method or action is not."""
    prefix: str
    params: dict[str, str]


_REALTIME_CALL_PATH = re.compile(r"(?P<prefix>.*?)(?:/v1)?/realtime/calls/(?P<id>rtc_[A-Za-z0-9_-]+)/(?P<action>hangup)\Z")
_RESPONSES_PATH = re.compile(r"^(?P<prefix>.*?)(?:/v1)?/responses(?:/(?P<id>[^/]+)(?:/(?P<action>[^/]+))?)?/?$")
_BEDROCK_PATH = re.compile(r"^(?P<prefix>.*?)/model/(?P<model>[^/]+)/(?P<action>converse|converse-stream|invoke|invoke-with-response-stream)$")
_VERTEX_PATH = re.compile(
    r"^(?P<prefix>.*?)/(?P<version>v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/(?P<publisher>google|anthropic)/models/(?P<model>[^/:]+):(?P<action>[A-Za-z]+)$"
)
_AZURE_PATH = re.compile(
    r"^(?P<prefix>.*?)/openai/(?:deployments/(?P<deployment>[^/]+)|v1)/(?P<operation>chat/completions|embeddings)$"
)
_GEMINI_PATH = re.compile(r"^(?P<prefix>.*?)/(?:v1beta|v1alpha|v1)/models/(?P<model>[^/:]+):(?P<action>[A-Za-z]+)$")
_MISTRAL_BATCH_PATH = re.compile(r"^(?P<prefix>.*?)/v1/batch/jobs(?:/(?P<id>[^/]+)(?:/(?P<action>cancel))?)?$")
_MESSAGE_BATCHES_PATH = re.compile(r"^(?P<prefix>.*?)/v1/messages/batches(?:/(?P<id>[^/]+)(?:/(?P<action>cancel|results))?)?$")
_OPENAI_BATCH_PATH = re.compile(
    r"^(?P<prefix>.*?)(?:/v1)?/(?P<kind>files|batches)(?:/(?P<id>[^/]+)(?:/(?P<action>content|cancel))?)?$")
_GEMINI_FILES_PATH = re.compile(
    r"^(?P<prefix>.*?)/(?P<kind>upload/|download/)?(?P<version>v1beta|v1alpha|v1)/(?P<what>files|batches)"
    r"(?:/(?P<id>[^/:]+)(?::(?P<action>download|cancel))?)?$")
_LONGTAIL_PATH = re.compile(
    r"^(?P<prefix>.*?)/(?P<kind>v1/videos|videos|v1beta/cachedContents|v1/cachedContents|v1/vector_stores|vector_stores"
    r"|v1/fine_tuning/jobs|fine_tuning/jobs|v1/threads/runs|threads/runs)(?:/(?P<id>[^/]+)(?:/(?P<action>content))?)?$")
_CONTAINER_FILE_PATH = re.compile(r"^(?P<prefix>.*?)/v1/containers/(?P<id>[^/]+)/files/(?P<file>[^/]+)/content$")
_LONGTAIL_HANDLERS: dict[tuple[str, bool, str | None], dict[str, Handler]] = {
    ("videos", False, None): {"GET": longtail.videos, "POST": longtail.videos},
    ("videos", True, None): {"GET": longtail.video, "DELETE": longtail.video},
    ("videos", True, "content"): {"GET": longtail.video_content},
    ("cachedContents", False, None): {"GET": longtail.cached_contents, "POST": longtail.cached_contents},
    ("cachedContents", True, None): {"GET": longtail.cached_content, "PATCH": longtail.cached_content,
                                     "DELETE": longtail.cached_content},
    ("vector_stores", False, None): {"GET": longtail.vector_stores, "POST": longtail.vector_stores},
    ("fine_tuning/jobs", False, None): {"GET": longtail.fine_tuning_jobs},
    ("vector_stores", True, None): {"DELETE": longtail.vector_store},
    ("threads/runs", False, None): {"POST": longtail.thread_runs},
}
# (kind, has id, action) -> {method: handler}
_BATCH_HANDLERS: dict[tuple[str, bool, str | None], dict[str, Handler]] = {
    ("files", False, None): {"GET": batches.files, "POST": batches.files},
    ("files", True, None): {"GET": batches.file, "DELETE": batches.file},
    ("files", True, "content"): {"GET": batches.file_content},
    ("batches", False, None): {"GET": batches.batches, "POST": batches.batches},
    ("batches", True, None): {"GET": batches.batch},
    ("batches", True, "cancel"): {"POST": batches.cancel_batch},
    ("message_batches", False, None): {"GET": batches.message_batches, "POST": batches.message_batches},
    ("message_batches", True, None): {"GET": batches.message_batch, "DELETE": batches.message_batch},
    ("message_batches", True, "cancel"): {"POST": batches.cancel_message_batch},
    ("message_batches", True, "results"): {"GET": batches.message_batch_results},
    ("batch/jobs", False, None): {"GET": batches.mistral_batch_jobs, "POST": batches.mistral_batch_jobs},
    ("batch/jobs", True, None): {"GET": batches.mistral_batch_job},
    ("batch/jobs", True, "cancel"): {"POST": batches.mistral_batch_cancel},
}

# (suffix, method, format, handler, whether a "/v1" just before the suffix belongs to it).
# Longest suffixes first; the first match wins.
_SUFFIX_ROUTES: list[tuple[str, str, ModuleType, Handler, bool]] = [
    ("/v1/messages/count_tokens", "POST", anthropic_format, anthropic_format.count_tokens, False),
    ("/v1/messages", "POST", anthropic_format, anthropic_format.messages, False),
    ("/audio/translations", "POST", openai_format, longtail.translations, True),
    ("/images/variations", "POST", openai_format, longtail.image_variations, True),
    ("/fim/completions", "POST", openai_format, longtail.fim, True),
    ("/images/edits", "POST", openai_format, longtail.image_edits, True),
    ("/moderations", "POST", openai_format, longtail.moderations, True),
    ("/realtime/client_secrets", "POST", openai_format, realtime.client_secrets, True),
    ("/realtime/calls", "POST", openai_format, realtime.calls, True),
    ("/ocr", "POST", openai_format, longtail.ocr, True),
    ("/audio/transcriptions", "POST", openai_format, openai_format.transcriptions, True),
    ("/images/generations", "POST", openai_format, openai_format.images, True),
    ("/chat/completions", "POST", openai_format, openai_format.chat, True),
    ("/audio/speech", "POST", openai_format, openai_format.speech, True),
    ("/embeddings", "POST", openai_format, openai_format.embeddings, True),
    ("/completions", "POST", openai_format, longtail.completions, True),  # after /chat/ and /fim/completions
    ("/models", "GET", openai_format, openai_format.models, True),
]


def resolve_route(method: str, path: str, headers: Any) -> Route | None:
    """Find the endpoint by the end of the path; whatever comes before is the prefix."""
    if "/model/" in path and (match := _BEDROCK_PATH.match(path)):
        handler = bedrock_format.ACTIONS[match["action"]] if method == "POST" else None
        return Route(bedrock_format, handler, match["prefix"], {"model": match["model"], "action": match["action"]})
    if "/projects/" in path and (match := _VERTEX_PATH.match(path)):
        actions = gemini_format.ACTIONS if match["publisher"] == "google" else {"rawPredict": 1, "streamRawPredict": 1}
        handler = vertex_format.predict if method == "POST" and match["action"] in actions else None
        params = {k: match[k] for k in ("version", "project", "location", "publisher", "model", "action")}
        return Route(vertex_format, handler, match["prefix"], params)
    if path.endswith("/token") and method == "POST":
        return Route(vertex_format.TokenEndpoint, vertex_format.token, path[: -len("/token")], {})  # type: ignore[arg-type]
    if "/openai/" in path and (match := _AZURE_PATH.match(path)):
        # `/openai/v1/...` is Azure's v1 API when keyed with `api-key`, else OpenAI under an `/openai` prefix.
        if match["deployment"] is not None or "api-key" in headers:
            handler = azure_format.OPERATIONS[match["operation"]] if method == "POST" else None
            params = {"deployment": match["deployment"]} if match["deployment"] else {}
            return Route(azure_format, handler, match["prefix"], params)
    if "/containers/" in path and (match := _CONTAINER_FILE_PATH.match(path)):
        handler = longtail.container_file_content if method == "GET" else None
        return Route(openai_format, handler, match["prefix"], {"id": match["id"], "file": match["file"]})
    if ("/batches" in path or "/files" in path) and (route := _gemini_batch_route(method, path, headers)):
        return route
    if ":" in path:
        match = _GEMINI_PATH.match(path)
        if match:
            handler = gemini_format.ACTIONS.get(match["action"]) if method == "POST" else None
            if match["action"] == "batchGenerateContent" and method == "POST":
                handler = batches.gemini_batch_create
            return Route(gemini_format, handler, match["prefix"], {"model": match["model"], "action": match["action"]})
    if "/batches" in path or "/files" in path or "/batch/jobs" in path:
        if route := _batch_route(method, path, headers):
            return route
    if route := _longtail_route(method, path):
        return route
    if "/realtime/calls/" in path and (match := _REALTIME_CALL_PATH.match(path)):
        return Route(openai_format, realtime.hangup if method == "POST" else None, match["prefix"], {"id": match["id"]})
    if "/responses" in path:
        match = _RESPONSES_PATH.match(path)
        if match:
            handler = responses_format.handler_for(method, match["id"], match["action"])
            params = {"id": match["id"]} if match["id"] else {}
            return Route(responses_format, handler, match["prefix"], params)
    fal_at = path.find("/fal-ai/")
    if fal_at >= 0:
        return Route(fal_format, fal_format.generate if method == "POST" else None, path[:fal_at], {"app": path[fal_at + 1 :]})
    for suffix, route_method, fmt, handler, strip_v1 in _SUFFIX_ROUTES:
        if path.endswith(suffix):
            prefix = path[: len(path) - len(suffix)]
            if strip_v1 and prefix.endswith("/v1"):
                prefix = prefix[:-3]
            if suffix == "/models" and "anthropic-version" in headers:
                fmt, handler = anthropic_format, anthropic_format.models
            return Route(fmt, handler if method == route_method else None, prefix, {})
    return None


def _gemini_batch_route(method: str, path: str, headers: Any) -> Route | None:
    """Gemini's files (resumable upload, download) and batch jobs (`/v1/files` is OpenAI's unless Google's key header
    says otherwise)."""
    match = _GEMINI_FILES_PATH.match(path)
    if match is None or (match["version"] == "v1" and not match["kind"] and "x-goog-api-key" not in headers):
        return None
    what, kind, has_id, action = match["what"], match["kind"], match["id"] is not None, match["action"]
    handlers: dict[str, Handler] = {}
    if what == "files" and kind == "upload/" and not has_id:
        handlers = {"POST": batches.gemini_upload}
    elif what == "files" and kind != "upload/" and has_id and action == "download":
        handlers = {"GET": batches.gemini_download}
    elif kind is None and not has_id:
        handlers = {"GET": batches.gemini_files if what == "files" else batches.gemini_batches}
    elif kind is None and action is None:
        handlers = {"GET": batches.gemini_file, "DELETE": batches.gemini_file} if what == "files" else \
            {"GET": batches.gemini_batch, "DELETE": batches.gemini_batch}
    elif kind is None and what == "batches" and action == "cancel":
        handlers = {"POST": batches.gemini_batch_cancel}
    else:
        return None
    return Route(gemini_format, handlers.get(method), match["prefix"], {"id": match["id"]} if has_id else {})


def _longtail_route(method: str, path: str) -> Route | None:
    """Videos, Gemini context caches, vector stores and fine-tuning jobs (see longtail.py)."""
    match = _LONGTAIL_PATH.match(path)
    if match is None:
        return None
    kind = match["kind"].removeprefix("v1/").removeprefix("v1beta/")
    handlers = _LONGTAIL_HANDLERS.get((kind, match["id"] is not None, match["action"]))
    if handlers is None:
        return None
    fmt = gemini_format if kind == "cachedContents" else openai_format
    return Route(fmt, handlers.get(method), match["prefix"], {"id": match["id"]} if match["id"] else {})


def _batch_route(method: str, path: str, headers: Any) -> Route | None:
    """Batch jobs and their files: Anthropic's Message Batches (and Files API), OpenAI's files and batches."""
    if path.endswith("/v1/files") and "anthropic-version" in headers:
        return Route(anthropic_format, longtail.anthropic_files if method in ("GET", "POST") else None,
                     path.removesuffix("/v1/files"), {})
    if match := _MESSAGE_BATCHES_PATH.match(path):
        fmt, kind = anthropic_format, "message_batches"
    elif match := _MISTRAL_BATCH_PATH.match(path):
        fmt, kind = openai_format, "batch/jobs"
    elif (match := _OPENAI_BATCH_PATH.match(path)) and not match["prefix"].endswith(("/v1beta", "/v1alpha", "/upload")):
        fmt, kind = openai_format, match["kind"]
        if (kind, match["action"]) in (("files", "cancel"), ("batches", "content")):
            return None
    else:
        return None
    handlers = _BATCH_HANDLERS[(kind, match["id"] is not None, match["action"])]
    params = {"id": match["id"]} if match["id"] else {}
    return Route(fmt, handlers.get(method), match["prefix"], params)


def _status_message(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Overloaded" if status == 529 else "Error"
    return f"{phrase} (fake error requested with x-fake-status: {status})."


def _unknown_route(method: str, path: str) -> BodyReply:
    return json_reply(
        {
            "error": {
                "message": f"The fake provider has no endpoint for {method} {path}. See docs/fake-provider.md for the paths it serves.",
                "type": "invalid_request_error",
                "param": None,
                "code": "unknown_url",
            }
        },
        status=404,
    )


async def _read_body(request: web.Request) -> tuple[Any, dict[str, bytes], bytes]:
    """Parsed JSON; for multipart a summary of fields and file sizes (files returned apart); else text.

    The third item is the raw body (empty for multipart)."""
    if request.content_type == "multipart/form-data":
        try:
            form = await request.post()
        except ValueError as e:  # malformed multipart: the handler answers 400 for a non-form body
            return f"unreadable multipart body: {e}", {}
        fields: dict[str, str] = {}
        summary: dict[str, dict[str, Any]] = {}
        files: dict[str, bytes] = {}
        for name, value in form.items():
            if isinstance(value, web.FileField):
                data = value.file.read()
                if name in files:  # a repeated file field (`image[]` of an edit): each is kept
                    name = f"{name}#{sum(1 for n in files if n.split('#')[0] == name)}"
                files[name] = data
                summary[name] = {"filename": value.filename, "size": len(data), "content_type": value.content_type}
            elif isinstance(value, bytes | bytearray):  # a part with a content type of its own (JSON, SDP)
                fields[name] = bytes(value).decode("utf-8", errors="replace")
            else:
                fields[name] = str(value)
        return {"fields": fields, "files": summary}, files, b""
    raw = await request.read()
    if not raw:
        return None, {}, raw
    try:
        return json.loads(raw), {}, raw
    except ValueError:
        return raw.decode("utf-8", errors="replace"), {}, raw


async def handle(request: web.Request) -> web.StreamResponse:
    path = request.path
    if path.startswith("/_fake/"):
        return await _control(request, path)
    if gemini_live.is_upgrade(request):
        return await gemini_live.serve(request, log=request.app[REQUEST_LOG], state=request.app[STATE])
    if realtime.is_upgrade(request):
        return await realtime.serve(request, log=request.app[REQUEST_LOG], state=request.app[STATE])
    if responses_ws.is_upgrade(request):
        return await responses_ws.serve(request, log=request.app[REQUEST_LOG], state=request.app[STATE])
    method = request.method
    route = resolve_route(method, path, request.headers)
    body, files, raw_body = await _read_body(request)
    entry = {
            "method": method,
            "path": path,
            "prefix": route.prefix if route else "",
            "provider": route.fmt.NAME if route else None,
            "query": dict(request.query),
            "headers": {key.lower(): value for key, value in request.headers.items()},
            "body": body,
            "time": time.time(),
        }
    request.app[REQUEST_LOG].append(entry)
    if route is None:
        return await _send(request, _unknown_route(method, path), NO_CONTROLS)
    fmt = route.fmt
    try:
        controls = parse_controls(request.headers)
    except ControlError as e:
        return await _send(request, fmt.error(400, str(e)), NO_CONTROLS)
    fault = _take_fault(request, route, body)
    if fault is not None:
        if fault.get("delay"):
            await asyncio.sleep(float(fault["delay"]))
            if request.transport is None or request.transport.is_closing():
                return web.Response()  # the client gave up waiting
        if fault.get("reset"):
            _abort(request)
            return web.Response()
        if fault.get("status"):
            reply = fmt.error(int(fault["status"]), _status_message(int(fault["status"])))
            if fault.get("retry_after") is not None:
                reply.headers["retry-after"] = f"{fault['retry_after']:g}"
            return await _send(request, reply, NO_CONTROLS)
        if fault.get("broken"):
            controls = dataclasses.replace(controls, broken="1")
    if controls.delay:
        await asyncio.sleep(controls.delay)
    if controls.broken == "reset":
        _abort(request)
        return web.Response()
    fake = FakeRequest(
        method=method,
        path=path,
        prefix=route.prefix,
        query=request.query,
        headers=request.headers,
        body=body,
        controls=controls,
        origin=f"{request.scheme}://{request.host}",
        files=files,
        params=dict(route.params),
        state=request.app[STATE],
        raw_body=raw_body,
        raw_path=request.raw_path,
    )
    try:
        authenticated = route.handler is not None and fmt.authenticated(fake)
    except FakeError as e:  # a credential that is present but wrong (a bad SigV4 signature)
        authenticated = None
        auth_error = fmt.error(e.status, e.message, e.param)
    entry["auth"] = fake.params.get("auth")
    if route.handler is None:
        reply: Reply = fmt.error(404 if fmt in (gemini_format, vertex_format) else 405, f"{method} {path} is not supported by this endpoint.")
    elif authenticated is None:
        reply = auth_error
    elif not authenticated:
        reply = fmt.error(401 if fmt is not bedrock_format else 403, fmt.MISSING_KEY)
    elif controls.status:
        reply = fmt.error(controls.status, _status_message(controls.status))
    else:
        try:
            reply = route.handler(fake)
        except FakeError as e:
            reply = fmt.error(e.status, e.message, e.param)
        except (TypeError, AttributeError, KeyError, IndexError, ValueError) as e:
            # A body of the wrong shape: the real APIs validate it and answer 400, so the fake does too.
            reply = fmt.error(400, f"Invalid request body ({type(e).__name__}).")
    return await _send(request, reply, controls)


_FAULT_MATCH = ("provider", "prefix", "key", "model")
_FAULT_FIELDS = {*_FAULT_MATCH, "status", "retry_after", "delay", "reset", "broken", "times"}


def _request_key(request: web.Request) -> str:
    """The key the request carries, wherever its format puts it (for matching faults only)."""
    for name in ("x-api-key", "x-goog-api-key", "authorization"):
        if value := request.headers.get(name):
            return value.split(" ", 1)[-1]
    return request.query.get("key", "")


def _take_fault(request: web.Request, route: Route, body: Any) -> dict | None:
    """The first programmed fault matching this request (one use of it is consumed)."""
    faults: list[dict] = request.app[FAULTS]
    if not faults:
        return None
    model = route.params.get("model") or (body.get("model") if isinstance(body, dict) else None)
    seen = {"provider": route.fmt.NAME, "prefix": route.prefix, "key": _request_key(request), "model": model}
    for fault in faults:
        if fault.get("times") == 0:
            continue
        if all(fault.get(field) is None or fault[field] == seen[field] for field in _FAULT_MATCH):
            if fault.get("times") is not None:
                fault["times"] -= 1
            fault["used"] = fault.get("used", 0) + 1
            return fault
    return None


def _valid_faults(data: Any) -> list[dict]:
    rules = data if isinstance(data, list) else [data]
    for rule in rules:
        if not isinstance(rule, dict) or set(rule) - _FAULT_FIELDS:
            raise ValueError(f"a fault is an object with fields {sorted(_FAULT_FIELDS)}")
        if not any(rule.get(f) for f in ("status", "delay", "reset", "broken")):
            raise ValueError("a fault needs status, delay, reset or broken")
    return [dict(rule) for rule in rules]


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _send(request: web.Request, reply: Reply, controls: Controls) -> web.StreamResponse:
    headers = {**reply.headers, "Content-Type": reply.content_type}
    reason = "Overloaded" if reply.status == 529 else None
    if isinstance(reply, BodyReply):
        if not controls.broken:
            body = reply.body
            # Like the real APIs, compress JSON answers for clients that accept gzip.
            if reply.content_type.startswith("application/json") and \
                    "gzip" in request.headers.get("Accept-Encoding", "") and len(body) > 64:
                body = gzip.compress(body, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
            return web.Response(status=reply.status, reason=reason, body=body, headers=headers)
        # Promise the whole body, send half of it, then drop the connection.
        response = web.StreamResponse(status=reply.status, reason=reason, headers=headers)
        response.content_length = len(reply.body)
        await response.prepare(request)
        await response.write(reply.body[: len(reply.body) // 2])
        _abort(request)
        return response

    if reply.content_type.startswith("text/event-stream"):
        headers["Cache-Control"] = "no-cache"
    response = web.StreamResponse(status=reply.status, reason=reason, headers=headers)
    await response.prepare(request)
    chunks = reply.chunks
    try:
        if controls.broken:
            if len(chunks) > 1:
                chunks = chunks[: len(chunks) // 2]
            else:
                chunks = [b"".join(chunks)[: max(1, len(b"".join(chunks)) // 2)]]
            await _write_paced(response, chunks, controls.chunk_delay)
            _abort(request)
            return response
        if controls.chunk_delay:
            await _write_paced(response, chunks, controls.chunk_delay)
        else:
            await response.write(b"".join(chunks))
        await response.write_eof()
    except (ConnectionResetError, ClientConnectionResetError):
        pass  # the client hung up mid-stream; nothing is left to answer
    return response


async def _write_paced(response: web.StreamResponse, chunks: list[bytes], delay: float) -> None:
    for index, chunk in enumerate(chunks):
        if index and delay:
            await asyncio.sleep(delay)
        await response.write(chunk)


_IMAGE_NAME = re.compile(r"-(\d{1,4})x(\d{1,4})\.png$")


async def _control(request: web.Request, path: str) -> web.StreamResponse:
    """The fake's own endpoints under `/_fake/`: request log, served images, health."""
    log: deque = request.app[REQUEST_LOG]
    if path == "/_fake/requests":
        if request.method == "GET":
            return web.json_response(list(log))
        if request.method == "DELETE":
            cleared = len(log)
            log.clear()
            return web.json_response({"cleared": cleared})
    elif path.startswith("/_fake/images/") and request.method == "GET":
        match = _IMAGE_NAME.search(path)
        width, height = (int(match[1]), int(match[2])) if match else (1024, 1024)
        return web.Response(body=media.png_bytes(width, height), content_type="image/png")
    elif path == "/_fake/faults":
        faults: list[dict] = request.app[FAULTS]
        if request.method == "GET":
            return web.json_response(faults)
        if request.method == "DELETE":
            cleared = len(faults)
            faults.clear()
            return web.json_response({"cleared": cleared})
        if request.method == "POST":
            try:
                added = _valid_faults(await request.json())
            except ValueError as e:
                return web.json_response({"error": str(e)}, status=400)
            faults.extend(added)
            return web.json_response({"faults": len(faults)})
    elif path == "/_fake/health":
        return web.json_response({"status": "ok"})
    return web.json_response(
        {"error": "unknown control endpoint; use GET or DELETE /_fake/requests, GET, POST or DELETE /_fake/faults, "
                  "GET /_fake/images/NAME-WxH.png, GET /_fake/health"},
        status=404,
    )


def create_app() -> web.Application:
    app = web.Application(client_max_size=MAX_UPLOAD_BYTES)
    app[REQUEST_LOG] = deque(maxlen=REQUEST_LOG_SIZE)
    app[FAULTS] = []
    app[STATE] = {}
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


async def start(host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, str]:
    """Run the fake in this event loop; returns the runner (call `cleanup()`) and the base URL."""
    runner = web.AppRunner(create_app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        sock = _bind(host, port)
    except OSError:
        await runner.cleanup()
        raise
    site = web.SockSite(runner, sock, ssl_context=ssl_context)
    await site.start()
    bound_port = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    return runner, f"{'https' if ssl_context else 'http'}://{url_host}:{bound_port}"
