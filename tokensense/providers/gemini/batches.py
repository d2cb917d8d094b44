"""Gemini API batch mode: `models/{model}:batchGenerateContent` and the `batches` resource (inline requests)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape
from tokensense.core.paths import path_segment
from tokensense.providers.batch_api import BatchApi, JobStatus, LineRequest, ResultLine, as_dict, as_str
from tokensense.providers.routes import ClientRoute

if TYPE_CHECKING:
    from tokensense.providers.base import Provider

VERSION = "v1beta"  # the version TokenSense calls upstream
# google-genai calls `v1` (or `v1beta` when told); `GET /v1/batches[/{id}]` is also OpenAI's path: a job's own
# routes go to the job's provider, and a list to the provider whose SDK asks (its model list's marker header).
_VERSIONS = "(?:v1beta|v1)"
_ID = r"(?P<resource>[^/:]+)"
ENDED = frozenset(
    {
        "BATCH_STATE_SUCCEEDED",
        "BATCH_STATE_FAILED",
        "BATCH_STATE_CANCELLED",
        "BATCH_STATE_EXPIRED",
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED",
        "JOB_STATE_CANCELLED",
        "JOB_STATE_EXPIRED",
    }
)
_GRPC_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def gemini_batch_routes(errors: ErrorShape) -> tuple[ClientRoute, ...]:
    """Listed before the `models/{model}:{action}` route, which forwards only the synchronous actions."""

    def route(methods: tuple[str, ...], pattern: str, endpoint: Endpoint) -> ClientRoute:
        return ClientRoute(
            methods, pattern, endpoint, errors, model_in_body=False, body_streams=False, names_provider=True
        )

    return (
        route(
            ("POST",),
            r"/(?P<version>v1beta|v1)/models/(?P<model>[^:/]+):(?P<action>batchGenerateContent)",
            Endpoint.BATCHES_CREATE,
        ),
        route(("GET",), rf"/{_VERSIONS}/batches", Endpoint.BATCHES_LIST),
        route(("GET",), rf"/{_VERSIONS}/batches/{_ID}", Endpoint.BATCHES_RETRIEVE),
        route(("DELETE",), rf"/{_VERSIONS}/batches/{_ID}", Endpoint.BATCHES_DELETE),
        route(("POST",), rf"/{_VERSIONS}/batches/{_ID}:cancel", Endpoint.BATCHES_CANCEL),
        # Files: the resumable upload (a `start` with the key, then the bytes to the session's URL), and the files.
        route(("POST",), rf"/upload/{_VERSIONS}/files", Endpoint.FILES_UPLOAD),
        route(("GET",), rf"/(?:download/)?{_VERSIONS}/files/{_ID}:download", Endpoint.FILES_CONTENT),
        route(("GET",), rf"/{_VERSIONS}/files", Endpoint.FILES_LIST),
        route(("GET",), rf"/{_VERSIONS}/files/{_ID}", Endpoint.FILES_RETRIEVE),
        route(("DELETE",), rf"/{_VERSIONS}/files/{_ID}", Endpoint.FILES_DELETE),
    )


_UPLOAD_ID = re.compile(r"[A-Za-z0-9_.~-]{1,512}")


def _bare(item: Any) -> str | None:
    """A job's or file's id without its `batches/` or `files/` prefix."""
    name = _job_name(item) or as_str(as_dict(item).get("name"))
    return name.split("/", 1)[1] if name and "/" in name else None


def _job_name(answer: Any) -> str | None:
    if not isinstance(answer, dict):
        return None
    name = answer.get("name")
    if not isinstance(name, str):
        metadata = answer.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) and name.startswith("batches/") else None


class GeminiBatchApi(BatchApi):
    """Jobs of inline requests (or an uploaded JSONL file); the job answers as a long-running operation."""

    lines_path = "generateContent"

    def upstream_path(
        self, endpoint: Endpoint, resource: str | None, *, model: str | None = None, action: str | None = None
    ) -> str:
        if endpoint is Endpoint.BATCHES_CREATE:
            return f"/{VERSION}/models/{path_segment(model or '')}:batchGenerateContent"
        if endpoint is Endpoint.BATCHES_LIST:
            return f"/{VERSION}/batches"
        if endpoint is Endpoint.FILES_UPLOAD:
            return f"/upload/{VERSION}/files"
        if endpoint is Endpoint.FILES_LIST:
            return f"/{VERSION}/files"
        if endpoint is Endpoint.FILES_CONTENT:
            return f"/{VERSION}/files/{path_segment(resource or '', what='id')}:download"
        if endpoint in (Endpoint.FILES_RETRIEVE, Endpoint.FILES_DELETE):
            return f"/{VERSION}/files/{path_segment(resource or '', what='id')}"
        suffix = ":cancel" if endpoint is Endpoint.BATCHES_CANCEL else ""
        return f"/{VERSION}/batches/{path_segment(resource or '', what='id')}{suffix}"

    def job_path(self, job_id: str) -> str:
        return f"/{VERSION}/batches/{path_segment(job_id, what='id')}"

    def job_id(self, answer: Any) -> str | None:
        name = _job_name(answer)
        return name.removeprefix("batches/") if name else None

    def status(self, answer: Any) -> JobStatus:
        if not isinstance(answer, dict):
            return JobStatus("", False)
        metadata = as_dict(answer.get("metadata")) or answer
        state = str(metadata.get("state") or "")
        ended = bool(answer.get("done")) or state in ENDED
        if not ended:
            return JobStatus(state, False)
        output = as_dict(answer.get("response")) or as_dict(metadata.get("output"))
        inline = output.get("inlinedResponses")
        if isinstance(inline, dict):
            inline = inline.get("inlinedResponses")
        paths: tuple[str, ...] = ()
        files: tuple[str, ...] = ()
        responses_file = output.get("responsesFile")
        if isinstance(responses_file, str) and responses_file.startswith("files/"):
            file_id = path_segment(responses_file.removeprefix("files/"), what="id")
            files = (file_id,)
            paths = (f"/download/{VERSION}/files/{file_id}:download?alt=media",)
        return JobStatus(state, True, paths, files, tuple(inline) if isinstance(inline, list) else None)

    def inline_requests(self, create_body: dict[str, Any], path_model: str | None) -> list[LineRequest] | None:
        batch = create_body.get("batch")
        config = batch.get("inputConfig") or batch.get("input_config") if isinstance(batch, dict) else None
        requests = (config.get("requests") or {}).get("requests") if isinstance(config, dict) else None
        if not isinstance(requests, list):
            return None
        return [
            LineRequest(path_model, item["request"])
            for item in requests
            if isinstance(item, dict) and isinstance(item.get("request"), dict)
        ]

    def input_file(self, create_body: dict[str, Any]) -> str | None:
        batch = create_body.get("batch")
        config = batch.get("inputConfig") or batch.get("input_config") if isinstance(batch, dict) else None
        name = (config.get("fileName") or config.get("file_name")) if isinstance(config, dict) else None
        return name.removeprefix("files/") if isinstance(name, str) else None

    def result_line(self, provider: Provider, line: Any, index: int) -> ResultLine | None:
        if not isinstance(line, dict):
            return None
        metadata = as_dict(line.get("metadata"))
        key = as_str(line.get("key")) or as_str(metadata.get("key")) or f"#{index}"
        response = line.get("response")
        if isinstance(response, dict):
            model = response.get("modelVersion") if isinstance(response.get("modelVersion"), str) else None
            return ResultLine(key, model, 200, provider.usage_from_body(response))
        error = as_dict(line.get("error"))
        code = error.get("code")
        status = code if isinstance(code, int) else _GRPC_STATUS.get(str(error.get("status")), 400)
        message = as_str(error.get("message")) or "the request failed"
        return ResultLine(key, None, status if status >= 400 else 400, None, message)

    def listed_ids(self, answer: Any) -> list[str] | None:
        if not isinstance(answer, dict):
            return None
        field = next((f for f in ("operations", "batches", "files") if f in answer), None)
        if field is None or not isinstance(answer[field], list):
            return [] if not answer else None
        return [ident for item in answer[field] if (ident := _bare(item)) is not None]

    def keep_listed(self, answer: Any, keep: set[str]) -> Any:
        field = next((f for f in ("operations", "batches", "files") if f in answer), "operations")
        return {**answer, field: [item for item in answer.get(field, []) if _bare(item) in keep]}

    def file_id(self, answer: Any) -> str | None:
        entry = as_dict(as_dict(answer).get("file")) or as_dict(answer)
        name = as_str(entry.get("name"))
        return name.removeprefix("files/") if name and name.startswith("files/") else None

    def input_line(self, line: Any) -> LineRequest | None:
        """A line of a batch input file: `{"key": ..., "request": {...}}` (the job's path names the model)."""
        request = as_dict(line).get("request")
        return LineRequest(None, request) if isinstance(request, dict) else None

    # The resumable upload: the `start` answer's session URL, on which the bytes follow without a key.
    def upload_starts(self, headers: Any) -> bool:
        return "start" in headers.get("x-goog-upload-command", "")

    def upload_session(self, headers: Any) -> str | None:
        """The provider's upload id in a `start` answer's `x-goog-upload-url`."""
        from urllib.parse import parse_qs, urlsplit

        url = headers.get("x-goog-upload-url", "")
        ids = parse_qs(urlsplit(url).query).get("upload_id") if url else None
        return ids[0] if ids and _UPLOAD_ID.fullmatch(ids[0]) else None

    def upload_url(self, gateway_origin: str, token: str) -> str:
        return f"{gateway_origin}/upload/{VERSION}/files?upload_id={token}&upload_protocol=resumable"

    def upload_query(self, upload_id: str) -> tuple[tuple[str, str], ...]:
        return (("upload_id", upload_id), ("upload_protocol", "resumable"))


GEMINI_BATCHES = GeminiBatchApi()

__all__ = ["GEMINI_BATCHES", "GeminiBatchApi", "gemini_batch_routes"]
