"""A provider added from one module and one `register(...)` line serves a metered call end to end.

The toy provider below is written to a temporary directory as a module of its
own, imported, and registered: nothing else of TokenSense changes. Its client
route (a path of its own with the model and action in it), its endpoint id, its
error shape and its usage reader are all in that module. The call then runs
through the gateway's whole addon chain in-process (mitmproxy's taddons/tflow)
against a fake upstream on 127.0.0.1, and its usage record is read back.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from mitmproxy import http
from mitmproxy.test import taddons
from sqlmodel import Session

from addons.stack import build_addons
from tests.test_pipeline import assert_not_forwarded, gateway_flow, run_gates, run_hook
from tokensense import providers
from tokensense.gateway.flowmeta import get_call
from tokensense.gateway.routing import classify
from tokensense.gateway.runtime import Runtime
from tokensense.settings import Settings
from tokensense.storage import repo

# The whole provider: one module. Its clients call `POST /toy/v1/models/{model}:{action}`; upstream it is
# `POST /v2/{action}/{model}` with a `toy-key` header; answers carry `usage: {in, out}`; errors are
# `{"toy_error": {"status", "text"}}`.
TOY_MODULE = '''
"""A toy LLM API: the smallest provider TokenSense can serve."""

from typing import Any, ClassVar

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape
from tokensense.core.usage import TokenUsage
from tokensense.providers import register
from tokensense.providers.base import ProviderAdapter, StreamUsage, Upstream, model_segment
from tokensense.providers.routes import ClientRoute, error_path

GENERATE = Endpoint("toy.generate")  # the endpoint id its usage records carry


class ToyErrors(ErrorShape):
    name = "toy"

    def body(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
        return {"toy_error": {"status": status, "text": message, "code": code}}


TOY_ERRORS = ToyErrors()


class ToyStreamUsage(StreamUsage):
    def __init__(self) -> None:
        self._usage = TokenUsage()

    def feed(self, event: str | None, data: dict) -> None:
        if isinstance(data.get("usage"), dict):
            self._usage = usage_of(data["usage"])

    def result(self) -> TokenUsage:
        return self._usage


def usage_of(usage: dict) -> TokenUsage:
    return TokenUsage(input_tokens=int(usage.get("in", 0)), output_tokens=int(usage.get("out", 0)))


class ToyProvider(ProviderAdapter):
    name: ClassVar[str] = "toy"
    display_name: ClassVar[str] = "Toy"
    default_base_url: ClassVar[str] = "https://api.toy.invalid"
    env_key: ClassVar[str] = "TOY_API_KEY"
    prices_id: ClassVar[str] = "toy"
    model_prefixes: ClassVar[tuple[str, ...]] = ("toy-",)
    native: ClassVar[frozenset[Endpoint]] = frozenset({GENERATE})
    client_routes: ClassVar[tuple[ClientRoute, ...]] = (
        ClientRoute(("POST",), r"/toy/v1/models/(?P<model>[^/:]+):(?P<action>[a-z]+)", GENERATE, TOY_ERRORS,
                    model_in_body=False, actions=frozenset({"generate", "count"}), free_actions=frozenset({"count"})),
    )
    error_paths = (error_path("/toy/", TOY_ERRORS),)
    usage_key: ClassVar[bytes | None] = b"usage"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"toy-key": api_key}

    def upstream(self, endpoint: Endpoint, model: str, *, stream: bool, action: str | None = None,
                 version: str | None = None) -> Upstream:
        return Upstream(endpoint, f"/v2/{action}/{model_segment(model)}")

    def usage_from_object(self, usage: dict) -> TokenUsage | None:
        return usage_of(usage)

    def usage_from_body(self, body: Any) -> TokenUsage | None:
        return usage_of(body["usage"]) if isinstance(body, dict) and isinstance(body.get("usage"), dict) else None

    def stream_usage(self) -> StreamUsage:
        return ToyStreamUsage()


register(ToyProvider())
'''


class ToyUpstream(BaseHTTPRequestHandler):
    """The toy's API on 127.0.0.1: answers `/v2/generate/{model}` with usage, remembers what it got."""

    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        ToyUpstream.seen.append({"path": self.path, "key": self.headers.get("toy-key"), "body": json.loads(body)})
        answer = json.dumps({"text": "hello from toy", "usage": {"in": 1200, "out": 300}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def toy_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ToyUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ToyUpstream.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def toy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The toy provider's module, written to a temporary package directory and imported (which registers it)."""
    (tmp_path / "toy_llm.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_llm")
    yield module
    providers.unregister("toy")
    sys.modules.pop("toy_llm", None)


@pytest.fixture
def runtime(tmp_path: Path, toy_module: ModuleType, toy_upstream: str,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    (tmp_path / "config.toml").write_text(
        '[models]\n"toy-1" = { provider = "toy", input_per_mtok = 2.0, output_per_mtok = 10.0 }\n')
    monkeypatch.setenv("TOY_API_KEY", "toy-provider-key")
    monkeypatch.setenv("TOKENSENSE_TOY_BASE_URL", toy_upstream)
    rt = Runtime(Settings(home=tmp_path, config_file=tmp_path / "config.toml"))
    rt.start()
    yield rt
    rt.close()


async def _send_upstream(flow: http.HTTPFlow) -> None:
    """What mitmproxy does between the request and response hooks: the request as the gateway rewrote it."""
    req = flow.request
    headers = {k: v for k, v in req.headers.items() if k.lower() not in ("host", "content-length")}
    async with httpx.AsyncClient() as client:
        answer = await client.request(req.method, req.url, headers=headers, content=req.raw_content)
    flow.response = http.Response.make(answer.status_code, answer.content,
                                       {"content-type": answer.headers["content-type"]})


async def test_a_provider_from_one_module_serves_a_metered_call(runtime: Runtime, toy_module: ModuleType) -> None:
    with Session(runtime.engine) as session:
        key, plain = repo.create_key(session=session, name="toy-user")
    assert runtime.keys is not None
    runtime.keys.refresh(force=True)
    route = classify("POST", "/toy/v1/models/toy-1:generate")
    assert (route.endpoint, route.model, route.action, route.fmt) == \
        (toy_module.GENERATE, "toy-1", "generate", toy_module.TOY_ERRORS)

    chain = build_addons(runtime)[0]
    with taddons.context(chain):
        flow = await run_gates(chain, gateway_flow("POST", "/toy/v1/models/toy-1:generate", {"prompt": "hi"},
                                                   key=plain))
        assert flow.response is None, flow.response and flow.response.content
        await _send_upstream(flow)
        await run_hook(chain, "responseheaders", flow)
        await run_hook(chain, "response", flow)
    call = get_call(flow)
    assert call is not None and call.forwarded
    # Upstream got the toy's own request: its path from validated parts, its key, the client's body.
    assert ToyUpstream.seen == [{"path": "/v2/generate/toy-1", "key": "toy-provider-key", "body": {"prompt": "hi"}}]
    assert flow.response is not None and flow.response.status_code == 200
    assert json.loads(flow.response.content or b"")["text"] == "hello from toy"

    assert runtime.recorder is not None
    runtime.recorder.flush(5.0)
    with Session(runtime.engine) as session:
        records = repo.usage_for_request(session=session, request_id=call.request_id, key_id=key.id)
    assert len(records) == 1
    record = records[0]
    assert (record["provider"], record["model"], record["endpoint"], record["status"]) == \
        ("toy", "toy-1", "toy.generate", 200)
    assert (record["input_tokens"], record["output_tokens"]) == (1200, 300)
    assert record["cost_usd"] == pytest.approx(1200 * 2.0 / 1e6 + 300 * 10.0 / 1e6)


async def test_the_toy_routes_errors_are_in_its_own_shape(runtime: Runtime) -> None:
    with Session(runtime.engine) as session:
        _, plain = repo.create_key(session=session, name="toy-errors")
    assert runtime.keys is not None
    runtime.keys.refresh(force=True)
    chain = build_addons(runtime)[0]
    with taddons.context(chain):
        nokey = await run_gates(chain, gateway_flow("POST", "/toy/v1/models/toy-1:generate", {"prompt": "hi"}))
        action = await run_gates(chain, gateway_flow("POST", "/toy/v1/models/toy-1:delete", {}, key=plain))
        unknown = await run_gates(chain, gateway_flow("POST", "/toy/v9/else", {}, key=plain))
        free = await run_gates(chain, gateway_flow("POST", "/toy/v1/models/toy-1:count", {}, key=plain))
    for flow, status in ((nokey, 401), (action, 404), (unknown, 404)):
        assert flow.response is not None and flow.response.status_code == status
        assert set(json.loads(flow.response.content or b"")["toy_error"]) == {"status", "text", "code"}
        assert_not_forwarded(flow)
    assert "action `delete`" in json.loads(action.response.content or b"")["toy_error"]["text"]  # type: ignore[union-attr]
    assert free.response is None and get_call(free).free  # type: ignore[union-attr]
    assert ToyUpstream.seen == []  # nothing reached the toy's API: the gates only


def test_unregistering_removes_its_routes(toy_module: ModuleType) -> None:
    assert classify("POST", "/toy/v1/models/toy-1:generate").endpoint is toy_module.GENERATE
    providers.unregister("toy")
    with pytest.raises(Exception) as e:
        classify("POST", "/toy/v1/models/toy-1:generate")
    assert getattr(e.value, "status", None) == 404
    assert providers.error_shape_for_path("/toy/v1/x") is providers.DEFAULT_ERRORS
