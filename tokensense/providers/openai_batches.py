"""OpenAI's Files and Batch APIs: their client routes, and how jobs, input lines and result lines read."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape
from tokensense.core.paths import path_segment
from tokensense.providers.batch_api import DataListBatchApi, JobStatus, LineRequest, ResultLine, as_dict, as_str
from tokensense.providers.routes import ClientRoute

if TYPE_CHECKING:
    from tokensense.providers.base import Provider

# A batch's terminal states (https://platform.openai.com/docs/guides/batch): results are final.
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
# The endpoints a batch line may call that write no output tokens.
NO_OUTPUT_URLS = frozenset({"/v1/embeddings", "/v1/moderations"})

_ID = r"(?P<resource>[^/:]+)"  # no `:`: `/v1/files/{id}:download` is Gemini's


def openai_batch_routes(errors: ErrorShape, jobs: str = "/v1/batches") -> tuple[ClientRoute, ...]:
    """`/v1/files` and the jobs' path (`/v1/batches`; Mistral's `/v1/batch/jobs`): the call goes to the provider
    that lists these routes (names_provider)."""

    def route(methods: tuple[str, ...], pattern: str, endpoint: Endpoint) -> ClientRoute:
        return ClientRoute(
            methods, pattern, endpoint, errors, model_in_body=False, body_streams=False, names_provider=True
        )

    return tuple(
        route((method,), re.escape(path).replace(re.escape("{id}"), _ID), endpoint)
        for endpoint, (method, path) in batch_paths(jobs).items()
    )


def batch_paths(jobs: str) -> dict[Endpoint, tuple[str, str]]:
    """The method and path of each Files and Batch API operation, with the jobs under `jobs`."""
    return {
        Endpoint.FILES_UPLOAD: ("POST", "/v1/files"),
        Endpoint.FILES_LIST: ("GET", "/v1/files"),
        Endpoint.FILES_RETRIEVE: ("GET", "/v1/files/{id}"),
        Endpoint.FILES_DELETE: ("DELETE", "/v1/files/{id}"),
        Endpoint.FILES_CONTENT: ("GET", "/v1/files/{id}/content"),
        Endpoint.BATCHES_CREATE: ("POST", jobs),
        Endpoint.BATCHES_LIST: ("GET", jobs),
        Endpoint.BATCHES_RETRIEVE: ("GET", f"{jobs}/{{id}}"),
        Endpoint.BATCHES_CANCEL: ("POST", f"{jobs}/{{id}}/cancel"),
    }


def _error_text(error: Any) -> str | None:
    if isinstance(error, dict):
        inner = as_dict(error.get("error")) or error
        message = inner.get("message")
        code = inner.get("code")
        if isinstance(message, str):
            return f"{code}: {message}" if isinstance(code, str) else message
    return None


class OpenAIBatchApi(DataListBatchApi):
    """Jobs read from an uploaded JSONL file (`custom_id`, `method`, `url`, `body`); results in output and
    error files (`custom_id`, `response: {status_code, body}`, `error`)."""

    jobs = "/v1/batches"  # where the jobs are (Mistral: `/v1/batch/jobs`)

    def upstream_path(
        self, endpoint: Endpoint, resource: str | None, *, model: str | None = None, action: str | None = None
    ) -> str:
        template = batch_paths(self.jobs)[endpoint][1]
        if "{id}" in template:
            return template.format(id=path_segment(resource or "", what="id"))
        return template

    def job_path(self, job_id: str) -> str:
        return f"{self.jobs}/{path_segment(job_id, what='id')}"

    def job_id(self, answer: Any) -> str | None:
        if isinstance(answer, dict) and answer.get("object") == "batch" and isinstance(answer.get("id"), str):
            return answer["id"]
        return None

    def file_id(self, answer: Any) -> str | None:
        if isinstance(answer, dict) and answer.get("object") == "file" and isinstance(answer.get("id"), str):
            return answer["id"]
        return None

    def input_file(self, create_body: dict[str, Any]) -> str | None:
        value = create_body.get("input_file_id")
        return value if isinstance(value, str) else None

    def status(self, answer: Any) -> JobStatus:
        state = str(answer.get("status") or "") if isinstance(answer, dict) else ""
        files = (
            tuple(f for f in (answer.get("output_file_id"), answer.get("error_file_id")) if isinstance(f, str))
            if isinstance(answer, dict)
            else ()
        )
        ended = state in ENDED
        paths = tuple(f"/v1/files/{path_segment(f, what='id')}/content" for f in files) if ended else ()
        return JobStatus(state, ended, paths, files)

    def input_line(self, line: Any) -> LineRequest | None:
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            return None
        body = line.get("body")
        if not isinstance(body, dict):
            return None
        model = body.get("model")
        return LineRequest(
            model if isinstance(model, str) else None, body, generates=line.get("url") not in NO_OUTPUT_URLS
        )

    def result_line(self, provider: Provider, line: Any, index: int) -> ResultLine | None:
        if not isinstance(line, dict):
            return None
        key = as_str(line.get("custom_id")) or f"#{index}"
        response = as_dict(line.get("response"))
        body = response.get("body")
        code = response.get("status_code")
        status = code if isinstance(code, int) else 400
        model = as_str(as_dict(body).get("model"))
        if status == 200 and isinstance(body, dict):
            return ResultLine(key, model, 200, provider.usage_from_body(body))
        error = _error_text(line.get("error")) or _error_text(body) or f"status {status}"
        return ResultLine(key, model, status if status >= 400 else 400, None, error)


OPENAI_BATCHES = OpenAIBatchApi()

__all__ = ["OPENAI_BATCHES", "OpenAIBatchApi", "openai_batch_routes"]
