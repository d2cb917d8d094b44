"""`GET /v1/tokensense/requests/{request_id}`: a call's usage record, for the key that made it.

A streamed answer cannot carry `x-tokensense-cost-usd` (its headers are sent
before the usage is known): the client reads `x-tokensense-request-id` from the
answer and asks here. Only the key that made the call gets its record (and an
admin key, `keys create --admin`, which may read every record); any other key
gets the same 404 as an unknown id, so ids cannot be probed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tokensense.core.errors import error_body
from tokensense.gateway.keys import KeyInfo
from tokensense.providers import DEFAULT_ERRORS

PATH_PREFIX = "/v1/tokensense/requests/"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Record fields a client does not need to see about its own call (internal ids).
_HIDDEN = ("id", "key_id")


def request_id_from_path(path: str) -> str | None:
    """The id in `/v1/tokensense/requests/{id}`, or None if the path is not that or the id is malformed."""
    if not path.startswith(PATH_PREFIX):
        return None
    request_id = path[len(PATH_PREFIX):]
    return request_id if _REQUEST_ID.match(request_id) else None


def _not_found(request_id: str) -> tuple[int, dict[str, Any]]:
    return 404, error_body(DEFAULT_ERRORS, 404, f"No request `{request_id}` was made with this key (or it "
                           "is not recorded yet).", code="request_not_found")


def answer_request(key: KeyInfo, request_id: str | None,
                   find: Callable[[str, str | None], list[dict[str, Any]]],
                   flush: Callable[[], object] | None = None) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) for one lookup. Blocking (database): call it off the event loop.

    `find(request_id, key_id)` returns the key's records of that request (`key_id` None, for an admin key:
    whichever key made it); when
    there are none yet, `flush()` (the recorder's: the record may still be in its
    queue) is called once and the lookup repeated.
    """
    if request_id is None:
        return 404, error_body(DEFAULT_ERRORS, 404, "A request id is 16 hex digits, as in the "
                               "`x-tokensense-request-id` header of an answer.", code="request_not_found")
    owner = None if key.admin else key.id
    records = find(request_id, owner)
    if not records and flush is not None:
        flush()
        records = find(request_id, owner)
    if not records:
        return _not_found(request_id)
    shown = [{k: v for k, v in r.items() if k not in _HIDDEN} for r in records]
    body: dict[str, Any] = {"object": "tokensense.request", **shown[-1]}
    if len(shown) > 1:  # retries and fallbacks: one record per upstream attempt
        costs = [r["cost_usd"] for r in shown]
        body["attempts"] = shown
        body["total_cost_usd"] = None if any(c is None for c in costs) else round(sum(costs), 10)
    return 200, body
