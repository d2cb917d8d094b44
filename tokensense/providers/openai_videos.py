"""OpenAI's videos API (`/v1/videos`, Sora 2): its routes and how its jobs are booked.

A video is a job: `POST /v1/videos` starts it (multipart or JSON: `prompt`, `model`, `seconds`, `size`), `GET
/v1/videos/{id}` follows it until `status` is `completed`, `GET /v1/videos/{id}/content` downloads it. OpenAI
bills the requested duration at the model's rate for the requested size, for a completed video; TokenSense books
that once, when an answer first shows the job completed: a retrieve through the gateway (the SDK's
`create_and_poll` polls through it), or the batch follower's own poll (`status_path`) for a client that never
retrieves it (webhooks); whoever sees it first. A failed video books nothing.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import GatewayError
from tokensense.providers.owned import CREATE, DELETE, LIST, READ, Metered, OwnedRules
from tokensense.providers.routes import ClientRoute

VIDEOS = Endpoint("videos")  # create; the booked record of a completed job carries it too
VIDEOS_RETRIEVE = Endpoint("videos.retrieve")
VIDEOS_CONTENT = Endpoint("videos.content")
VIDEOS_LIST = Endpoint("videos.list")
VIDEOS_DELETE = Endpoint("videos.delete")

DEFAULT_SECONDS = "4"  # what OpenAI uses when the request leaves `seconds` out
DEFAULT_SIZE = "720x1280"

_VIDEO_ID = r"/v1/videos/(?P<resource>(?!characters(?:/|$)|edits$|extensions$)[^/]+)"


def video_routes(errors: Any) -> tuple[ClientRoute, ...]:
    """The videos routes, in `errors`' shape. Reads, lists and deletes are free (recorded at cost 0); the create
    is policed like any call (its cost is booked when the job completes)."""
    return (
        ClientRoute(("POST",), r"/v1/videos", VIDEOS, errors, owned=CREATE, names_provider=True),
        ClientRoute(("GET",), r"/v1/videos", VIDEOS_LIST, errors, owned=LIST, free=True, names_provider=True),
        ClientRoute(("GET",), _VIDEO_ID, VIDEOS_RETRIEVE, errors, owned=READ, free=True, names_provider=True),
        ClientRoute(("GET",), _VIDEO_ID + "/content", VIDEOS_CONTENT, errors, owned=READ, free=True,
                    names_provider=True),
        ClientRoute(("DELETE",), _VIDEO_ID, VIDEOS_DELETE, errors, owned=DELETE, free=True, names_provider=True),
    )


class VideoJobs(OwnedRules):
    kind = VIDEOS
    job = True
    default_model = "sora-2"

    def model_of(self, fields: dict[str, Any]) -> str | None:
        model = fields.get("model")
        return model if isinstance(model, str) and model else None

    def upstream_path(self, endpoint: Endpoint, resource: str | None, version: str | None) -> str:
        if endpoint is VIDEOS or endpoint is VIDEOS_LIST:
            return "/v1/videos"
        if resource is None:
            raise GatewayError(404, "The path names no video.", code="unknown_endpoint")
        return f"/v1/videos/{resource}/content" if endpoint is VIDEOS_CONTENT else f"/v1/videos/{resource}"

    def stored_id(self, resource: str) -> str:
        return resource

    def status_path(self, resource_id: str) -> str | None:
        return f"/v1/videos/{quote(resource_id, safe='')}"

    def ended_unbilled(self, answer: dict[str, Any]) -> bool:
        return answer.get("status") in ("failed", "expired", "cancelled")

    def resource_id(self, answer: dict[str, Any]) -> str | None:
        found = answer.get("id")
        return found if isinstance(found, str) and found else None

    def listed(self, answer: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
        data = answer.get("data")
        return ("data", [item for item in data if isinstance(item, dict)]) if isinstance(data, list) else None

    def item_id(self, item: dict[str, Any]) -> str | None:
        return self.resource_id(item)

    def requested(self, fields: dict[str, Any]) -> dict[str, Any]:
        seconds = str(fields.get("seconds") or DEFAULT_SECONDS)
        if not seconds.isdigit():
            raise GatewayError(400, f"Invalid value for 'seconds': {seconds[:20]!r}; a whole number of seconds "
                               "(4, 8 or 12).", code="invalid_value", param="seconds")
        size = fields.get("size") or DEFAULT_SIZE
        return {"seconds": int(seconds), "size": str(size)}

    def expected(self, state: dict[str, Any]) -> Metered | None:
        return Metered(float(state.get("seconds") or DEFAULT_SECONDS), state.get("size") or DEFAULT_SIZE)

    def finished(self, answer: dict[str, Any], state: dict[str, Any]) -> Metered | None:
        if answer.get("status") != "completed":
            return None
        # The answer repeats what was asked; the request's values (kept at create) are the fallback.
        seconds = answer.get("seconds", state.get("seconds"))
        size = answer.get("size", state.get("size"))
        try:
            billed = float(seconds) if isinstance(seconds, str | int | float) else None
        except ValueError:
            billed = None
        if billed is None or billed < 0:
            return None
        return Metered(billed, size if isinstance(size, str) else None)
