"""Mistral's batch jobs (`/v1/batch/jobs`) and their files (`/v1/files`, purpose `batch`): routes and how jobs,
input lines and result lines read (https://docs.mistral.ai/capabilities/batch/).

A job names its model and endpoint once (`model`, `endpoint`); its input files' lines are `{"custom_id",
"body"}` with no model. Its results are files (`output_file`, `error_file`) whose lines have OpenAI's shape
(`custom_id`, `response: {status_code, body}`, `error`), so reading them is OpenAI's.
"""

from __future__ import annotations

from typing import Any

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape
from tokensense.core.paths import path_segment
from tokensense.providers.batch_api import JobStatus, LineRequest, as_dict, as_str
from tokensense.providers.openai_batches import OpenAIBatchApi
from tokensense.providers.routes import ClientRoute

# A job's terminal states: no line runs any more, its result files are final.
ENDED = frozenset({"SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED"})

_ID = r"(?P<resource>[^/:]+)"


def mistral_batch_routes(errors: ErrorShape) -> tuple[ClientRoute, ...]:
    """`/v1/files` and `/v1/batch/jobs` (under `/mistral/` the call goes to Mistral)."""

    def route(methods: tuple[str, ...], pattern: str, endpoint: Endpoint) -> ClientRoute:
        return ClientRoute(
            methods, pattern, endpoint, errors, model_in_body=False, body_streams=False, names_provider=True
        )

    return (
        route(("POST",), r"/v1/files", Endpoint.FILES_UPLOAD),
        route(("GET",), r"/v1/files", Endpoint.FILES_LIST),
        route(("GET",), rf"/v1/files/{_ID}", Endpoint.FILES_RETRIEVE),
        route(("DELETE",), rf"/v1/files/{_ID}", Endpoint.FILES_DELETE),
        route(("GET",), rf"/v1/files/{_ID}/content", Endpoint.FILES_CONTENT),
        route(("POST",), r"/v1/batch/jobs", Endpoint.BATCHES_CREATE),
        route(("GET",), r"/v1/batch/jobs", Endpoint.BATCHES_LIST),
        route(("GET",), rf"/v1/batch/jobs/{_ID}", Endpoint.BATCHES_RETRIEVE),
        route(("POST",), rf"/v1/batch/jobs/{_ID}/cancel", Endpoint.BATCHES_CANCEL),
    )


_PATHS = {
    Endpoint.FILES_UPLOAD: "/v1/files",
    Endpoint.FILES_LIST: "/v1/files",
    Endpoint.FILES_RETRIEVE: "/v1/files/{id}",
    Endpoint.FILES_DELETE: "/v1/files/{id}",
    Endpoint.FILES_CONTENT: "/v1/files/{id}/content",
    Endpoint.BATCHES_CREATE: "/v1/batch/jobs",
    Endpoint.BATCHES_LIST: "/v1/batch/jobs",
    Endpoint.BATCHES_RETRIEVE: "/v1/batch/jobs/{id}",
    Endpoint.BATCHES_CANCEL: "/v1/batch/jobs/{id}/cancel",
}


class MistralBatchApi(OpenAIBatchApi):
    """Jobs read from uploaded JSONL files (`custom_id`, `body`), for the job's one model."""

    def upstream_path(
        self, endpoint: Endpoint, resource: str | None, *, model: str | None = None, action: str | None = None
    ) -> str:
        template = _PATHS[endpoint]
        if "{id}" in template:
            return template.format(id=path_segment(resource or "", what="id"))
        return template

    def job_path(self, job_id: str) -> str:
        return f"/v1/batch/jobs/{path_segment(job_id, what='id')}"

    def input_file(self, create_body: dict[str, Any]) -> str | None:
        """The job's input file (a job of several files is reserved from its first: see docs/batches.md)."""
        files = create_body.get("input_files")
        if isinstance(files, list) and files and isinstance(files[0], str):
            return files[0]
        return None

    def job_model(self, create_body: dict[str, Any]) -> str | None:
        return as_str(create_body.get("model"))

    def inline_requests(self, create_body: dict[str, Any], path_model: str | None) -> list[LineRequest] | None:
        """A job's inline `requests` (`{"custom_id", "body"}`), each for the job's model."""
        requests = create_body.get("requests")
        if not isinstance(requests, list):
            return None
        model = self.job_model(create_body)
        return [LineRequest(model, as_dict(item).get("body") or {}) for item in requests if isinstance(item, dict)]

    def status(self, answer: Any) -> JobStatus:
        state = str(answer.get("status") or "") if isinstance(answer, dict) else ""
        files = (
            tuple(f for f in (answer.get("output_file"), answer.get("error_file")) if isinstance(f, str))
            if isinstance(answer, dict)
            else ()
        )
        ended = state in ENDED
        paths = tuple(f"/v1/files/{path_segment(f, what='id')}/content" for f in files) if ended else ()
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        inline = tuple(o for o in outputs if isinstance(o, dict)) if ended and isinstance(outputs, list) else None
        return JobStatus(state, ended, paths, files, inline)

    def keep_listed(self, answer: Any, keep: set[str]) -> Any:
        data = [item for item in answer.get("data", []) if isinstance(item, dict) and item.get("id") in keep]
        return {**answer, "data": data, "total": len(data)}


MISTRAL_BATCHES = MistralBatchApi()

__all__ = ["MISTRAL_BATCHES", "MistralBatchApi", "mistral_batch_routes"]
