"""Answers `GET /v1/tokensense/requests/{request_id}` with the call's usage record, to the key that made it."""

from __future__ import annotations

import asyncio
import functools

from mitmproxy import http
from sqlmodel import Session

from addons.common import answer_json, get_call
from tokensense.core.endpoints import Endpoint
from tokensense.gateway.call import Record
from tokensense.gateway.request_lookup import answer_request, request_id_from_path
from tokensense.gateway.runtime import Runtime
from tokensense.storage.repo import usage_for_request


class RequestRecords:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if flow.response or flow.error or call is None or call.key is None \
                or call.route_endpoint is not Endpoint.REQUEST_RECORD:
            return
        call.record_state = Record.NONE  # a lookup is not a provider call
        request_id = request_id_from_path(flow.request.path.partition("?")[0])
        recorder = self.runtime.recorder
        flush = functools.partial(recorder.flush, 5.0) if recorder is not None else None
        status, body = await asyncio.to_thread(answer_request, call.key, request_id, self._find, flush)
        answer_json(flow, status, body)

    def _find(self, request_id: str, key_id: str | None) -> list[dict]:
        with Session(self.runtime.engine) as session:
            return usage_for_request(session=session, request_id=request_id, key_id=key_id)
