"""In-test HTTP receivers on 127.0.0.1: an OTLP/HTTP trace collector and a webhook endpoint."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Receiver:
    """A threaded HTTP server that hands each POST body to `handle` and answers with its status."""

    def __init__(self, handle: Callable[[str, bytes], int]) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status = receiver.handle(self.path, body, dict(self.headers))
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self._handle = handle
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        return self._handle(path, body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class OtlpTraceReceiver(_Receiver):
    """Collects the spans of OTLP/HTTP protobuf exports (POST /v1/traces), decoded with opentelemetry-proto."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.resources: list[dict[str, Any]] = []
        super().__init__(self._receive)

    def _receive(self, path: str, body: bytes) -> int:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.paths.append(path)
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            self.resources.append(resource)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append({
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "kind": span.kind,
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "status_code": span.status.code,
                        "attributes": {a.key: _value(a.value) for a in span.attributes},
                        "resource": resource,
                    })
        return 200

    def wait_spans(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.spans) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.spans)


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class WebhookReceiver(_Receiver):
    """Collects JSON webhook bodies; answers `fail_first` requests with 503 before accepting."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.attempts = 0
        self.bodies: list[dict[str, Any]] = []
        super().__init__(self._receive)

    def _receive(self, path: str, body: bytes) -> int:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            return 503
        self.bodies.append(json.loads(body))
        return 200

    def wait_bodies(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.bodies)
