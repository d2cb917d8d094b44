"""Client routes: the paths a provider's clients call, contributed by the provider; the gateway's table is their union.

A `ClientRoute` is one entry of the table: methods and a path pattern, the
endpoint it serves (the id its usage records carry), the error shape its
clients parse, and the properties the pipeline branches on (where the model is,
which actions stream, which are free, whether the path names its provider,
whether the gateway may retry the call). Matching a request's path gives a
`Route`: the same properties plus the parts read from that path (model, action,
API version, resource id, other validated parameters).

The pattern's named groups `model`, `action`, `version` and `resource` are read
as such; a route whose parts need more than a regex (percent-decoding,
publisher-dependent shapes, extra parameters the provider needs upstream) gives
a `parse` function that returns the `Route` (None: no route, a 404).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape, GatewayError


class Route(NamedTuple):
    """One request's route: what the table says about its path, and the parts read from it."""

    endpoint: Endpoint
    fmt: ErrorShape  # the error shape its clients parse
    model: str | None = None  # from the path (Gemini, Bedrock, Vertex AI, Azure deployments); else the body's
    action: str | None = None  # the path's action (`generateContent`, `converse-stream`, ...)
    version: str | None = None  # the API version in the path (`v1beta`)
    resource: str | None = None  # the response id (`/v1/responses/{id}`) or model id (`/v1/models/{id}`) in the path
    provider: str | None = None  # the provider the path itself names (Bedrock, Vertex AI, Azure OpenAI paths)
    params: tuple[tuple[str, str], ...] | None = None  # other validated path parts that provider needs upstream
    # The endpoint's body names the model (`model`): read there, and rewritten to the provider's own name.
    model_in_body: bool = True
    stream: bool = False  # the path's action streams, whatever the body says
    body_streams: bool = True  # the body's `"stream": true` asks for a stream
    free: bool = False  # the provider charges nothing for it (token counting): recorded at cost 0, no budget
    retried: bool = False  # the gateway may retry it and fall back (a whole JSON answer it can replace)
    default_model: str | None = None  # the model the provider uses when the body names none (moderations)
    owned: str | None = None  # an action on an owned resource (providers/owned.py): create, read, list, ...
    prefix: str | None = None  # the provider prefix the client used (`/mistral/v1/...`): only that provider serves it
    passthrough: PassthroughPath | None = None  # a path no route serves, forwarded as it is (metered passthrough)


class PassthroughPath(NamedTuple):
    """A path of a provider's API that no route serves, forwarded as asked: validated, and who may serve it."""

    path: str  # the upstream path, rebuilt from validated segments (appended to the provider's base URL)
    family: str  # its first segment after the API version (`vector_stores`): the endpoint its records carry
    providers: tuple[str, ...]  # the providers whose API has it (several: the body's model decides, else a prefix)
    kind: str = "unpriced"  # how it is paid for: "free", "priced" (from its answer's usage) or "unpriced"


@dataclass(frozen=True, eq=False)
class ClientRoute:
    """One entry of the route table; see the module docstring."""

    methods: tuple[str, ...]
    pattern: str  # matched against the whole path, without its query
    endpoint: Endpoint
    errors: ErrorShape
    model_in_body: bool = True
    # The actions the gateway forwards on this path (None: any the pattern allows); another one is a 404.
    actions: frozenset[str] | None = None
    unknown_action: str = "TokenSense does not forward the action `{action}`."
    stream_actions: frozenset[str] = frozenset()
    free_actions: frozenset[str] = frozenset()
    free: bool = False
    body_streams: bool = True
    retried: bool = False
    names_provider: bool = False  # the path names its provider: calls go to the route's owner (`owner/model`)
    intercepted: bool = False  # intercept mode meters this path on its owner's own hosts
    genai_operation: str | None = None  # `gen_ai.operation.name` (OpenTelemetry GenAI conventions)
    default_model: str | None = None  # the model the provider uses when the body names none (sent explicitly)
    # An action on a resource the client made and reads by id (a video job, a context cache: providers/owned.py),
    # kept to the key that made it and booked apart; such routes name their provider (`names_provider`).
    owned: str | None = None
    # The route from the match when the pattern's groups are not enough (None: no route, a 404).
    parse: Callable[[ClientRoute, re.Match[str]], Route | None] | None = None
    regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", re.compile(self.pattern))

    def match(self, method: str, path: str, *, owner: str | None = None, strict: bool = True) -> Route | None:
        """The route of `method path`, or None when this entry does not match.

        An action this entry does not forward is a 404 GatewayError when `strict`
        (intercept mode meters whatever the provider's own clients call: not strict).
        """
        if method not in self.methods:
            return None
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        if self.parse is not None:
            route = self.parse(self, found)
        else:
            parts = found.groupdict()
            action = parts.get("action")
            if strict and self.actions is not None and action not in self.actions:
                raise GatewayError(404, self.unknown_action.format(action=action), code="unknown_endpoint")
            route = self.route(model=parts.get("model"), action=action, version=parts.get("version"),
                               resource=parts.get("resource"))
        if route is not None and self.names_provider and owner is not None:
            route = route._replace(provider=owner)
        return route

    def route(self, *, fmt: ErrorShape | None = None, model: str | None = None, action: str | None = None,
              version: str | None = None, resource: str | None = None,
              params: tuple[tuple[str, str], ...] | None = None) -> Route:
        """A `Route` of this entry with the parts read from one path (for `parse` functions)."""
        return Route(self.endpoint, fmt or self.errors, model=model, action=action, version=version,
                     resource=resource, params=params, model_in_body=self.model_in_body,
                     stream=action in self.stream_actions, body_streams=self.body_streams,
                     free=self.free or action in self.free_actions, retried=self.retried,
                     default_model=self.default_model, owned=self.owned)


class ErrorPath(NamedTuple):
    """Paths (a regex matched at the start of the path) whose clients parse `shape`: errors on paths no route serves."""

    prefix: re.Pattern[str]
    shape: ErrorShape


def error_path(prefix: str, shape: ErrorShape) -> ErrorPath:
    return ErrorPath(re.compile(prefix), shape)


__all__ = ["ClientRoute", "ErrorPath", "PassthroughPath", "Route", "error_path"]
