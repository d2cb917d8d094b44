"""OpenTelemetry spans, one per call, following the GenAI semantic conventions; exported over OTLP in batches.

Only used when the standard OpenTelemetry environment names an OTLP endpoint
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); the
rest of that environment (`OTEL_EXPORTER_OTLP_PROTOCOL`, `..._HEADERS`,
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
`OTEL_BSP_*`, `OTEL_PROPAGATORS`) is honoured as the SDK defines it. The
OpenTelemetry packages are imported only then: `span_attributes` and
`tracing_configured` need none of them.

A span is made when the call has ended, with the call's own start and end
times; an incoming `traceparent` header (W3C Trace Context) makes it a child of
the caller's span. The BatchSpanProcessor exports from its own thread.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from tokensense import __version__
from tokensense.providers import genai_operation
from tokensense.storage.models import UsageCreate

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
DEFAULT_SERVICE_NAME = "tokensense"

_MAX_BODY_FOR_MODEL = 1 << 20


class TracingUnavailable(RuntimeError):
    """The OpenTelemetry environment asks for something this installation cannot do."""


def tracing_configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether the OpenTelemetry environment asks for traces: an OTLP endpoint is set and traces are not disabled."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = [e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if e.strip()]
    if exporters and "otlp" not in exporters:
        return False
    return any(env.get(name) for name in ENDPOINT_VARIABLES)


def response_model(body: bytes | None, content_encoding: str | None = None) -> str | None:
    """The model a provider says answered (`model`, Gemini's `modelVersion`) from an unstreamed JSON answer."""
    if not body or len(body) > _MAX_BODY_FOR_MODEL:
        return None
    if content_encoding and content_encoding != "identity":
        from mitmproxy.net.encoding import decode

        try:
            decoded = decode(body, content_encoding)
        except ValueError:
            return None
        if not isinstance(decoded, bytes) or len(decoded) > 8 * _MAX_BODY_FOR_MODEL:
            return None
        body = decoded
    if not body.lstrip().startswith(b"{"):
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    model = data.get("model") or data.get("modelVersion") if isinstance(data, dict) else None
    return model if isinstance(model, str) and model else None


def span_name(record: UsageCreate) -> str:
    operation = genai_operation(record.endpoint) or record.endpoint or "call"
    return f"{operation} {record.model}" if record.model else operation


def span_attributes(record: UsageCreate, *, response_model: str | None = None,
                    upstream_error: str | None = None) -> dict[str, Any]:
    """The span's attributes: GenAI semantic conventions, then TokenSense's own (`tokensense.*`); no None values."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": genai_operation(record.endpoint) or record.endpoint,
        "gen_ai.usage.input_tokens": record.input_tokens,
        "gen_ai.usage.output_tokens": record.output_tokens,
        "http.response.status_code": record.status,
    }
    if record.provider:
        attrs["gen_ai.provider.name"] = genai_provider_name(record.provider)
    if record.model:
        attrs["gen_ai.request.model"] = record.model
    if response_model:
        attrs["gen_ai.response.model"] = response_model
    if record.cached_input_tokens:
        attrs["gen_ai.usage.cache_read.input_tokens"] = record.cached_input_tokens
    if record.cache_write_tokens:
        attrs["gen_ai.usage.cache_creation.input_tokens"] = record.cache_write_tokens
    if record.reasoning_tokens:
        attrs["gen_ai.usage.reasoning.output_tokens"] = record.reasoning_tokens
    if record.status >= 400:
        attrs["error.type"] = upstream_error or str(record.status)
    optional = {
        "tokensense.request_id": record.request_id,
        "tokensense.provider": record.provider,
        "tokensense.endpoint": record.endpoint,
        "tokensense.key.id": record.key_id,
        "tokensense.key.name": record.key_name,
        "tokensense.workflow": record.workflow,
        "tokensense.step": record.step,
        "tokensense.execution_id": record.execution_id,
        "tokensense.source": record.source,
        "tokensense.project": record.project,
        "tokensense.cost_usd": record.cost_usd,
        "tokensense.time_to_first_token_ms": record.ttft_ms,
        "tokensense.upstream_error": upstream_error,
    }
    attrs.update({k: v for k, v in optional.items() if v is not None})
    attrs["tokensense.stream"] = record.stream
    attrs["tokensense.attempt"] = record.attempt
    if record.images:
        attrs["tokensense.usage.images"] = record.images
    if record.characters:
        attrs["tokensense.usage.characters"] = record.characters
    if record.seconds:
        attrs["tokensense.usage.seconds"] = record.seconds
    return attrs


def _span_exporter(env: Mapping[str, str]):
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
        except ImportError as e:
            raise TracingUnavailable(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter: pip install 'tokensense[otlp-grpc]' "
                "(or use http/protobuf)") from e
        return GrpcSpanExporter()
    raise TracingUnavailable(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: use http/protobuf or grpc")


class GenAITracing:
    """A tracer provider of its own (the global one is left alone) with a batching OTLP exporter."""

    def __init__(self, env: Mapping[str, str] | None = None, *, exporter: Any = None) -> None:
        from opentelemetry.propagate import extract
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind, Status, StatusCode

        env = os.environ if env is None else env
        resource = Resource.create({SERVICE_VERSION: __version__})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter or _span_exporter(env)))
        self.tracer = self.provider.get_tracer("tokensense", __version__)
        self._extract = extract
        self._kind = SpanKind.CLIENT
        self._status = Status
        self._error_code = StatusCode.ERROR

    def record_span(self, record: UsageCreate, *, start_ns: int, end_ns: int, traceparent: str | None = None,
                    tracestate: str | None = None, response_model: str | None = None,
                    upstream_error: str | None = None) -> None:
        """One finished span for the call (the processor exports it later, from its thread)."""
        parent = None
        if traceparent:
            carrier = {"traceparent": traceparent}
            if tracestate:
                carrier["tracestate"] = tracestate
            parent = self._extract(carrier)
        span = self.tracer.start_span(
            span_name(record), context=parent, kind=self._kind, start_time=start_ns,
            attributes=span_attributes(record, response_model=response_model, upstream_error=upstream_error),
        )
        if record.status >= 400:
            span.set_status(self._status(self._error_code, (record.error or f"HTTP {record.status}")[:300]))
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        """Export what is still queued, then stop."""
        self.provider.shutdown()


def genai_provider_name(provider: str) -> str:
    """`gen_ai.provider.name`: the conventions' well-known value the provider declares, else TokenSense's name."""
    from tokensense.providers import get_provider

    adapter = get_provider(provider)
    return (adapter.otel_name if adapter is not None else None) or provider
