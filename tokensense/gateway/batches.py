"""Batch jobs through the gateway: what an input file asks for, what a job may cost, and the follower that books it.

- `InputScanner` reads the lines of an upload as it streams to the provider (never
  buffering the file: one line at a time) and sums what each request asks for by
  model, so that creating a job from that file can reserve its largest cost.
- `job_reservation` prices that sum at the batch price: every line's output cap (or
  its model's largest output) and its prompt, at the batch rate.
- `BatchFollower` is one task per gateway process; with a lease in the database only
  one process of a deployment polls. It asks the provider, with the stored provider
  key, how each open job is doing; once a job ended it reads the result lines and
  writes one usage record per line (request id derived from the job and the line: a
  second write of the same line is skipped by the database), then marks the job
  booked, which releases what it held of its key's budget. In the same tick it polls the owned jobs no client
  retrieves through the gateway (a video: gateway/owned_jobs.py) and books each finished one once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from tokensense.core.endpoints import Endpoint
from tokensense.core.usage import TokenUsage
from tokensense.gateway.body import UploadLimit
from tokensense.gateway.budgets import BudgetBook
from tokensense.gateway.owned_jobs import OwnedJobs
from tokensense.gateway.reservation import model_max_output, reservation_usage
from tokensense.gateway.routing import join_url
from tokensense.gateway.stages.police import BudgetHold, add_spend, spend_holds
from tokensense.metering.batch_prices import batch_cost, batch_token_cost
from tokensense.metering.pricing import PriceBook
from tokensense.metering.sanitize import MAX_ATTRIBUTE, MAX_ERROR, MAX_NAME, clean_text
from tokensense.providers import Provider, get_provider
from tokensense.providers.batch_api import BatchApi, LineRequest, ResultLine
from tokensense.storage import batches as store
from tokensense.storage.models import BatchJob, UsageCreate
from tokensense.storage.repo import record_usages

if TYPE_CHECKING:
    from tokensense.gateway.runtime import Runtime

log = logging.getLogger(__name__)

MAX_SCANNED_LINE = 8 * 1024 * 1024
"""The longest input line summed for a reservation; a longer one makes the file's sum unknown (not the upload fail)."""

LEASE = "batch_follower"
RECORDS_PER_WRITE = 500


# --- what an input file asks for -----------------------------------------------------------------


def add_line(summary: dict[str, Any], line: LineRequest) -> None:
    """Add one request's largest usage to a file's sum (`{"lines": n, "models": {model: {...}}}`)."""
    model = line.model or ""
    usage = reservation_usage(
        line.body, max_output_tokens=None, model_max_output=model_max_output(model), generates=line.generates
    )
    entry = summary.setdefault("models", {}).setdefault(model, {"lines": 0, "input_tokens": 0, "output_tokens": 0})
    entry["lines"] += 1
    entry["input_tokens"] += usage.input_tokens
    entry["output_tokens"] += usage.output_tokens
    summary["lines"] = summary.get("lines", 0) + 1


class InputScanner(UploadLimit):
    """`flow.request.stream` for an upload: passes every chunk on untouched, summing the JSONL lines it carries.

    The multipart framing around the file (boundaries, part headers, other fields) is
    not JSON and is skipped; only lines the provider's `input_line` reads as requests count.
    `limit`: the most bytes the body may have; past it nothing more is sent (`too_large`).
    """

    def __init__(self, api: BatchApi, limit: int | None = None) -> None:
        super().__init__(limit)
        self.api = api
        self.summary: dict[str, Any] = {"lines": 0, "models": {}}
        self.unreadable = False
        self.flush_at_end = True  # the body's end is the file's (a resumable upload's last request)
        self._partial = bytearray()

    def __call__(self, chunk: bytes) -> bytes:
        if chunk and not super().__call__(chunk):  # over the limit: nothing more is sent or summed
            return b""
        if self.too_large:
            return b""
        if not chunk:
            if self.flush_at_end:
                self._line(bytes(self._partial))
                self._partial.clear()
            return chunk
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if self._partial:
                self._partial += chunk[start:end]
                self._line(bytes(self._partial))
                self._partial.clear()
            else:
                self._line(chunk[start:end])
            start = end + 1
        if start < len(chunk):
            if len(self._partial) + len(chunk) - start > MAX_SCANNED_LINE:
                self.unreadable = True
                self._partial.clear()
            elif not self.unreadable or self._partial:
                self._partial += chunk[start:]
        return chunk

    def _line(self, raw: bytes) -> None:
        raw = raw.strip()
        if not raw.startswith(b"{"):
            return
        try:
            parsed = json.loads(raw)
        except ValueError:
            return
        line = self.api.input_line(parsed)
        if line is not None:
            add_line(self.summary, line)

    def result(self) -> dict[str, Any]:
        return {**self.summary, "unreadable": self.unreadable}

    def state(self) -> tuple[dict[str, Any], bytes]:
        """What a resumable upload's next request needs to go on summing (saved between its requests): the sums,
        the bytes seen, and the unfinished line (at most `MAX_SCANNED_LINE`)."""
        return {"summary": self.summary, "size": self.size, "unreadable": self.unreadable}, bytes(self._partial)

    @classmethod
    def resumed(
        cls, api: BatchApi, limit: int | None, state: dict[str, Any] | None, partial: bytes | None
    ) -> InputScanner:
        """A scanner that goes on from `state()` saved after the upload's previous request."""
        scanner = cls(api, limit)
        if state:
            summary = state.get("summary")
            if isinstance(summary, dict):
                scanner.summary = summary
            scanner.size = int(state.get("size") or 0)
            scanner.unreadable = bool(state.get("unreadable"))
        scanner._partial = bytearray(partial or b"")
        return scanner


def summary_of(lines: Iterable[LineRequest]) -> dict[str, Any]:
    summary: dict[str, Any] = {"lines": 0, "models": {}}
    for line in lines:
        add_line(summary, line)
    return summary


def job_reservation(prices: PriceBook, provider: Provider, summary: dict[str, Any]) -> float:
    """The largest cost of a job whose requests sum to `summary`, at the batch price."""
    total = 0.0
    for model, entry in (summary.get("models") or {}).items():
        if not model:
            continue
        usage = TokenUsage(
            input_tokens=int(entry.get("input_tokens", 0)), output_tokens=int(entry.get("output_tokens", 0))
        )
        total += batch_token_cost(prices, provider.prices_id, provider.catalog_model(model), usage)
    return round(total, 10)


# --- booking -------------------------------------------------------------------------------------


def line_request_id(job_id: str, line_key: str) -> str:
    """The request id of a batch line's record: the same for the same job and line, whoever books it."""
    digest = hashlib.sha256(f"{job_id}\n{line_key}".encode()).hexdigest()[:24]
    return f"batch-{digest}"


def line_record(prices: PriceBook, provider: Provider, job: BatchJob, line: ResultLine, now: datetime) -> UsageCreate:
    """The usage record of one result line: its usage at the batch price, the create call's key and attribution."""
    usage = line.usage or TokenUsage()
    model = line.model or (job.models[0] if len(job.models) == 1 else None)
    cost: float | None = 0.0
    source = None
    if line.status < 400 and model:
        priced = batch_cost(prices, provider.prices_id, provider.catalog_model(model), usage)
        cost, source = priced.cost, priced.source
    details: dict[str, Any] = {**(usage.details() or {}), "custom_id": line.key, "batch_id": job.id}
    if job.endpoint:
        details["batch_endpoint"] = job.endpoint
    if source:
        details["price"] = source
    return UsageCreate(
        request_id=line_request_id(job.id, line.key),
        attempt=1,
        key_id=job.key_id,
        key_name=job.key_name,
        provider=provider.name,
        model=clean_text(model, MAX_NAME),
        endpoint=Endpoint.BATCH.value,
        status=line.status,
        error=clean_text(line.error, MAX_ERROR),
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cost_usd=cost,
        details=details,
        created_at=now,
        workflow=clean_text(job.workflow, MAX_ATTRIBUTE),
        step=clean_text(job.step, MAX_ATTRIBUTE),
        execution_id=clean_text(job.execution_id, MAX_ATTRIBUTE),
        source=clean_text(job.source, MAX_ATTRIBUTE),
        project=clean_text(job.project, MAX_ATTRIBUTE),
    )


class BatchFollower:
    """Polls the jobs created through this deployment until each is booked (one process at a time: a lease)."""

    def __init__(self, runtime: Runtime, *, interval: float = 30.0, holder: str | None = None) -> None:
        self.runtime = runtime
        self.interval = interval
        self.holder = holder or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task | None = None
        self._client: Any = None
        self._wake = asyncio.Event()
        self.owned = OwnedJobs(runtime)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        """Poll soon (a job was created or retrieved)."""
        self._wake.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        try:  # another process may take over at once (a restart, a rolling deploy)
            await asyncio.to_thread(self._release)
        except Exception as e:
            log.warning("batch follower: could not release its lease: %s", type(e).__name__)

    def _release(self) -> None:
        with self._session() as session:
            store.release_lease(session=session, name=LEASE, holder=self.holder)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("batch follower: %s: %s", type(e).__name__, str(e)[:200])
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            except TimeoutError:
                pass
            self._wake.clear()

    def _session(self) -> Session:
        return Session(self.runtime.engine)

    def _lease(self) -> bool:
        with self._session() as session:
            return store.take_lease(
                session=session, name=LEASE, holder=self.holder, seconds=max(3 * self.interval, 30.0), now=time.time()
            )

    def _open_jobs(self) -> list[BatchJob]:
        with self._session() as session:
            return store.open_jobs(session=session)

    async def tick(self) -> int:
        """Poll every open job, batch or owned (a video), once (if this process holds the lease); how many jobs
        were booked."""
        if not self.runtime.started or not await asyncio.to_thread(self._lease):
            return 0
        booked = 0
        for job in await asyncio.to_thread(self._open_jobs):
            try:
                booked += await self._follow(job)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("batch job %s: could not follow it: %s: %s", job.id, type(e).__name__, str(e)[:200])
                await asyncio.to_thread(self._note, job.id, error=f"{type(e).__name__}: {str(e)[:200]}")
        return booked + await self.owned.tick(self.client())

    def _note(self, job_id: str, **kwargs: Any) -> None:
        with self._session() as session:
            store.note_job(session=session, job_id=job_id, **kwargs)

    def client(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))
        return self._client

    async def _follow(self, job: BatchJob) -> int:
        provider = get_provider(job.provider)
        api = provider.batch_api if provider is not None else None
        keys = self.runtime.keys
        if provider is None or api is None or keys is None:
            await asyncio.to_thread(
                self._note, job.id, error=f"no provider `{job.provider}` serves batch jobs", polled=True
            )
            return 0
        credential = keys.credential(provider.name)
        headers = {**provider.default_headers(), **provider.auth_headers(credential.api_key or "")}
        answer = await self.client().get(join_url(credential.base_url, api.job_path(job.id)), headers=headers)
        if answer.status_code == 404:
            # The provider no longer knows it (deleted): nothing more will be billed; what it held is released.
            log.warning("batch job %s: the provider answers 404; it is no longer followed", job.id)
            await asyncio.to_thread(self._book, provider, job, "not_found", [])
            return 1
        if answer.status_code != 200:
            await asyncio.to_thread(
                self._note, job.id, error=f"the provider answered {answer.status_code}", polled=True
            )
            return 0
        status = api.status(answer.json())
        if not status.ended:
            await asyncio.to_thread(self._note, job.id, state=status.state, files=status.files, polled=True)
            return 0
        lines: list[ResultLine] = []
        index = 0
        for item in status.inline_results or ():
            line = api.result_line(provider, item, index)
            index += 1
            if line is not None:
                lines.append(line)
        for path in status.result_paths:
            async with self.client().stream("GET", join_url(credential.base_url, path), headers=headers) as results:
                if results.status_code != 200:
                    raise RuntimeError(f"the results at {path} answered {results.status_code}")
                async for raw in results.aiter_lines():
                    if not raw.strip():
                        continue
                    try:
                        parsed = json.loads(raw)
                    except ValueError:
                        continue
                    line = api.result_line(provider, parsed, index)
                    index += 1
                    if line is not None:
                        lines.append(line)
        await asyncio.to_thread(self._note, job.id, state=status.state, files=status.files, polled=True)
        return await asyncio.to_thread(self._book, provider, job, status.state, lines)

    def _book(self, provider: Provider, job: BatchJob, state: str, lines: list[ResultLine]) -> int:
        """Write one record per line (a line written before is skipped), then mark the job booked; 1 if this call
        booked it."""
        now = datetime.now(UTC)
        records = [line_record(self.runtime.prices, provider, job, line, now) for line in lines if line.booked]
        for start in range(0, len(records), RECORDS_PER_WRITE):
            with self._session() as session:
                record_usages(session=session, usages=records[start : start + RECORDS_PER_WRITE])
        cost = sum(r.cost_usd or 0.0 for r in records)
        with self._session() as session:
            booked = store.mark_booked(session=session, job_id=job.id, state=state, lines=len(records), cost=cost)
        if booked:
            log.info("batch job %s (%s) booked: %d lines, $%.6f", job.id, provider.name, len(records), cost)
            self._settle_budget(job, cost)
            self._observe(records)
        return 1 if booked else 0

    def _observe(self, records: list[UsageCreate]) -> None:
        """The booked lines go to the record observers like any call's record (Prometheus, budget alerts): once,
        by the process whose `mark_booked` booked the job."""
        for observe in self.runtime.on_booked:
            try:
                observe(records)
            except Exception:
                log.exception("batch records observer failed")

    def _settle_budget(self, job: BatchJob, cost: float) -> None:
        """The job's hold becomes its real cost (the database already says so) in every budget it was counted
        against: its key's (`budget_window`) and those on its attribution, each in its window at the job's create."""
        counters = self.runtime.counters
        if counters is None or job.key_id is None:
            return
        holds = job_holds(job, self.runtime.budgets)
        if not holds or cost == job.reserved_usd:
            return
        coro = add_spend(counters, holds, cost - job.reserved_usd)
        try:
            loop = self._task.get_loop() if self._task is not None else None
        except Exception:
            loop = None
        if loop is None:
            coro.close()
            return
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            future.result(timeout=10)
        except Exception as e:
            log.warning("batch job %s: could not settle its budget hold: %s", job.id, type(e).__name__)


def job_holds(job: BatchJob, book: BudgetBook | None) -> tuple[BudgetHold, ...]:
    """The budgets a batch job's create holds its reservation in until its lines are booked: its key's (when it has
    one: `budget_window`) and every budget on its attribution, in its window when the job was made."""
    key = (BudgetHold(job.budget_window, 0.0, job.key_id, f"key:{job.key_name}"),) if job.budget_window and job.key_id else ()
    made = job.created_at if job.created_at.tzinfo is not None else job.created_at.replace(tzinfo=UTC)
    return key + spend_holds(None, job_attribution(job), book, at=made)


def job_attribution(job: BatchJob) -> dict[str, str | None]:
    """The attribution of a job's create call (its lines' records')."""
    return {"workflow": job.workflow, "step": job.step, "execution_id": job.execution_id, "source": job.source,
            "project": job.project}


__all__ = [
    "BatchFollower",
    "InputScanner",
    "add_line",
    "job_attribution",
    "job_holds",
    "job_reservation",
    "line_record",
    "line_request_id",
    "summary_of",
]
