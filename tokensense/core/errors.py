"""Error bodies in each endpoint format's own shape (SPEC §7)."""

from __future__ import annotations

import json
from enum import StrEnum

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "api_error",
    504: "timeout_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    502: "api_error",
    504: "timeout_error",
}
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_BEDROCK_TYPES = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    402: "ServiceQuotaExceededException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    413: "ValidationException",
    429: "ThrottlingException",
    502: "InternalServerException",
    503: "ServiceUnavailableException",
    504: "ModelTimeoutException",
}


class ErrorFormat(StrEnum):
    """Which client-facing API shape an endpoint speaks."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GOOGLE = "google"
    BEDROCK = "bedrock"  # AWS JSON errors: {"__type", "message"} (boto3 reads the type as the error code)


class GatewayError(Exception):
    """An error TokenSense answers itself, before or instead of the provider."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


def error_body(fmt: ErrorFormat, status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
    """The JSON error object for `fmt`, as that provider's SDKs expect to parse it."""
    if fmt is ErrorFormat.ANTHROPIC:
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    if fmt is ErrorFormat.BEDROCK:
        return {"__type": _BEDROCK_TYPES.get(status, "InternalServerException" if status >= 500 else "ValidationException"),
                "message": message}
    if fmt is ErrorFormat.GOOGLE:
        return {"error": {"code": status, "message": message, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}}
    return {
        "error": {
            "message": message,
            "type": _OPENAI_TYPES.get(status, "api_error"),
            "param": param,
            "code": code,
        }
    }


def error_bytes(fmt: ErrorFormat, status: int, message: str, *, code: str | None = None, param: str | None = None) -> bytes:
    return json.dumps(error_body(fmt, status, message, code=code, param=param)).encode()


def format_for_path(path: str) -> ErrorFormat:
    """The error shape a client of `path` expects."""
    if path.startswith("/v1/messages"):
        return ErrorFormat.ANTHROPIC
    if path.startswith("/model/"):
        return ErrorFormat.BEDROCK
    if path.startswith("/v1beta/") or (path.startswith("/v1/models/") and ":" in path):
        return ErrorFormat.GOOGLE
    return ErrorFormat.OPENAI
