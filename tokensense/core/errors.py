"""The error TokenSense answers itself, and the abstraction of an error body's wire shape (SPEC §7).

Every API format has its own error body, the one its SDKs parse (a type
string, a status name, an AWS `__type`...). Each is an `ErrorShape`, defined by
the provider code of that format (tokensense/providers/); a route carries the
shape its clients expect, and the gateway writes every error it answers
through it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod


class GatewayError(Exception):
    """An error TokenSense answers itself, before or instead of the provider."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


class ErrorShape(ABC):
    """How one wire format writes an error body, so that its SDKs parse it (status, type, message)."""

    # The format's name; the model lists answer in shapes of the same names.
    name: str

    @abstractmethod
    def body(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
        """The JSON error object for an answer of `status`."""

    def __repr__(self) -> str:
        return f"<ErrorShape {self.name}>"


def error_body(shape: ErrorShape, status: int, message: str, *, code: str | None = None,
               param: str | None = None) -> dict:
    """The JSON error object in `shape`, as that format's SDKs expect to parse it."""
    return shape.body(status, message, code=code, param=param)


def error_bytes(shape: ErrorShape, status: int, message: str, *, code: str | None = None,
                param: str | None = None) -> bytes:
    return json.dumps(shape.body(status, message, code=code, param=param)).encode()
