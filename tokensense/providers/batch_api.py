"""What a provider tells the gateway about its batch jobs and files: paths, job states, result lines, input lines.

A provider that serves batch jobs sets `Provider.batch_api` to a `BatchApi` and
lists its batch and file routes (endpoints `files.*`, `batches.*`) in its client
routes. The gateway (addons/batches.py, gateway/batches.py) asks it where each
call goes upstream, reads the create call's answer for the job id, polls the job
with the stored provider key until it ends, and books each result line. The
pipeline names no provider: everything wire-format specific is here and in the
providers' implementations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, NamedTuple

from tokensense.core.endpoints import Endpoint
from tokensense.core.usage import TokenUsage

if TYPE_CHECKING:
    from tokensense.providers.base import Provider


def as_dict(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one (reading answers of any shape)."""
    return value if isinstance(value, dict) else {}


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class LineRequest(NamedTuple):
    """One request of a job (an input file's line, or an inline request): what its reservation needs."""

    model: str | None
    body: dict[str, Any]
    generates: bool = True  # writes output tokens (embeddings do not)


class ResultLine(NamedTuple):
    """One result line of an ended job, as the gateway books it."""

    key: str  # the line's own id: custom_id (OpenAI, Anthropic), key (Gemini files) or its position
    model: str | None
    status: int  # the line's HTTP status (200 succeeded; the error's status otherwise)
    usage: TokenUsage | None
    error: str | None = None
    booked: bool = True  # False: cancelled or expired before it ran (nothing to book, its reservation released)


class JobStatus(NamedTuple):
    """A job as the provider describes it."""

    state: str  # the provider's own word (`in_progress`, `ended`, `BATCH_STATE_SUCCEEDED`, ...)
    ended: bool  # no line will run any more: results are final
    result_paths: tuple[str, ...] = ()  # upstream paths whose body is the result lines (JSONL)
    files: tuple[str, ...] = ()  # ids of the files the job wrote (owned by the job's key)
    inline_results: tuple[dict, ...] | None = None  # result lines carried by the job itself (Gemini inline)


class BatchApi(ABC):
    """A provider's batch jobs: the provider implements these; nothing here does I/O."""

    # The path every line of a job calls when the job's answer does not say (`batch_endpoint` of the records).
    lines_path: str | None = None

    @abstractmethod
    def upstream_path(
        self, endpoint: Endpoint, resource: str | None, *, model: str | None = None, action: str | None = None
    ) -> str:
        """The provider's path of a batch or file call (`resource`: the job or file id, validated)."""

    @abstractmethod
    def job_path(self, job_id: str) -> str:
        """The path that describes a job (polled until it ends)."""

    @abstractmethod
    def job_id(self, answer: Any) -> str | None:
        """The id of the job a create call's (or a retrieve call's) answer describes."""

    @abstractmethod
    def status(self, answer: Any) -> JobStatus:
        """The job's state from a retrieve answer."""

    @abstractmethod
    def result_line(self, provider: Provider, line: Any, index: int) -> ResultLine | None:
        """One result line (a JSONL line parsed, or an inline result); None if it is not a result."""

    def input_line(self, line: Any) -> LineRequest | None:
        """One line of an uploaded input file (JSONL, parsed); None if it is not a request line."""
        return None

    def input_file(self, create_body: dict[str, Any]) -> str | None:
        """The id of the uploaded input file a create call names (None: the requests are inline)."""
        return None

    def job_model(self, create_body: dict[str, Any]) -> str | None:
        """The model a create call names for every line of the job (None: the lines, or the path, name it)."""
        return None

    def inline_requests(self, create_body: dict[str, Any], path_model: str | None) -> list[LineRequest] | None:
        """The requests a create call carries inline; None when it names an input file instead."""
        return None

    def file_id(self, answer: Any) -> str | None:
        """The id of the file an upload's answer describes."""
        return None

    # A resumable upload (its bytes follow the `start` call on a session URL, without a key): None when not.
    def upload_starts(self, headers: Any) -> bool:
        """Whether an upload request is the `start` of a resumable upload (its body: metadata, not the file)."""
        return False

    def upload_session(self, headers: Any) -> str | None:
        """The provider's upload session id in a `start` answer's headers."""
        return None

    def upload_url(self, gateway_origin: str, token: str) -> str:
        """The session URL the client gets: the gateway's, with TokenSense's session token."""
        raise NotImplementedError

    def upload_query(self, upload_id: str) -> tuple[tuple[str, str], ...]:
        """The query of an upload's bytes upstream, for the provider's session id."""
        raise NotImplementedError

    def listed_ids(self, answer: Any) -> list[str] | None:
        """The ids a list answer holds, in order (None: not a list answer)."""
        return None

    def keep_listed(self, answer: Any, keep: set[str]) -> Any:
        """The list answer with only the entries whose id is in `keep`."""
        return answer

    def gateway_urls(self, answer: Any, gateway_origin: str) -> Any:
        """The answer with its links to the provider (results URLs, downloads) pointed at the gateway."""
        return answer


class DataListBatchApi(BatchApi):
    """A batch API whose lists are `{"data": [...], "first_id", "last_id", ...}` (OpenAI's and Anthropic's)."""

    def listed_ids(self, answer: Any) -> list[str] | None:
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            return None
        return [item["id"] for item in answer["data"] if isinstance(item, dict) and isinstance(item.get("id"), str)]

    def keep_listed(self, answer: Any, keep: set[str]) -> Any:
        data = [item for item in answer.get("data", []) if isinstance(item, dict) and item.get("id") in keep]
        return {
            **answer,
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }


__all__ = ["BatchApi", "DataListBatchApi", "JobStatus", "LineRequest", "ResultLine", "as_dict", "as_str"]
