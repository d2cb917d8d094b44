"""Mistral's batch jobs (`/v1/batch/jobs`) and their files (`/v1/files`, purpose `batch`): routes and how jobs,
input lines and result lines read (https://docs.mistral.ai/capabilities/batch/).

A job names its model and endpoint once (`model`, `endpoint`); its input files' lines are `{"custom_id",
"body"}` with no model. Its results are files (`output_file`, `error_file`) whose lines have OpenAI's shape
(`custom_id`, `response: {status_code, body}`, `error`), so reading them is OpenAI's.
"""

from __future__ import annotations

from typing import Any

from tokensense.core.errors import ErrorShape
from tokensense.core.paths import path_segment
from tokensense.providers.batch_api import JobStatus, LineRequest, as_dict, as_str
from tokensense.providers.openai_batches import OpenAIBatchApi, openai_batch_routes
from tokensense.providers.routes import ClientRoute

# A job's terminal states: no line runs any more, its result files are final.
ENDED = frozenset({"SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED"})

JOBS = "/v1/batch/jobs"


def mistral_batch_routes(errors: ErrorShape) -> tuple[ClientRoute, ...]:
    """`/v1/files` and `/v1/batch/jobs` (under `/mistral/` the call goes to Mistral)."""
    return openai_batch_routes(errors, JOBS)


class MistralBatchApi(OpenAIBatchApi):
    """Jobs read from uploaded JSONL files (`custom_id`, `body`), for the job's one model."""

    jobs = JOBS

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
