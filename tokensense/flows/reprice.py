"""`tokensense reprice FILE`: the usage in a saved flow file, priced with today's catalog, next to what was recorded."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mitmproxy import http
from pydantic import BaseModel, Field

from tokensense.core.errors import GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.flows.recording import RECORD, read_flow_file
from tokensense.gateway.intercept import HostTable
from tokensense.gateway.media import parse_form
from tokensense.gateway.record import call_cost
from tokensense.gateway.routing import Endpoint
from tokensense.metering.media_prices import MediaPriceTable, catalog_media_cost
from tokensense.metering.pricing import PriceBook
from tokensense.metering.sse import EventSplitter, parse_event
from tokensense.metering.usage_extract import usage_from_answer, with_request_tier
from tokensense.providers import OPENAI_COMPATIBLE, ProviderAdapter, get_provider, match_route, openai_format_reader
from tokensense.providers.audio_format import AudioEventsUsage, transcription_usage
from tokensense.providers.images_format import image_usage

_TOKEN_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens")
_MEDIA_FIELDS = ("images", "characters", "seconds")


class Totals(BaseModel):
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    images: int = 0
    characters: int = 0
    seconds: float = 0.0
    recorded_cost_usd: float = 0.0  # what TokenSense recorded at the time (calls without a record count 0)
    cost_usd: float = 0.0  # today's price
    difference_usd: float = 0.0
    unrecorded: int = 0  # calls in the file that carry no TokenSense record
    unpriced: int = 0  # calls no price is known for today (counted as 0 in cost_usd)

    def add(self, call: PricedCall) -> None:
        self.requests += 1
        for name in (*_TOKEN_FIELDS, *_MEDIA_FIELDS):
            setattr(self, name, getattr(self, name) + getattr(call.usage, name))
        if call.recorded_cost_usd is not None:
            self.recorded_cost_usd += call.recorded_cost_usd
        elif not call.recorded_unpriced:
            self.unrecorded += 1
        if call.cost_usd is None:
            self.unpriced += 1
        else:
            self.cost_usd += call.cost_usd

    def finish(self) -> None:
        self.seconds = round(self.seconds, 3)
        self.recorded_cost_usd = round(self.recorded_cost_usd, 10)
        self.cost_usd = round(self.cost_usd, 10)
        self.difference_usd = round(self.cost_usd - self.recorded_cost_usd, 10)


class WorkflowTotals(Totals):
    workflow: str | None = None


class ModelTotals(Totals):
    provider: str | None = None
    model: str | None = None


class PricedCall(BaseModel):
    """One provider call from the file: its usage read again from the answer, and its price now and then."""

    provider: str | None
    model: str | None
    endpoint: str | None
    workflow: str | None
    status: int | None
    usage: TokenUsage
    usage_source: str  # "answer" (read from the saved answer) or "record" (the answer was not saved)
    cost_usd: float | None  # None: no price is known for the model (unpriced)
    recorded_cost_usd: float | None
    recorded_unpriced: bool = False  # the record says the call was unpriced


class RepriceReport(BaseModel):
    file: str
    flows: int = 0  # flows in the file
    skipped: int = 0  # flows that are neither a recorded call nor a provider answer (other hosts, health checks)
    total: Totals = Field(default_factory=Totals)
    by_workflow: list[WorkflowTotals] = Field(default_factory=list)
    by_model: list[ModelTotals] = Field(default_factory=list)


# -- reading usage from a saved answer ----------------------------------------------------


_IMAGE_ENDPOINTS = (Endpoint.IMAGES.value, Endpoint.IMAGE_EDITS.value, Endpoint.IMAGE_VARIATIONS.value)


def answer_usage(adapter: ProviderAdapter, response: http.Response, *,
                 openai_format: bool = False, endpoint: str | None = None) -> TokenUsage | None:
    """The usage in a saved answer (a JSON body or a server-sent-events stream), or None if it has none.

    Read with the functions live metering uses (`usage_from_answer`, the
    provider's stream collector, the media endpoints' readers), so that a
    re-priced call counts exactly what was metered. `openai_format`: the answer
    is in OpenAI chat format although the provider is Anthropic or Gemini (an
    unstreamed answer the gateway translated).
    """
    content = response.get_content(strict=False)
    if not content:
        return None
    content_type = response.headers.get("content-type", "").lower()
    audio = endpoint in (Endpoint.TRANSCRIPTIONS.value, Endpoint.TRANSLATIONS.value, Endpoint.SPEECH.value)
    if content_type.startswith("text/event-stream"):
        collector = AudioEventsUsage() if audio else adapter.stream_usage()
        splitter = EventSplitter()
        events = splitter.feed(content)
        if rest := splitter.rest():
            events.append(rest)
        for raw in events:
            name, payload = parse_event(raw)
            if not payload or payload[0] != "{":
                continue
            try:
                data = json.loads(payload)
            except ValueError:
                continue
            if isinstance(data, dict):
                collector.feed(name, data)
        return collector.result()
    if audio:
        return transcription_usage(content, content_type).tokens
    if endpoint in _IMAGE_ENDPOINTS and adapter.name in OPENAI_COMPATIBLE:
        try:
            return image_usage(json.loads(content))[0]
        except (ValueError, UnicodeDecodeError):
            return None
    reader = openai_format_reader() if openai_format else adapter
    return usage_from_answer(reader, content)


def _usage_from_record(record: dict[str, Any]) -> TokenUsage:
    usage = TokenUsage.model_validate({name: record.get(name) or 0 for name in (*_TOKEN_FIELDS, *_MEDIA_FIELDS)})
    return usage.with_details(record.get("details"))


def _answer_json(flow: http.HTTPFlow) -> dict[str, Any] | None:
    if flow.response is None or "json" not in flow.response.headers.get("content-type", ""):
        return None
    try:
        body = json.loads(flow.response.get_content(strict=False) or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _request_json(flow: http.HTTPFlow) -> dict[str, Any]:
    """The request's JSON body, or the fields of a multipart one (image edits and variations: `size`, `quality`)."""
    content = flow.request.get_content(strict=False) or b""
    content_type = flow.request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            return dict(parse_form(content, content_type).fields)
        except GatewayError:
            return {}
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _path_model(path: str) -> str | None:
    """The model a Gemini path names (`/v1beta/models/MODEL:action`) or fal's app (`/fal-ai/...`)."""
    path = path.partition("?")[0]
    if "/models/" in path and ":" in path.rsplit("/models/", 1)[1]:
        return path.rsplit("/models/", 1)[1].split(":", 1)[0]
    if path.startswith("/fal-ai/"):
        return path.strip("/")
    return None


# -- pricing --------------------------------------------------------------------------------


def media_cost(media: MediaPriceTable, adapter: ProviderAdapter, model: str, endpoint: str | None,
               usage: TokenUsage, request: dict[str, Any], answer: dict[str, Any] | None = None) -> float:
    """Today's price of the media units of a call that has no tokens (images, speech, transcription).

    As the media addon prices them: an image's size and quality as the answer says, else as requested.
    """
    if usage.has_tokens:
        return 0.0  # priced by tokens
    if usage.images:
        answer = answer or {}
        size = answer.get("size") if isinstance(answer.get("size"), str) else request.get("size")
        quality = answer.get("quality") if isinstance(answer.get("quality"), str) else request.get("quality")
        return media.image_cost(model, count=usage.images, size=size if isinstance(size, str) else None,
                                quality=quality if isinstance(quality, str) else None)
    if endpoint == Endpoint.SPEECH.value:
        if media.get(model) is not None:
            return media.speech_cost(model, characters=usage.characters, seconds=usage.seconds or None)
        return catalog_media_cost(adapter.prices_id, model, characters=usage.characters)
    if usage.seconds:
        if media.get(model) is not None:
            return media.minute_cost(model, usage.seconds)
        return catalog_media_cost(adapter.prices_id, model, seconds=usage.seconds)
    return 0.0


def price_flow(flow: http.HTTPFlow, prices: PriceBook, media: MediaPriceTable,
               hosts: HostTable | None = None) -> PricedCall | None:
    """The call in one saved flow, priced today; None if the flow is neither a TokenSense record nor a provider answer.

    A recorded call whose provider was never known (refused before routing:
    401, unknown model) counts as a request that costs nothing, as in the record.
    """
    record = flow.metadata.get(RECORD)
    record = record if isinstance(record, dict) else None
    if record is not None:
        adapter = get_provider(str(record["provider"])) if record.get("provider") else None
    else:
        adapter = (hosts or HostTable()).provider(flow.request.pretty_host)
        if adapter is None or flow.response is None:
            return None
    request = _request_json(flow)
    model = (record.get("model") if record else None) or _path_model(flow.request.path) or request.get("model")
    model = model if isinstance(model, str) and model else None
    endpoint = record.get("endpoint") if record else None
    usage = None
    if flow.response is not None and adapter is not None:
        openai_format = endpoint == Endpoint.CHAT.value and adapter.name not in OPENAI_COMPATIBLE
        translated = openai_format and not flow.response.headers.get("content-type", "").startswith(
            "text/event-stream")
        if not (translated and record is not None):
            # A translated answer carries OpenAI's usage shape, without the provider's finer counters
            # (cache writes, 1-hour writes, server tools): the record and its breakdown are read instead.
            usage = answer_usage(adapter, flow.response, openai_format=openai_format, endpoint=endpoint)
            usage = with_request_tier(usage, request)
    source = "answer"
    if usage is None:
        usage, source = (_usage_from_record(record), "record") if record else (TokenUsage(), "answer")
    elif record is not None:
        # Media units are measured by the gateway from the request and the answer (audio length,
        # characters spoken, images made); the record is where they are.
        usage = usage.model_copy(update={name: record.get(name) or getattr(usage, name) for name in _MEDIA_FIELDS})
    cost: float | None = 0.0
    owned = adapter.owned_rules(Endpoint(endpoint)) if adapter is not None and endpoint else None
    if owned is not None and record is not None:
        # A video job's calls cost nothing of their own (its booking is a record with no flow); a context cache's
        # create or update costs the storage its record metered (seconds, cached tokens), at today's rate.
        usage, source = _usage_from_record(record), "record"
        tokens = usage.counters.get("cached_tokens")
        if owned.job or (usage.seconds == 0 and record.get("cost_usd") is not None):
            cost = 0.0  # a job's own calls; a cache read, list or delete (nothing stored metered)
        elif not model or tokens is None:
            cost = None  # unpriced when recorded, unpriced again
        else:
            cost = media.storage_cost(model, tokens=tokens, seconds=usage.seconds)
    elif adapter is not None and model:
        cost = call_cost(prices, adapter.prices_id, model, usage,
                         media_cost(media, adapter, model, endpoint, usage, request, _answer_json(flow)))
        if not usage.has_tokens and _uncounted_input(adapter, flow.request.path, model, request):
            cost = None  # billed input that neither the answer nor the record counted (as the gateway records it)
    recorded = record.get("cost_usd") if record else None
    return PricedCall(
        provider=adapter.name if adapter else None, model=model, endpoint=endpoint,
        workflow=record.get("workflow") if record else None,
        status=record.get("status") if record else (flow.response.status_code if flow.response else None),
        usage=usage, usage_source=source, cost_usd=cost,
        recorded_cost_usd=float(recorded) if isinstance(recorded, int | float) else None,
        recorded_unpriced=record is not None and "cost_usd" in record and recorded is None,
    )


def _uncounted_input(adapter: ProviderAdapter, path: str, model: str, request: dict[str, Any]) -> bool:
    """Whether the call's answer reports no usage although its input is billed (Gemini embeddings)."""
    try:
        route = match_route("POST", path.partition("?")[0])
    except GatewayError:  # a path a route claims with an action it does not forward
        return False
    if route is None or route.model_in_body:
        return False
    return adapter.input_count(route.endpoint, route.action, model, route.version, request) is not None


def reprice_flows(flows: Iterable[object], *, file: str, prices: PriceBook, media: MediaPriceTable,
                  hosts: HostTable | None = None) -> RepriceReport:
    """Totals overall, by workflow and by model of the provider calls among `flows`."""
    report = RepriceReport(file=file)
    workflows: dict[str | None, WorkflowTotals] = {}
    models: dict[tuple[str | None, str | None], ModelTotals] = {}
    for flow in flows:
        report.flows += 1
        call = price_flow(flow, prices, media, hosts) if isinstance(flow, http.HTTPFlow) else None
        if call is None:
            report.skipped += 1
            continue
        report.total.add(call)
        workflows.setdefault(call.workflow, WorkflowTotals(workflow=call.workflow)).add(call)
        models.setdefault((call.provider, call.model), ModelTotals(provider=call.provider, model=call.model)).add(call)
    report.total.finish()
    for group in (*workflows.values(), *models.values()):
        group.finish()
    report.by_workflow = sorted(workflows.values(), key=lambda g: (-g.cost_usd, g.workflow or ""))
    report.by_model = sorted(models.values(), key=lambda g: (-g.cost_usd, g.provider or "", g.model or ""))
    return report


def reprice_file(path: str | Path, *, prices: PriceBook | None = None, media: MediaPriceTable | None = None,
                 hosts: HostTable | None = None) -> RepriceReport:
    """Read and re-price a flow file, with the prices and hosts of today's configuration unless given."""
    path = Path(path)
    if prices is None or media is None or hosts is None:
        from tokensense.config import load_config
        from tokensense.metering.catalog_update import install_catalog
        from tokensense.settings import get_settings

        settings = get_settings()
        config = load_config(settings)
        prices = prices or PriceBook(config.models, snapshot=install_catalog(settings.home))
        media = media or MediaPriceTable(config.media_prices)
        hosts = hosts or HostTable(config.intercept_hosts)
    return reprice_flows(read_flow_file(path), file=str(path), prices=prices, media=media, hosts=hosts)


# -- output -----------------------------------------------------------------------------------


def _money(value: float) -> str:
    return f"${value:,.6f}"


def _diff(value: float) -> str:
    return f"{'+' if value > 0 else ''}{value:,.6f}" if value else "0"


def format_report(report: RepriceReport) -> str:
    """The report as aligned text tables: by workflow, by model, and the total."""
    lines = [f"{report.file}: {report.total.requests} provider calls re-priced with today's prices"
             + (f" ({report.skipped} other flows skipped)" if report.skipped else "") + "."]
    if report.total.unrecorded:
        lines.append(f"{report.total.unrecorded} of them carry no TokenSense record (recorded cost counted as 0).")
    if report.total.unpriced:
        lines.append(f"{report.total.unpriced} of them are unpriced: no price is known for their model "
                     "(counted as 0; declare it under [models] in config.toml).")
    columns = ["REQUESTS", "IN", "OUT", "RECORDED", "NOW", "DIFF"]

    def numbers(t: Totals) -> list[str]:
        return [str(t.requests), str(t.input_tokens), str(t.output_tokens), _money(t.recorded_cost_usd),
                _money(t.cost_usd), _diff(t.difference_usd)]

    def table(headers: list[str], rows: list[list[str]]) -> None:
        widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
        lead = len(headers) - len(columns)
        for row in [headers, *rows]:
            cells = [c.ljust(w) if i < lead else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
            lines.append("  ".join(cells).rstrip())

    lines.append("")
    table(["WORKFLOW", *columns], [[g.workflow or "-", *numbers(g)] for g in report.by_workflow])
    lines.append("")
    table(["PROVIDER", "MODEL", *columns],
          [[g.provider or "-", g.model or "-", *numbers(g)] for g in report.by_model])
    lines.append("")
    table(["", *columns], [["TOTAL", *numbers(report.total)]])
    return "\n".join(lines)
