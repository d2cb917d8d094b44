"""Anthropic's Message Batches: client routes, inline requests, job states and result lines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape
from tokensense.core.paths import path_segment
from tokensense.providers.batch_api import DataListBatchApi, JobStatus, LineRequest, ResultLine, as_dict, as_str
from tokensense.providers.routes import ClientRoute

if TYPE_CHECKING:
    from tokensense.providers.base import Provider

_ID = r"(?P<resource>[^/]+)"
_BASE = "/v1/messages/batches"
# A result's type, and the status its record carries (`errored`: the error's own type decides).
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def message_batch_routes(errors: ErrorShape) -> tuple[ClientRoute, ...]:
    def route(methods: tuple[str, ...], pattern: str, endpoint: Endpoint) -> ClientRoute:
        return ClientRoute(
            methods, pattern, endpoint, errors, model_in_body=False, body_streams=False, names_provider=True
        )

    return (
        route(("POST",), _BASE, Endpoint.BATCHES_CREATE),
        route(("GET",), _BASE, Endpoint.BATCHES_LIST),
        route(("GET",), rf"{_BASE}/{_ID}", Endpoint.BATCHES_RETRIEVE),
        route(("DELETE",), rf"{_BASE}/{_ID}", Endpoint.BATCHES_DELETE),
        route(("POST",), rf"{_BASE}/{_ID}/cancel", Endpoint.BATCHES_CANCEL),
        route(("GET",), rf"{_BASE}/{_ID}/results", Endpoint.BATCHES_RESULTS),
    )


_SUFFIX = {
    Endpoint.BATCHES_RETRIEVE: "",
    Endpoint.BATCHES_DELETE: "",
    Endpoint.BATCHES_CANCEL: "/cancel",
    Endpoint.BATCHES_RESULTS: "/results",
}


class MessageBatchApi(DataListBatchApi):
    """Jobs of inline `requests` (`custom_id`, `params`); results as JSONL at the job's `results_url`."""

    lines_path = "/v1/messages"

    def upstream_path(
        self, endpoint: Endpoint, resource: str | None, *, model: str | None = None, action: str | None = None
    ) -> str:
        if endpoint in (Endpoint.BATCHES_CREATE, Endpoint.BATCHES_LIST):
            return _BASE
        return f"{_BASE}/{path_segment(resource or '', what='id')}{_SUFFIX[endpoint]}"

    def job_path(self, job_id: str) -> str:
        return f"{_BASE}/{path_segment(job_id, what='id')}"

    def job_id(self, answer: Any) -> str | None:
        if isinstance(answer, dict) and answer.get("type") == "message_batch" and isinstance(answer.get("id"), str):
            return answer["id"]
        return None

    def status(self, answer: Any) -> JobStatus:
        state = str(answer.get("processing_status") or "") if isinstance(answer, dict) else ""
        job_id = self.job_id(answer)
        ended = state == "ended"
        paths = (f"{self.job_path(job_id)}/results",) if ended and job_id else ()
        return JobStatus(state, ended, paths)

    def inline_requests(self, create_body: dict[str, Any], path_model: str | None) -> list[LineRequest] | None:
        requests = create_body.get("requests")
        if not isinstance(requests, list):
            return None
        lines = []
        for item in requests:
            params = item.get("params") if isinstance(item, dict) else None
            if isinstance(params, dict):
                model = params.get("model")
                lines.append(LineRequest(model if isinstance(model, str) else None, params))
        return lines

    def result_line(self, provider: Provider, line: Any, index: int) -> ResultLine | None:
        if not isinstance(line, dict) or not isinstance(line.get("result"), dict):
            return None
        key = line["custom_id"] if isinstance(line.get("custom_id"), str) else f"#{index}"
        result = line["result"]
        kind = result.get("type")
        if kind == "succeeded" and isinstance(result.get("message"), dict):
            message = result["message"]
            model = message.get("model") if isinstance(message.get("model"), str) else None
            return ResultLine(key, model, 200, provider.usage_from_body(message))
        if kind in ("canceled", "expired"):
            return ResultLine(key, None, 499, None, kind, booked=False)
        error = as_dict(result.get("error"))
        inner = as_dict(error.get("error")) or error
        message_text = as_str(inner.get("message")) or str(kind)
        return ResultLine(key, None, _ERROR_STATUS.get(str(inner.get("type")), 400), None, message_text)

    def gateway_urls(self, answer: Any, gateway_origin: str) -> Any:
        """`results_url` points at the gateway: the SDK fetches the results through it, with the TokenSense key."""
        if isinstance(answer, dict) and isinstance(answer.get("data"), list):
            data = [self.gateway_urls(item, gateway_origin) for item in answer["data"]]
            return (
                answer if all(a is b for a, b in zip(data, answer["data"], strict=True)) else {**answer, "data": data}
            )
        if not isinstance(answer, dict) or not answer.get("results_url") or self.job_id(answer) is None:
            return answer
        return {**answer, "results_url": f"{gateway_origin}{self.job_path(answer['id'])}/results"}


MESSAGE_BATCHES = MessageBatchApi()

__all__ = ["MESSAGE_BATCHES", "MessageBatchApi", "message_batch_routes"]
