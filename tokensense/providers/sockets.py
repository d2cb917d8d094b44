"""Realtime sessions over WebSocket (voice agents): what the pipeline asks a provider's socket protocol.

A provider whose API serves realtime sessions over a WebSocket (a handshake, then
many billable responses on one socket) lists a `SocketProtocol` in its
`socket_protocols`. The gateway relays the socket's frames unchanged and asks the
protocol only what it cannot know itself: which paths are such handshakes, the
model a handshake (or its first frame) names, which client frame asks for a
billable response (and its output cap), which server frame ends one (and its
usage), and how to tell a client that a response was refused. Everything here
is pure: bytes in, values out.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape
from tokensense.core.usage import TokenUsage

# A close code of RFC 6455 for a refusal a protocol has no error event for (policy violation).
CLOSE_POLICY = 1008
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a handshake names: the model (None: the protocol's first frame names it) and the upstream path."""

    model: str | None
    upstream_path: str


@dataclass(frozen=True, slots=True)
class ClientFrame:
    """What a client frame means for metering and policing."""

    starts_response: bool = False  # a billable response follows (policed before the frame is forwarded)
    max_output_tokens: int | None = None  # the output cap of that response, if the frame sets one
    session_max_output_tokens: int | None = None  # a new output cap for the session's responses
    model: str | None = None  # the model a setup frame names (protocols whose handshake names none)
    event_id: str | None = None  # the client's id of this frame (a server error may name it)


@dataclass(frozen=True, slots=True)
class ServerFrame:
    """What a server frame means for metering."""

    started: bool = False  # a response began
    usage: TokenUsage | None = None  # the usage of the current response, as reported so far (or at its end)
    done: bool = False  # the current response ended (its usage is final)
    status: str | None = None  # how it ended, in the provider's words ("completed", "cancelled", ...)
    failed_event_id: str | None = None  # an error about this client frame: its response will not come
    model: str | None = None  # the session's model, as the server names it (a handshake that named none)


NOTHING_CLIENT = ClientFrame()
NOTHING_SERVER = ServerFrame()


class SocketProtocol(ABC):
    """One realtime WebSocket protocol of a provider."""

    endpoint: Endpoint  # what each response's record is (its `endpoint` column)
    errors: ErrorShape  # the error bodies of a refused handshake (an HTTP answer)
    paths: re.Pattern[str]  # the client handshake paths (the whole path, without its query)
    key_subprotocol: str | None = None  # a `Sec-WebSocket-Protocol` prefix browsers put the key in
    # Bytes found in every server frame that can carry usage or end a response (a cheap test before parsing
    # the frame: most frames are audio deltas).
    server_markers: tuple[bytes, ...] = ()
    client_markers: tuple[bytes, ...] = ()

    def matches(self, path: str) -> bool:
        return self.paths.fullmatch(path) is not None

    @abstractmethod
    def handshake(self, path: str, query: Mapping[str, str]) -> Handshake:
        """The handshake's model and the upstream path; GatewayError (400) for one it will not forward."""

    @abstractmethod
    def client_frame(self, content: bytes, is_text: bool) -> ClientFrame:
        """What a client frame asks for (a frame it cannot read is NOTHING_CLIENT: the provider answers it)."""

    @abstractmethod
    def server_frame(self, content: bytes, is_text: bool) -> ServerFrame:
        """What a server frame reports."""

    def error_frame(self, status: int, message: str, *, code: str | None, event_id: str | None) -> bytes | None:
        """The provider's error event for a refused response; None: the protocol has none (the socket is closed
        with CLOSE_POLICY and the message as its reason)."""
        return None
