"""Batch jobs and files: owned per key, uploads streamed to the provider, jobs reserved at creation and followed.

Upload (`files.upload`, requestheaders): every gate runs on the headers (the key was
admitted, the body limit set), the upstream request is written, and the body streams
to the provider through an `InputScanner` that sums the requests of its lines (never
buffered). The answer's file id is recorded with its owner and that sum.

The other routes (request): a file or job id in the path must belong to the call's
key (404 otherwise, nothing forwarded). Creating a job reserves its largest cost at
the batch price with the one police function (402 before the provider when it does
not fit); the answer's job id is recorded with the create call's key and attribution,
and the reservation is held until the follower (gateway/batches.py) books the lines.
Lists are cut to the key's own ids; links to the provider in answers point at the gateway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

from mitmproxy import http
from sqlmodel import Session

from addons.common import (
    answer_error,
    apply_upstream,
    get_call,
    intercepting,
    prepare_upstream,
    require_credential,
    response_body,
)
from tokensense.core.endpoints import BATCH_ENDPOINTS, Endpoint
from tokensense.core.errors import GatewayError
from tokensense.gateway.batches import BatchFollower, InputScanner, job_reservation, summary_of
from tokensense.gateway.budgets import budgets_for
from tokensense.gateway.call import CallContext
from tokensense.gateway.flowmeta import BODY_LIMIT, CALL, RATE, refuse_body, set_call
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.policy import check_access
from tokensense.gateway.routing import classify
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stages.parse import read_json
from tokensense.gateway.stages.police import Policed, Refused, Target, police, spawn
from tokensense.providers import PROVIDERS, Provider, get_provider
from tokensense.providers.base import Upstream
from tokensense.providers.batch_api import BatchApi
from tokensense.storage import batches as store
from tokensense.storage.models import BatchFile, BatchJob, UploadSession

log = logging.getLogger(__name__)

META = "tokensense.batches"
_FILE_ROUTES = frozenset({Endpoint.FILES_RETRIEVE, Endpoint.FILES_DELETE, Endpoint.FILES_CONTENT})
_JOB_ROUTES = frozenset(
    {Endpoint.BATCHES_RETRIEVE, Endpoint.BATCHES_CANCEL, Endpoint.BATCHES_RESULTS, Endpoint.BATCHES_DELETE}
)
_STREAMED_ANSWERS = frozenset({Endpoint.FILES_CONTENT, Endpoint.BATCHES_RESULTS})


@dataclass(slots=True)
class BatchCall:
    """What the answer hooks need to know about a batch or file call."""

    provider: Provider
    api: BatchApi
    origin: str  # the gateway's own origin as the client called it (links in answers point there)
    scanner: InputScanner | None = None  # an upload's line sums
    upload_token: str | None = None  # the resumable upload session its bytes belong to
    summary: dict[str, Any] = field(default_factory=dict)  # a job's requests, summed
    reserved: float = 0.0  # a job's largest cost at the batch price
    input_file: str | None = None


def _not_found(what: str, ident: str) -> GatewayError:
    return GatewayError(
        404, f"No {what} with id '{ident[:100]}' was made with this TokenSense key.", code="not_found", param="id"
    )


UPLOAD_SESSION_SECONDS = 3600.0


class Batches:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.follower: BatchFollower | None = None

    def running(self) -> None:
        if self.follower is None and self.runtime.started:
            self.follower = BatchFollower(self.runtime, interval=self.runtime.settings.batch_poll_seconds)
            self.follower.start()

    async def done(self) -> None:
        if self.follower is not None:
            await self.follower.stop()
            self.follower = None

    def _session(self) -> Session:
        return Session(self.runtime.engine)

    def _read(self, fn: Any, **kwargs: Any) -> Any:
        with self._session() as session:
            return fn(session=session, **kwargs)

    async def _db(self, fn: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self._read, fn, **kwargs)

    @staticmethod
    def _served(flow: http.HTTPFlow) -> CallContext | None:
        call = get_call(flow)
        if (
            flow.response
            or flow.error
            or call is None
            or call.key is None
            or call.intercepted
            or call.route_endpoint not in BATCH_ENDPOINTS
        ):
            return None
        return call

    @staticmethod
    def _provider(call: CallContext) -> tuple[Provider, BatchApi]:
        provider = get_provider(call.path_provider or "")
        if provider is None or provider.batch_api is None:
            raise GatewayError(404, "TokenSense serves no batch API on this path.", code="unknown_endpoint")
        return provider, provider.batch_api

    @staticmethod
    def _origin(flow: http.HTTPFlow) -> str:
        """The gateway as this client reached it: a proxy in front says so (X-Forwarded-*), else the socket."""
        req = flow.request
        forwarded = req.headers.get("x-forwarded-host", "").split(",")[0].strip()
        scheme = req.headers.get("x-forwarded-proto", "").split(",")[0].strip() or (
            "https" if flow.client_conn.tls_established else "http"
        )
        if forwarded:
            return f"{scheme}://{forwarded}"
        host, port = (flow.client_conn.sockname or ("127.0.0.1", 8080))[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"{scheme}://{host}:{port}"

    # --- upload: every gate on the headers, the body streamed ----------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        call = self._served(flow)
        if (
            call is None or call.route_endpoint is not Endpoint.FILES_UPLOAD or call.forwarded
        ):  # forwarded: resumable bytes
            return
        try:
            provider, api = _asking(flow.request.headers, call.route_endpoint, *self._provider(call))
            if api.upload_starts(flow.request.headers):
                return  # a resumable upload's start: metadata only (routed in `request`); the bytes follow
            credential = require_credential(self.runtime, provider)
            origin = self._origin(flow)
            call.provider = provider
            prepare_upstream(
                call, provider, credential, Upstream(call.route_endpoint, api.upstream_path(call.route_endpoint, None))
            )
            call.policed = Policed(Target(provider, ""))  # an upload costs nothing; a job made from it is policed
            assert call.pending is not None
            apply_upstream(flow, call.pending)
            call.forwarded = True
        except GatewayError as e:
            answer_error(flow, call.fmt, e)
            refuse_body(flow)
            return
        scanner = InputScanner(api, flow.metadata.get(BODY_LIMIT))
        flow.request.stream = scanner
        flow.metadata[META] = BatchCall(provider, api, origin, scanner=scanner)

    # --- the other routes: ownership, the job's reservation ------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        call = self._served(flow)
        if call is None or call.forwarded:  # an upload streamed to the provider: routed in requestheaders
            return
        try:
            await self._route(flow, call)
        except GatewayError as e:
            answer_error(flow, call.fmt, e)
        except Refused as refused:
            call.policed = refused.held
            if refused.held is not None and refused.held.rate is not None:
                flow.metadata[RATE] = refused.held.rate
            answer_error(flow, call.fmt, refused.error, headers=refused.headers)

    async def _route(self, flow: http.HTTPFlow, call: CallContext) -> None:
        assert call.key is not None
        provider, api = self._provider(call)
        endpoint = call.route_endpoint
        resource = call.resource
        asking, asking_api = _asking(flow.request.headers, endpoint, provider, api)
        if endpoint in (Endpoint.BATCHES_LIST, Endpoint.FILES_LIST):  # one path, several SDKs: whose SDK asks
            provider, api = asking, asking_api
        if endpoint in _FILE_ROUTES:
            owner = await self._db(store.owned_file, file_id=resource or "", key_id=call.key.id)
            if owner is None:
                raise _not_found("file", resource or "")
            owner_provider = get_provider(owner.provider)
            if owner_provider is not None and owner_provider.batch_api is not None:
                provider, api = owner_provider, owner_provider.batch_api  # the file's provider, whoever shares the path
        elif endpoint in _JOB_ROUTES:
            job = await self._db(store.owned_job, job_id=resource or "", key_id=call.key.id)
            if job is None:
                raise _not_found("batch", resource or "")
            owner_provider = get_provider(job.provider)
            if owner_provider is not None and owner_provider.batch_api is not None:
                provider, api = owner_provider, owner_provider.batch_api  # the job's provider, whoever shares the path
            call.model = job.models[0] if len(job.models) == 1 else None
        call.provider = provider
        meta = BatchCall(provider, api, self._origin(flow))
        if endpoint is Endpoint.BATCHES_CREATE:
            await self._create(flow, call, meta)
        credential = require_credential(self.runtime, provider)
        path = api.upstream_path(endpoint, resource, model=call.path_model, action=call.action)
        prepare_upstream(call, provider, credential, Upstream(endpoint, path))
        if call.policed is None:
            call.policed = Policed(Target(provider, call.model or ""))  # managing jobs and files costs nothing
        flow.metadata[META] = meta

    async def _create(self, flow: http.HTTPFlow, call: CallContext, meta: BatchCall) -> None:
        """The job's requests (its input file's sums, or inline), its largest cost, and the police stage on it."""
        assert call.key is not None and call.provider is not None
        body = read_json(flow.request.raw_content)
        if not isinstance(body, dict):
            raise GatewayError(400, "The request body must be a JSON object.", code="invalid_request")
        api, provider = meta.api, meta.provider
        input_file = api.input_file(body)
        if input_file is not None:
            owner = await self._db(store.owned_file, file_id=input_file, key_id=call.key.id)
            if not isinstance(owner, BatchFile):
                raise _not_found("file", input_file)
            summary = dict(owner.lines or {})
            by_model = dict(summary.get("models") or {})
            job_model = call.path_model or api.job_model(body)
            if "" in by_model and job_model:  # the lines name no model: the path (Gemini) or the job (Mistral) does
                by_model[job_model] = by_model.pop("")
                summary["models"] = by_model
            meta.input_file = input_file
        else:
            inline = api.inline_requests(body, call.path_model)
            if inline is None:
                raise GatewayError(400, "The batch names no input file and no requests.", code="invalid_request")
            summary = summary_of(inline)
        models = sorted(m for m in (summary.get("models") or {}) if m)
        if summary.get("unreadable") and budgets_for(call.key, call.attribution, self.runtime.budgets):
            raise GatewayError(
                400,
                "TokenSense could not read every line of the input file (a line over 8 MB), so "
                "it cannot reserve the job's cost against its budgets.",
                code="invalid_request",
            )
        for model in models[1:]:
            check_access(call.key, provider, model, model)
        meta.summary = summary
        meta.reserved = job_reservation(self.runtime.prices, provider, summary)
        call.model = models[0] if models else None
        call.requested_model = call.model
        runtime = self.runtime
        call.reserve_usd = meta.reserved  # the job's largest cost: its budget reservation and cost cap
        call.policed = await police(
            call,
            Target(provider, call.model or ""),
            prices=runtime.prices,
            counters=runtime.counters,
            spent_since=runtime.spent_since,
            guard=runtime.guard,
            budgets=runtime.budgets,  # the job counts against its attribution's budgets too
        )
        if call.policed.rate is not None:
            flow.metadata[RATE] = call.policed.rate

    # --- answers -------------------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        response = flow.response
        if call is None or response is None or META not in flow.metadata or not call.forwarded:
            return
        if call.route_endpoint in _STREAMED_ANSWERS and 200 <= response.status_code < 300:
            response.stream = True  # result files pass through as they arrive, never buffered

    async def response(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        meta: BatchCall | None = flow.metadata.get(META)
        response = flow.response
        if (
            call is None
            or meta is None
            or response is None
            or not call.forwarded
            or call.key is None
            or response.stream
        ):
            return
        if call.route_endpoint is Endpoint.FILES_UPLOAD and meta.scanner is None and 200 <= response.status_code < 300:
            await self._start_upload(flow, call, meta)
            return
        if meta.scanner is not None and meta.scanner.too_large:
            answer_error(flow, call.fmt, meta.scanner.too_large_refusal())
            return
        if not 200 <= response.status_code < 300:
            return
        try:
            answer = json.loads(response_body(response))
        except (ValueError, UnicodeDecodeError):
            answer = None
        if meta.upload_token is not None and meta.scanner is not None and meta.api.file_id(answer) is None:
            # One request of a resumable upload, not its last: the next may come to another process of the
            # deployment, which goes on from the scanner's state (saved before the client has this answer).
            state, partial = meta.scanner.state()
            try:
                await self._db(store.save_upload, token=meta.upload_token, scanner=state, partial=partial)
            except Exception:
                log.exception("request %s: could not save the upload session", call.request_id)
            return
        if answer is None:
            return
        endpoint = call.route_endpoint
        try:
            changed = await self._answered(call, meta, endpoint, answer)
        except Exception:
            log.exception("request %s: could not record the batch answer", call.request_id)
            return
        if changed is not None:
            response.headers.pop("content-encoding", None)
            response.content = json.dumps(changed).encode()

    async def _answered(self, call: CallContext, meta: BatchCall, endpoint: Endpoint, answer: Any) -> Any | None:
        """Record what the answer made (a file, a job); the answer to give instead (None: unchanged)."""
        assert call.key is not None
        api, provider = meta.api, meta.provider
        if endpoint is Endpoint.FILES_UPLOAD:
            file_id = api.file_id(answer)
            if file_id is not None and meta.upload_token is not None:
                await self._db(store.end_upload, token=meta.upload_token)
            if file_id is not None and meta.scanner is not None:
                purpose = answer.get("purpose") if isinstance(answer, dict) else None
                await self._db(
                    store.remember_file,
                    file_id=file_id,
                    provider=provider.name,
                    key_id=call.key.id,
                    purpose=purpose if isinstance(purpose, str) else None,
                    lines=meta.scanner.result(),
                )
            return None
        if endpoint is Endpoint.FILES_DELETE:
            await self._db(store.forget_file, file_id=call.resource or "")
            return None
        if endpoint in (Endpoint.FILES_LIST, Endpoint.BATCHES_LIST):
            if api.listed_ids(answer) is None:
                return None
            owned = await self._db(store.owned_ids, key_id=call.key.id)
            return api.gateway_urls(api.keep_listed(answer, owned), meta.origin)
        if endpoint is Endpoint.BATCHES_CREATE:
            await self._follow(call, meta, answer)
        elif endpoint in _JOB_ROUTES:
            status = api.status(answer)
            if status.files:
                await self._db(store.note_job, job_id=call.resource or "", state=status.state, files=status.files)
            if status.ended and self.follower is not None:
                self.follower.wake()
        rewritten = api.gateway_urls(answer, meta.origin)
        return rewritten if rewritten is not answer else None

    async def _start_upload(self, flow: http.HTTPFlow, call: CallContext, meta: BatchCall) -> None:
        """A resumable upload started: its session URL points at the gateway, with a token of ours for the session
        (in the database: the upload's next requests may come to any process of the deployment)."""
        assert flow.response is not None and call.key is not None
        upload_id = meta.api.upload_session(flow.response.headers)
        if upload_id is None:
            return
        now = time.time()
        token = secrets.token_urlsafe(24)
        limit = flow.metadata.get(BODY_LIMIT)
        row = UploadSession(
            token=token,
            provider=meta.provider.name,
            key_id=call.key.id,
            upload_id=upload_id,
            attribution=dict(call.attribution),
            size_limit=limit,
            expires_at=now + UPLOAD_SESSION_SECONDS,
        )
        try:
            await self._db(store.start_upload, row=row, now=now)
        except Exception:
            log.exception("request %s: could not record the upload session", call.request_id)
            error = GatewayError(
                503, "TokenSense could not record the upload session; try again.", code="service_unavailable"
            )
            answer_error(flow, call.fmt, error)
            return
        flow.response.headers["x-goog-upload-url"] = meta.api.upload_url(meta.origin, token)

    async def upload_session(self, token: str) -> tuple[UploadSession, KeyInfo] | None:
        """The upload session of `token` and the key that started it (None: unknown, expired, key gone)."""
        found = await self._db(store.upload_session, token=token, now=time.time())
        if found is None:
            return None
        row, key_row = found
        key = KeyInfo.from_row(key_row)
        return (row, key) if not key.revoked else None

    def upload_bytes(
        self, flow: http.HTTPFlow, call: CallContext, token: str, found: tuple[UploadSession, KeyInfo]
    ) -> bool:
        """The bytes of a resumable upload, on its session URL: streamed to the provider's session with the key
        that started it (addons/batches.BatchUploads admits them). False if the session's provider is gone."""
        session, key = found
        provider = get_provider(session.provider)
        api = provider.batch_api if provider is not None else None
        if provider is None or api is None:
            return False
        scanner = InputScanner.resumed(api, session.size_limit, session.scanner, session.partial)
        declared = flow.request.headers.get("content-length", "")
        limit = scanner.limit
        if declared.isdigit() and limit is not None and scanner.size + int(declared) > limit:
            raise scanner.too_large_refusal()
        call.key, call.attribution, call.provider = key, dict(session.attribution or {}), provider
        credential = require_credential(self.runtime, provider)
        upstream = Upstream(
            Endpoint.FILES_UPLOAD,
            api.upstream_path(Endpoint.FILES_UPLOAD, None),
            query=api.upload_query(session.upload_id),
        )
        prepare_upstream(call, provider, credential, upstream)
        call.policed = Policed(Target(provider, ""))
        assert call.pending is not None
        apply_upstream(flow, call.pending)
        call.forwarded = True
        # A line may span two of the upload's requests: it is read whole once its end arrives.
        scanner.flush_at_end = "finalize" in flow.request.headers.get("x-goog-upload-command", "")
        flow.request.stream = scanner
        flow.metadata[META] = BatchCall(provider, api, self._origin(flow), scanner=scanner, upload_token=token)
        return True

    async def _follow(self, call: CallContext, meta: BatchCall, answer: Any) -> None:
        """A job was made: follow it, and hold its reservation until its lines are booked."""
        assert call.key is not None
        job_id = meta.api.job_id(answer)
        if job_id is None:
            log.warning("request %s: the batch create answer names no job; it is not followed", call.request_id)
            return
        policed = call.policed
        holds = policed.budgets if policed is not None else ()
        # Every budget the create was counted against keeps the job's reservation as spent until the follower
        # settles it to the booked cost (gateway/batches.py `job_holds`); the key's window is stored with the job.
        hold = next((h for h in holds if h.counter in ("", call.key.id)), None)
        attribution = call.attribution
        job = BatchJob(
            id=job_id,
            provider=meta.provider.name,
            key_id=call.key.id,
            key_name=call.key.name,
            endpoint=_job_endpoint(answer, meta.api, call),
            models=sorted(m for m in meta.summary.get("models", {}) if m),
            state=str(meta.api.status(answer).state or "created"),
            input_file_id=meta.input_file,
            workflow=attribution.get("workflow"),
            step=attribution.get("step"),
            execution_id=attribution.get("execution_id"),
            source=attribution.get("source"),
            project=attribution.get("project"),
            reserved_usd=holds[0].amount if holds else meta.reserved,
            budget_window=hold.window if hold is not None else None,
        )
        if not await self._db(store.remember_job, job=job):
            return
        if holds and policed is not None and self.runtime.counters is not None:
            # The reservation outlives the create call: held as spent (and in the database's seed, `held_by_jobs`)
            # until the lines are booked; the create call's own record settles nothing of it.
            # Every budget the create was counted against (the key's, and those on its attribution) keeps it as spent;
            # the follower settles each to the booked cost.
            call.policed = replace(policed, budgets=())
            for held in policed.budgets:
                spawn(
                    self.runtime.counters.settle_budget(
                        held.counter or call.key.id, held.window, held.amount, held.amount
                    )
                )
        if self.follower is not None:
            self.follower.wake()


def _asking(headers: Any, endpoint: Endpoint, provider: Provider, api: BatchApi) -> tuple[Provider, BatchApi]:
    """The provider whose own SDK sent the request (one path, several SDKs: `/v1/files`, `/v1/batches`), by the
    headers only its SDKs send (the model lists' markers); the route's provider when none claims it. 404 when
    that SDK's provider has no batch API here (nothing is forwarded to another provider)."""
    for other in PROVIDERS.values():
        shape = other.model_list_shape()
        if other is provider or shape is None or shape.fallback or not shape.claims_headers(headers):
            continue
        if other.batch_api is None or not any(entry.endpoint is endpoint for entry in other.client_routes):
            raise GatewayError(
                404,
                f"TokenSense serves {provider.display_name}'s files and batches on this path; call "
                f"{other.display_name}'s under its prefix (/{other.name}/...).",
                code="unknown_endpoint",
            )
        return other, other.batch_api
    return provider, api


def _job_endpoint(answer: Any, api: BatchApi, call: CallContext) -> str:
    """What the job's lines call: the answer's `endpoint` (OpenAI), else the provider's one path for them."""
    if isinstance(answer, dict) and isinstance(answer.get("endpoint"), str):
        return answer["endpoint"][:100]
    return api.lines_path or call.route_endpoint.value


class BatchUploads:
    """Before the admit stage: the bytes of a resumable upload come on the session URL the gateway handed out,
    without a key (the provider's own SDKs send none there); the session's token stands for the key that started
    it. Any other request goes on to the admit stage."""

    def __init__(self, batches: Batches) -> None:
        self.batches = batches

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        if (
            flow.response
            or flow.error
            or CALL in flow.metadata
            or req.method != "POST"
            or b"upload_id=" not in req.data.path
            or intercepting(flow.client_conn.proxy_mode)
        ):
            return
        token = req.query.get("upload_id", "")
        try:
            route = classify(req.method, req.path.partition("?")[0])
        except GatewayError:
            return
        if route.endpoint is not Endpoint.FILES_UPLOAD or not token:
            return
        try:
            found = await self.batches.upload_session(token)
        except Exception:
            log.exception("could not read the upload session")
            found = None
        if found is None:
            return
        call = CallContext.of_route(route, method=req.method)
        set_call(flow, call)
        try:
            if not self.batches.upload_bytes(flow, call, token, found):
                raise GatewayError(404, "No upload session with this id: start the upload again.", code="not_found")
        except GatewayError as e:
            answer_error(flow, call.fmt, e)
            refuse_body(flow)
