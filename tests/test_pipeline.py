"""The gateway's stages in-process (mitmproxy's taddons/tflow): fail closed, bounded input, validated upstream URLs.

Guards the invariants of issue 11: nothing reaches a provider unless admit, parse
and police passed; an exception in any gate is a JSON 500 and no upstream request;
upstream URLs carry no client-controlled `/`, `..`, `?`, `#`; keys leave the
request before anything can log them.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow
from sqlmodel import Session

from addons import admit, forward, policy, routing
from addons.stack import build_addons, tokensense_addons
from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import GatewayError
from tokensense.gateway.flowmeta import get_call
from tokensense.gateway.runtime import Runtime
from tokensense.providers import BUILTIN, PROVIDERS
from tokensense.providers.gemini import NATIVE as gemini_native
from tokensense.settings import Settings
from tokensense.storage import repo

UPSTREAM_HOST = "address"  # tflow's request host: where a flow points until the forward stage rewrites it
FAKE_BASE = "http://127.0.0.1:9999"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    home = tmp_path_factory.mktemp("pipeline")
    mp = pytest.MonkeyPatch()
    for provider in PROVIDERS.values():
        mp.setenv(provider.env_key, f"provider-key-{provider.name}")
    settings = Settings(home=home, **{f"{name}_base_url": f"{FAKE_BASE}/{name}" for name in PROVIDERS})
    rt = Runtime(settings)
    rt.start()
    yield rt
    rt.close()
    mp.undo()


@pytest.fixture(scope="module")
def keys(runtime: Runtime) -> dict[str, str]:
    with Session(runtime.engine) as session:
        _, plain = repo.create_key(session=session, name="pipeline")
        _, spent = repo.create_key(session=session, name="spent", budget_usd=0.0)
        _, limited = repo.create_key(session=session, name="limited", rpm=1)
    runtime.keys.refresh(force=True)  # type: ignore[union-attr]
    return {"plain": plain, "spent": spent, "limited": limited}


def gateway_flow(method: str, path: str, body: bytes | dict | None = None, *, key: str | None = None,
                 headers: dict[str, str] | None = None) -> http.HTTPFlow:
    content = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    req = http.Request.make(method, f"http://{UPSTREAM_HOST}:22{path}", content,
                            {"content-type": "application/json", **(headers or {})})
    if key is not None:
        req.headers["authorization"] = f"Bearer {key}"
    flow = tflow.tflow(req=req)
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9@8080")
    return flow


async def run_hook(chain: object, hook: str, flow: http.HTTPFlow) -> None:
    result = getattr(chain, hook)(flow)
    if inspect.isawaitable(result):
        await result


async def run_gates(chain: object, flow: http.HTTPFlow) -> http.HTTPFlow:
    await run_hook(chain, "requestheaders", flow)
    await run_hook(chain, "request", flow)
    return flow


def assert_not_forwarded(flow: http.HTTPFlow) -> None:
    assert flow.request.host == UPSTREAM_HOST and flow.request.port == 22
    call = get_call(flow)
    assert call is None or not call.forwarded


def error_of(flow: http.HTTPFlow) -> dict:
    assert flow.response is not None
    assert flow.response.headers["content-type"] == "application/json"
    return json.loads(flow.response.content or b"{}")


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_routed_policed_call_is_forwarded_with_the_provider_key(runtime: Runtime, keys: dict) -> None:
    chain = build_addons(runtime)[0]
    with taddons.context(chain):
        flow = await run_gates(chain, gateway_flow("POST", "/v1/chat/completions?key=x", CHAT, key=keys["plain"]))
    assert flow.response is None
    assert (flow.request.host, flow.request.port, flow.request.path) == ("127.0.0.1", 9999,
                                                                          "/openai/v1/chat/completions")
    assert flow.request.headers["authorization"] == "Bearer provider-key-openai"
    assert get_call(flow).forwarded  # type: ignore[union-attr]


GATES = [
    (admit.Admit, "requestheaders"),
    (routing.Router, "request"),
    (policy.Policy, "request"),
    (forward.Forward, "request"),
]


@pytest.mark.parametrize(("cls", "hook"), GATES, ids=[f"{c.__name__}.{h}" for c, h in GATES])
async def test_an_exception_in_any_gate_is_a_json_500_and_nothing_goes_upstream(
        runtime: Runtime, keys: dict, monkeypatch: pytest.MonkeyPatch, cls: type, hook: str) -> None:
    def boom(*args: object) -> None:
        raise RecursionError("a gate failed")

    monkeypatch.setattr(cls, hook, boom)
    chain = build_addons(runtime)[0]
    with taddons.context(chain):
        flow = await run_gates(chain, gateway_flow("POST", "/v1/chat/completions", CHAT, key=keys["plain"]))
    assert flow.response is not None and flow.response.status_code == 500
    error = error_of(flow)["error"]
    assert error["code"] == "internal_error" and "request id" in error["message"]
    assert_not_forwarded(flow)


async def test_the_forward_stage_refuses_a_call_the_police_stage_did_not_pass(
        runtime: Runtime, keys: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    async def skipped(self: object, flow: http.HTTPFlow) -> None:
        return None  # a gate that forgot to decide

    monkeypatch.setattr(policy.Policy, "request", skipped)
    chain = build_addons(runtime)[0]
    with taddons.context(chain):
        flow = await run_gates(chain, gateway_flow("POST", "/v1/chat/completions", CHAT, key=keys["plain"]))
    assert flow.response is not None and flow.response.status_code == 500
    assert_not_forwarded(flow)


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


HOSTILE_BODIES = {
    "nested 900 deep": ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi","x":' + deep(900) + "}]}").encode(),
    "nested 70 deep": ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi","x":' + deep(70) + "}]}").encode(),
    "max_tokens with 400 zeros": b'{"model":"gpt-4o-mini","max_tokens":1' + b"0" * 400 + b',"messages":[]}',
    "integer of 5000 digits": b'{"model":"gpt-4o-mini","seed":' + b"9" * 5000 + b',"messages":[]}',
    "NaN": b'{"model":"gpt-4o-mini","temperature":NaN,"messages":[]}',
    "1e400": b'{"model":"gpt-4o-mini","temperature":1e400,"messages":[]}',
    "max_tokens a string": b'{"model":"claude-haiku-4-5","max_tokens":"lots","messages":[{"role":"user","content":"x"}]}',
    "max_tokens negative": b'{"model":"gpt-4o-mini","max_tokens":-5,"messages":[]}',
    "not UTF-8": b'{"model":"gpt-4o-mini","messages":"\xff\xfe"}',
    "not JSON": b"{model: gpt}",
    "a list": b"[1, 2]",
    "Claude tools function 5": b'{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"x"}],'
                               b'"tools":[{"function":5}]}',
    "Claude json_schema 5": b'{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"x"}],'
                            b'"response_format":{"type":"json_schema","json_schema":5}}',
    "Gemini messages 5": b'{"model":"gemini-2.5-flash","messages":5}',
    "model a number": b'{"model":5,"messages":[]}',
    "model path traversal": b'{"model":"gemini-2.0-flash-0/../../files","messages":[]}',
    "model with query": b'{"model":"gemini-2.0-flash-0?alt=json&x=","messages":[]}',
}


@pytest.mark.parametrize("key_name", ["plain", "spent"])
@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
async def test_hostile_bodies_are_4xx_and_never_reach_a_provider(runtime: Runtime, keys: dict, name: str,
                                                                  key_name: str) -> None:
    """Issue 11: deep nesting, huge integers and odd types made a gate raise and the call go out unchecked."""
    chain = build_addons(runtime)[0]
    with taddons.context(chain):
        flow = await run_gates(chain, gateway_flow("POST", "/v1/chat/completions", HOSTILE_BODIES[name],
                                                   key=keys[key_name]))
    assert flow.response is not None and 400 <= flow.response.status_code < 500, flow.response
    assert "error" in error_of(flow)
    assert_not_forwarded(flow)


@pytest.mark.parametrize("path", [
    "/v1beta/models/gemini-2.5-flash%2F..%2Ffiles:generateContent",
    "/v1beta/models/gemini-2.5-flash%3Falt%3Djson:generateContent",
    "/v1beta/models/gemini-2.5-flash%23x:generateContent",
    "/v1beta/models/gemini-2.5-flash:deleteFile",
    "/v1beta/models/..:generateContent",
])
async def test_native_gemini_paths_cannot_steer_the_upstream(runtime: Runtime, keys: dict, path: str) -> None:
    chain = build_addons(runtime)[0]
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    with taddons.context(chain):
        flow = await run_gates(chain, gateway_flow("POST", path, body, key=keys["plain"]))
    assert flow.response is not None and flow.response.status_code in (400, 404)
    assert set(error_of(flow)["error"]) >= {"code", "message", "status"}  # Google's error shape
    assert_not_forwarded(flow)


def test_upstream_paths_take_one_valid_segment_only() -> None:
    gemini = PROVIDERS["gemini"]
    assert gemini.upstream(Endpoint.CHAT, "gemini-2.5-flash", stream=True).path == \
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    for model in ["a/../b", "a?x=1", "a#b", "a%2Fb", "..", "a\nb", "a b", "a:deleteFile", ""]:
        with pytest.raises(GatewayError) as e:
            gemini.upstream(Endpoint.CHAT, model, stream=False)
        assert e.value.status == 400
    with pytest.raises(GatewayError):
        gemini.upstream(gemini_native, "gemini-2.5-flash", stream=False, action="deleteFile")
    fal = PROVIDERS["fal"]
    assert fal.media_route(Endpoint.IMAGES, "fal-ai/flux/dev", declared=False).upstream_path == "/fal-ai/flux/dev"
    with pytest.raises(GatewayError):
        fal.media_route(Endpoint.IMAGES, "fal-ai/../admin", declared=False)


@pytest.mark.parametrize("header", ["authorization", "x-api-key", "x-goog-api-key"])
async def test_a_non_utf8_key_is_401(runtime: Runtime, header: str) -> None:
    chain = build_addons(runtime)[0]
    flow = gateway_flow("POST", "/v1/chat/completions", CHAT)
    value = b"Bearer tsk_\xff\xfe" if header == "authorization" else b"tsk_\xff\xfe"
    flow.request.headers.fields += ((header.encode(), value),)
    with taddons.context(chain):
        await run_gates(chain, flow)
    assert flow.response is not None and flow.response.status_code == 401
    assert_not_forwarded(flow)


async def test_keys_leave_the_request_on_the_request_headers_whatever_the_path(runtime: Runtime, keys: dict) -> None:
    chain = build_addons(runtime)[0]
    with taddons.context(chain):
        for path in ["/nowhere?key=tsk_secret&x=1", "/health?key=tsk_secret", "/v1/chat/completions?key=tsk_secret"]:
            flow = gateway_flow("POST" if "chat" in path else "GET", path, CHAT, headers={"x-api-key": "tsk_secret"})
            await run_hook(chain, "requestheaders", flow)
            assert "tsk_secret" not in flow.request.path
            assert "x-api-key" not in flow.request.headers


async def test_refused_requests_drop_their_body_and_oversized_ones_are_413(runtime: Runtime, keys: dict) -> None:
    chain = build_addons(runtime)[0]
    with taddons.context(chain):
        nokey = gateway_flow("POST", "/v1/chat/completions", CHAT)
        await run_hook(chain, "requestheaders", nokey)
        assert nokey.response is not None and nokey.response.status_code == 401
        assert nokey.metadata.get("tokensense.refused") is True  # its body is read and dropped, not buffered
        big = gateway_flow("POST", "/v1/chat/completions", CHAT, key=keys["plain"])
        big.request.headers["content-length"] = str(300 * 1024 * 1024)
        await run_hook(chain, "requestheaders", big)
        assert big.response is not None and big.response.status_code == 413
        assert big.metadata.get("tokensense.refused") is True


async def test_head_answers_have_no_body(runtime: Runtime) -> None:
    chain = build_addons(runtime)[0]
    with taddons.context(chain):
        flow = await run_gates(chain, gateway_flow("HEAD", "/health"))
        await run_hook(chain, "response", flow)
    assert flow.response is not None and flow.response.status_code == 200
    assert flow.response.raw_content == b""


async def test_a_spent_key_and_a_rate_limited_key_reach_no_provider(runtime: Runtime, keys: dict) -> None:
    chain = build_addons(runtime)[0]
    with taddons.context(chain):
        spent = await run_gates(chain, gateway_flow("POST", "/v1/chat/completions", CHAT, key=keys["spent"]))
        assert spent.response is not None and spent.response.status_code == 402
        assert_not_forwarded(spent)
        first = await run_gates(chain, gateway_flow("POST", "/v1/chat/completions", CHAT, key=keys["limited"]))
        assert first.response is None
        second = await run_gates(chain, gateway_flow("POST", "/v1/chat/completions", CHAT, key=keys["limited"]))
        assert second.response is not None and second.response.status_code == 429
        assert_not_forwarded(second)


def test_addons_name_no_provider() -> None:
    """Invariant 7: provider knowledge lives in tokensense/providers; the addons and routing ask it."""
    root = Path(__file__).resolve().parent.parent
    # The built-in providers (other tests of this process may have registered config-declared ones, e.g. "unpriced").
    names = [f'"{name}"' for name in BUILTIN] + [f"'{name}'" for name in BUILTIN]
    files = list((root / "addons").glob("*.py")) + [root / "tokensense" / "gateway" / "routing.py",
                                                    root / "tokensense" / "gateway" / "policy.py"]
    offenders = [f"{f.name}: {n}" for f in files for n in names if n in f.read_text()]
    assert offenders == []
    assert len(tokensense_addons()) >= 10
