"""Intercept mode, recording with redaction, re-pricing and replay, without a network."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import pytest
from keyinfo import key_info
from mitmproxy import http
from mitmproxy.io import FlowReader
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from addons.common import CALL
from addons.intercept import Intercept
from addons.realtime import INTERCEPTED_SOCKET
from addons.recording import Recording
from tokensense.core.usage import TokenUsage
from tokensense.flows.recording import (
    RECORD,
    RECORDING,
    REDACTED,
    FlowFileWriter,
    StreamCapture,
    read_flow_file,
    recording_info,
    redact_body,
    redact_json,
    redact_keys,
    redact_sse,
    snapshot,
)
from tokensense.flows.replay import drop_usage_chunk, replay_args, replayable
from tokensense.flows.reprice import answer_usage, format_report, price_flow, reprice_flows
from tokensense.gateway.call import CallContext
from tokensense.gateway.flowmeta import body_limit, body_refused, get_call
from tokensense.gateway.intercept import (
    KEY_HEADER,
    HostTable,
    intercept_mode_args,
    intercepted_call,
    parse_hostmap,
)
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.routing import Endpoint
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stream import with_stream_usage
from tokensense.metering.media_prices import MediaPriceTable
from tokensense.metering.pricing import PriceBook
from tokensense.providers import PROVIDERS

FIXTURES = Path(__file__).parent / "fixtures"
OPENAI_STREAM = (FIXTURES / "streams" / "openai_chat_include_usage.sse").read_bytes()
ANTHROPIC_STREAM = (FIXTURES / "anthropic" / "stream_text.sse").read_bytes()
GEMINI_ANSWER = (FIXTURES / "gemini" / "response_text.json").read_bytes()
OPENAI_ANSWER = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "The secret answer."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16,
              "prompt_tokens_details": {"cached_tokens": 0}},
}).encode()


# -- provider hosts, host map, mode arguments --------------------------------------------


def test_known_provider_hosts_and_config_additions() -> None:
    table = HostTable({"llm.internal.example": "openai", "*.openai.azure.com": "openai"})
    assert table.provider("api.openai.com").name == "openai"
    assert table.provider("API.Anthropic.com.").name == "anthropic"
    assert table.provider("generativelanguage.googleapis.com").name == "gemini"
    assert [table.provider(h).name for h in ("api.x.ai", "api.mistral.ai", "fal.run")] == ["xai", "mistral", "fal"]
    assert table.provider("llm.internal.example").name == "openai"
    assert table.provider("east.openai.azure.com").name == "openai"
    assert table.provider("openai.com") is None and table.provider("example.com") is None
    assert table.provider(None) is None
    assert table.decrypts(["10.0.0.1", "api.x.ai"]) and not table.decrypts(["example.com", None])


def test_an_added_host_must_name_a_known_provider() -> None:
    with pytest.raises(ValueError, match="not a provider TokenSense knows"):
        HostTable({"llm.example": "openia"})


def test_hostmap_entries() -> None:
    assert parse_hostmap(["api.openai.com=127.0.0.1:9443", "Example.Test=[::1]:8443"]) == {
        "api.openai.com": ("127.0.0.1", 9443), "example.test": ("::1", 8443)}
    for bad in ("api.openai.com", "api.openai.com=127.0.0.1", "=127.0.0.1:1", "h=127.0.0.1:0", "h=127.0.0.1:x"):
        with pytest.raises(ValueError, match="HOST=ADDRESS:PORT"):
            parse_hostmap([bad])


def test_intercept_mode_args() -> None:
    assert intercept_mode_args(argparse.Namespace(port=8080, intercept_port=None)) == ["--mode", "regular@8081"]
    assert intercept_mode_args(argparse.Namespace(port=8080, intercept_port=9000)) == ["--mode", "regular@9000"]
    with pytest.raises(ValueError, match="the gateway's own --port"):
        intercept_mode_args(argparse.Namespace(port=8080, intercept_port=8080))


def test_mitmdump_args_for_serve_intercept_and_record() -> None:
    from tokensense.serve.server import mitmdump_args

    args = argparse.Namespace(host="127.0.0.1", port=8080, intercept=True, intercept_port=None, record="x.flows",
                              redact_bodies=True, mitm_args=[])
    argv = mitmdump_args(args)
    assert argv[argv.index("--mode") + 1].startswith("reverse:")
    assert "regular@8081" in argv
    assert "tokensense_record=x.flows" in argv and "tokensense_redact_bodies=true" in argv


# -- the call context of an intercepted request ---------------------------------------


def test_openai_chat_call() -> None:
    body = {"model": "gpt-4o-mini", "stream": True, "messages": []}
    call = intercepted_call(PROVIDERS["openai"], "POST", "/v1/chat/completions?x=1", body)
    assert call is not None
    assert (call.route_endpoint, call.provider.name, call.model, call.requested_model, call.stream) == \
        (Endpoint.CHAT, "openai", "gpt-4o-mini", "gpt-4o-mini", True)


def test_native_calls_of_each_provider() -> None:
    messages = intercepted_call(PROVIDERS["anthropic"], "POST", "/v1/messages", {"model": "claude-sonnet-4-5"})
    assert messages is not None and messages.route_endpoint is Endpoint.MESSAGES and not messages.stream
    gemini = intercepted_call(PROVIDERS["gemini"], "POST",
                              "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", {"contents": []})
    assert gemini is not None and (gemini.model, gemini.stream, gemini.action) == \
        ("gemini-2.5-flash", True, "streamGenerateContent")
    fal = intercepted_call(PROVIDERS["fal"], "POST", "/fal-ai/flux/dev", {"prompt": "x"})
    assert fal is not None and (fal.route_endpoint, fal.model) == (Endpoint.IMAGES, "fal-ai/flux/dev")
    speech = intercepted_call(PROVIDERS["openai"], "POST", "/v1/audio/transcriptions", None, form_model="whisper-1")
    assert speech is not None and speech.model == "whisper-1"


def test_the_long_tail_is_metered_in_intercept_mode_too() -> None:
    openai_ = PROVIDERS["openai"]
    completion = intercepted_call(openai_, "POST", "/v1/completions",
                                  {"model": "gpt-3.5-turbo-instruct", "prompt": "x", "stream": True})
    assert completion is not None and (completion.route_endpoint, completion.stream) == (Endpoint.COMPLETIONS, True)
    moderation = intercepted_call(openai_, "POST", "/v1/moderations", {"model": "omni-moderation-latest", "input": "x"})
    assert moderation is not None and moderation.route_endpoint is Endpoint.MODERATIONS and moderation.free
    for path, endpoint, model in (("/v1/images/edits", Endpoint.IMAGE_EDITS, "gpt-image-1"),
                                  ("/v1/images/variations", Endpoint.IMAGE_VARIATIONS, "dall-e-2"),
                                  ("/v1/audio/translations", Endpoint.TRANSLATIONS, "whisper-1")):
        call = intercepted_call(openai_, "POST", path, None, form_model=model)
        assert call is not None and (call.route_endpoint, call.model) == (endpoint, model)
    fim = intercepted_call(PROVIDERS["mistral"], "POST", "/v1/fim/completions",
                           {"model": "codestral-latest", "prompt": "def f():"})
    assert fim is not None and (fim.route_endpoint.value, fim.model) == ("fim.completions", "codestral-latest")


@pytest.mark.parametrize(("provider", "method", "path"), [
    ("openai", "GET", "/v1/models"),
    ("openai", "POST", "/v1/files"),
    ("openai", "GET", "/health"),
    ("anthropic", "POST", "/v1/chat/completions"),  # Anthropic's OpenAI-compatible endpoint: not metered
    ("gemini", "GET", "/v1beta/models"),
    ("fal", "GET", "/fal-ai/flux/dev"),
])
def test_paths_that_are_not_metered(provider: str, method: str, path: str) -> None:
    assert intercepted_call(PROVIDERS[provider], method, path, {"model": "gpt-4o-mini"}) is None


def test_stream_usage_is_asked_for_openai_format_chat_streams_only() -> None:
    call = intercepted_call(PROVIDERS["xai"], "POST", "/v1/chat/completions", {"model": "grok-3", "stream": True})
    assert call is not None
    body, wants = with_stream_usage(call, {"model": "grok-3", "stream": True, "stream_options": {"x": 1}})
    assert body == {"model": "grok-3", "stream": True, "stream_options": {"x": 1, "include_usage": True}}
    assert wants is False
    assert with_stream_usage(call, {"stream": True, "stream_options": {"include_usage": True}}) == (None, True)
    unstreamed = intercepted_call(PROVIDERS["openai"], "POST", "/v1/chat/completions", {"model": "gpt-4o"})
    assert unstreamed is not None and with_stream_usage(unstreamed, {"model": "gpt-4o"}) == (None, True)


# -- the Intercept addon ------------------------------------------------------------------


class _Keys:
    def __init__(self, info: KeyInfo) -> None:
        self.info = info

    def key(self, key_hash: str) -> KeyInfo | None:
        return None

    def load_key(self, key_hash: str) -> KeyInfo | None:
        from tokensense.crypto import hash_key

        return self.info if key_hash == hash_key("tsk_good") else None


def _key_info() -> KeyInfo:
    return key_info(project="proj-key")


def _provider_flow(host: str = "api.openai.com", path: str = "/v1/chat/completions", body: dict | None = None,
                   **headers: str) -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request = http.Request.make("POST", f"https://{host}{path}", json.dumps(body or {
        "model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode(),
        {"content-type": "application/json", "authorization": "Bearer sk-client", **headers})
    return flow


async def test_intercept_meters_provider_hosts_and_leaves_others_alone() -> None:
    addon = Intercept(Runtime())
    with taddons.context(addon):
        flow = _provider_flow(**{"x-workflow-tag": "wf", KEY_HEADER: "tsk_anything"})
        await addon.request(flow)
        call = flow.metadata[CALL]
        assert isinstance(call, CallContext) and call.intercepted
        assert (call.provider.name, call.model, call.attribution["workflow"], call.key) == \
            ("openai", "gpt-4o-mini", "wf", None)
        assert flow.request.headers["authorization"] == "Bearer sk-client"
        assert KEY_HEADER not in flow.request.headers
        assert json.loads(flow.request.content)["stream_options"] == {"include_usage": True}
        assert call.client_wants_usage is False and call.sent_body["stream_options"]["include_usage"]

        other = _provider_flow(host="example.com", **{KEY_HEADER: "tsk_x"})
        before = other.request.content
        await addon.request(other)
        assert other.metadata[CALL] is None and other.request.content == before
        assert other.request.headers[KEY_HEADER] == "tsk_x"  # other hosts are not touched at all

        listing = _provider_flow(path="/v1/models")
        listing.request.method = "GET"
        await addon.request(listing)
        assert listing.metadata[CALL] is None


async def test_provider_websockets_are_refused_not_relayed_unmetered() -> None:
    """Codex's Responses socket through the intercepting proxy: 426, so Codex uses HTTP, which is metered; a
    realtime session (the Realtime API) is left to addons/realtime.py, which meters it (tests/test_e2e_realtime_
    intercept.py); a WebSocket to any other host is left alone."""
    addon = Intercept(Runtime())
    upgrade = {"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13",
               "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", KEY_HEADER: "tsk_x"}
    with taddons.context(addon):
        realtime = _provider_flow(path="/v1/realtime?model=gpt-realtime", **upgrade)
        realtime.request.method, realtime.request.content = "GET", b""
        await addon.request(realtime)
        assert realtime.response is None and CALL not in realtime.metadata
        assert realtime.metadata[INTERCEPTED_SOCKET].name == "openai"
        for path in ("/v1/responses",):
            flow = _provider_flow(path=path, **upgrade)
            flow.request.method, flow.request.content = "GET", b""
            await addon.request(flow)
            assert flow.response is not None and flow.response.status_code == 426
            assert "intercept mode" in json.loads(flow.response.content)["error"]["message"]
            assert KEY_HEADER not in flow.request.headers
        other = _provider_flow(host="example.com", **upgrade)
        other.request.method = "GET"
        await addon.request(other)
        assert other.response is None and other.metadata[CALL] is None


async def test_reverse_mode_flows_are_the_gateways() -> None:
    addon = Intercept(Runtime())
    with taddons.context(addon):
        flow = _provider_flow()
        flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9@8080")
        await addon.request(flow)
        assert CALL not in flow.metadata


async def test_required_key_is_checked() -> None:
    runtime = Runtime()
    runtime.started = True
    runtime.keys = _Keys(_key_info())  # type: ignore[assignment]
    addon = Intercept(runtime)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokensense_intercept_require_key=True)
        missing = _provider_flow()
        await addon.request(missing)
        assert missing.response is not None and missing.response.status_code == 401
        assert KEY_HEADER in json.loads(missing.response.content)["error"]["message"]

        wrong = _provider_flow(**{KEY_HEADER: "tsk_bad"})
        await addon.request(wrong)
        assert wrong.response is not None and json.loads(wrong.response.content)["error"]["code"] == "invalid_api_key"

        good = _provider_flow(**{KEY_HEADER: "tsk_good"})
        await addon.request(good)
        call = good.metadata[CALL]
        assert good.response is None and call.intercepted  # the router leaves intercepted calls alone
        assert call.attribution["project"] == "proj-key"
        assert call.key == _key_info()


def test_only_tunnels_to_provider_hosts_are_decrypted() -> None:
    from mitmproxy.connection import Client
    from mitmproxy.options import Options
    from mitmproxy.proxy import context, layer, layers

    addon = Intercept(Runtime())

    def decide(host: str, mode: str = "regular") -> object:
        client = Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8081), timestamp_start=0,
                        proxy_mode=ProxyMode.parse(mode))
        ctx_ = context.Context(client, Options())
        ctx_.server.address = (host, 443)
        nextlayer = layer.NextLayer(ctx_)
        addon.next_layer(nextlayer)
        return nextlayer.layer

    with taddons.context(addon):
        assert isinstance(decide("example.com"), layers.TCPLayer)  # passthrough: never decrypted
        assert decide("api.openai.com") is None  # left to mitmproxy: intercepted
        assert decide("example.com", "reverse:http://127.0.0.1:9") is None  # the gateway's own connections


def test_hostmap_redirects_regular_mode_connections_only() -> None:
    from mitmproxy.proxy import server_hooks
    from mitmproxy.test.tflow import tclient_conn, tserver_conn

    addon = Intercept(Runtime())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokensense_intercept_hostmap=["api.openai.com=127.0.0.1:9443"])
        server = tserver_conn()
        server.address = ("api.openai.com", 443)
        addon.server_connect(server_hooks.ServerConnectionHookData(server=server, client=tclient_conn()))
        assert server.address == ("127.0.0.1", 9443)
        reverse_client = tclient_conn()
        reverse_client.proxy_mode = ProxyMode.parse("reverse:https://api.openai.com")
        server = tserver_conn()
        server.address = ("api.openai.com", 443)
        addon.server_connect(server_hooks.ServerConnectionHookData(server=server, client=reverse_client))
        assert server.address == ("api.openai.com", 443)
        with pytest.raises(Exception, match="HOST=ADDRESS:PORT"):
            tctx.configure(addon, tokensense_intercept_hostmap=["nonsense"])


# -- redaction -------------------------------------------------------------------------------


def test_keys_are_redacted_in_headers_and_the_url() -> None:
    flow = tflow.tflow(resp=True)
    flow.request.url = "https://generativelanguage.googleapis.com/v1beta/models/g:generateContent?key=AIzaSECRET&alt=sse"
    for name in ("authorization", "x-api-key", "x-goog-api-key", "x-tokensense-key", "proxy-authorization"):
        flow.request.headers[name] = f"secret-{name}"
    flow.backup()
    redact_keys(flow)
    state = json.dumps(flow.get_state(), default=repr)
    assert "secret-" not in state and "AIzaSECRET" not in state
    assert flow.request.query["key"] == REDACTED and flow.request.query["alt"] == "sse"
    assert flow.request.headers["authorization"] == REDACTED


def test_body_redaction_keeps_usage_and_names() -> None:
    answer = json.loads(OPENAI_ANSWER)
    redacted = redact_json(answer)
    assert redacted["usage"] == answer["usage"]
    assert redacted["model"] == "gpt-4o-mini" and redacted["choices"][0]["finish_reason"] == "stop"
    assert redacted["choices"][0]["message"] == {"role": "assistant", "content": REDACTED}
    assert redact_json({"data": [{"embedding": [0.1, 0.2], "index": 0}]}) == {"data": [{"embedding": [], "index": 0}]}


def test_stream_redaction_keeps_events_and_usage() -> None:
    redacted = redact_sse(ANTHROPIC_STREAM)
    assert b"Paris" not in redacted and b"event: message_delta" in redacted
    assert answer_usage(PROVIDERS["anthropic"], _response(redacted, "text/event-stream")) == \
        answer_usage(PROVIDERS["anthropic"], _response(ANTHROPIC_STREAM, "text/event-stream"))
    assert redact_sse(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert redact_sse(b": a comment with text\ndata: not json\n\n") == b":\ndata: [redacted]\n\n"


def test_body_redaction_of_compressed_and_binary_bodies() -> None:
    response = http.Response.make(200, b"", {"content-type": "application/json", "content-encoding": "gzip"})
    response.content = OPENAI_ANSWER
    redact_body(response)
    assert b"secret" not in response.content and json.loads(response.content)["usage"]["prompt_tokens"] == 12
    assert response.headers["content-encoding"] == "gzip"
    audio = http.Response.make(200, b"\xff\xfb" * 100, {"content-type": "audio/mpeg"})
    redact_body(audio)
    assert audio.content == b""


def test_snapshot_is_independent_and_carries_only_the_saved_metadata() -> None:
    flow = tflow.tflow(resp=True)
    flow.metadata[CALL] = CallContext(Endpoint.CHAT, None)  # type: ignore[arg-type]
    copy = snapshot(flow, {RECORD: {"cost_usd": 1.0}})
    assert copy.metadata == {RECORD: {"cost_usd": 1.0}} and CALL in flow.metadata
    copy.request.headers["authorization"] = "changed"
    assert flow.request.headers.get("authorization") != "changed"


def test_stream_capture_passes_chunks_on_and_keeps_them() -> None:
    seen = []
    capture = StreamCapture(lambda data: seen.append(data) or data.upper())
    assert capture(b"ab") == b"AB" and capture(b"") == b""
    assert capture.body() == b"ab" and seen == [b"ab", b""]
    assert StreamCapture(True)(b"x") == b"x"


def test_flow_file_writer_redacts_off_the_loop(tmp_path: Path) -> None:
    flow = _recorded_flow(OPENAI_ANSWER, "application/json")
    writer = FlowFileWriter(str(tmp_path / "out.flows"))
    writer.submit(snapshot(flow, {RECORD: flow.metadata[RECORD]}), redact_bodies=True)
    writer.submit(snapshot(flow, {RECORD: flow.metadata[RECORD]}), redact_bodies=False)
    assert writer.flush()
    writer.close()
    data = (tmp_path / "out.flows").read_bytes()
    assert b"sk-client-secret" not in data
    [redacted, plain] = read_flow_file(tmp_path / "out.flows")
    assert b"The secret answer" not in redacted.response.content and b"The secret answer" in plain.response.content
    assert redacted.metadata[RECORD]["cost_usd"] == 0.5
    with pytest.raises(OSError, match="does not exist"):
        FlowFileWriter(str(tmp_path / "missing" / "x.flows"))


def test_not_a_flow_file(tmp_path: Path) -> None:
    path = tmp_path / "x.flows"
    path.write_bytes(b"this is not a flow file")
    with pytest.raises(ValueError, match="not a mitmproxy flow file"):
        read_flow_file(path)


# -- the Recording addon ------------------------------------------------------------------------


def _record_dict(**fields: object) -> dict:
    return {"provider": "openai", "model": "gpt-4o-mini", "endpoint": "chat.completions", "workflow": "wf",
            "status": 200, "input_tokens": 12, "output_tokens": 4, "cost_usd": 0.5, **fields}


def test_recording_addon_saves_metered_calls_with_keys_redacted(tmp_path: Path) -> None:
    from tokensense.storage.models import UsageCreate

    addon = Recording()
    path = tmp_path / "rec.flows"
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokensense_record=str(path))
        flow = _provider_flow()
        call = CallContext(Endpoint.CHAT, None, stream=True, client_wants_usage=False)  # type: ignore[arg-type]
        call.provider = PROVIDERS["openai"]
        flow.metadata[CALL] = call
        addon.request(flow)
        flow.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
        flow.response.stream = lambda data: data
        addon.responseheaders(flow)
        flow.response.stream(OPENAI_STREAM)
        flow.response.stream(b"")
        for callback in call.on_record:  # what Metering does when it records the call
            callback(UsageCreate(provider="openai", model="gpt-4o-mini", endpoint="chat.completions", status=200,
                                 input_tokens=9, cost_usd=0.25))
        addon.response(flow)
        unmetered = _provider_flow(host="example.com")
        unmetered.metadata[CALL] = None
        addon.request(unmetered)
        addon.response(unmetered)
        addon.done()
    [saved] = read_flow_file(path)
    assert saved.request.headers["authorization"] == REDACTED
    assert saved.response.content == OPENAI_STREAM
    assert saved.metadata[RECORD]["input_tokens"] == 9
    assert saved.metadata[RECORDING] == recording_info(bodies_redacted=False, stream_captured=True,
                                                       usage_chunk_added=True)
    assert flow.request.headers["authorization"] == "Bearer sk-client"  # the live flow keeps its key


def test_recording_addon_prepares_flows_for_mitmproxys_own_save(tmp_path: Path) -> None:
    from mitmproxy.addons.save import Save

    addon = Recording()
    with taddons.context(addon, Save()) as tctx:
        flow = _provider_flow()
        flow.response = http.Response.make(200, OPENAI_ANSWER, {"content-type": "application/json"})
        flow.metadata[CALL] = CallContext(Endpoint.CHAT, None)  # type: ignore[arg-type]
        flow.metadata[RECORD] = _record_dict()
        flow.metadata["other.addon"] = object()
        addon.response(flow)
        assert CALL in flow.metadata  # without -w the live flow is left alone
        tctx.options.save_stream_file = str(tmp_path / "w.flows")
        addon.response(flow)
    assert set(flow.metadata) == {RECORD, RECORDING}
    assert flow.request.headers["authorization"] == REDACTED


# -- re-pricing ------------------------------------------------------------------------------------


def _response(body: bytes, content_type: str) -> http.Response:
    return http.Response.make(200, body, {"content-type": content_type})


def _recorded_flow(body: bytes, content_type: str, record: dict | None = None, host: str = "api.openai.com",
                   path: str = "/v1/chat/completions") -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request = http.Request.make("POST", f"https://{host}{path}", json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a secret prompt"}]}).encode(),
        {"content-type": "application/json", "authorization": "Bearer sk-client-secret"})
    flow.response = _response(body, content_type)
    if record != {}:  # {}: a flow saved without a TokenSense record (mitmdump -w of another tool)
        flow.metadata[RECORD] = record if record is not None else _record_dict()
    return flow


def test_usage_is_read_from_every_answer_format() -> None:
    assert answer_usage(PROVIDERS["openai"], _response(OPENAI_ANSWER, "application/json")) == \
        TokenUsage(input_tokens=12, output_tokens=4)
    streamed = answer_usage(PROVIDERS["openai"], _response(OPENAI_STREAM, "text/event-stream"))
    assert streamed is not None and streamed.input_tokens > 0
    anthropic = answer_usage(PROVIDERS["anthropic"], _response(ANTHROPIC_STREAM, "text/event-stream"))
    assert anthropic == TokenUsage(input_tokens=21 + 188 + 1024, output_tokens=26, cached_input_tokens=1024,
                                   cache_write_tokens=188, units={"cache_write_5m_tokens": 188},
                                   service_tier="standard")
    gemini = answer_usage(PROVIDERS["gemini"], _response(GEMINI_ANSWER, "application/json"))
    assert gemini is not None and gemini.input_tokens == 1290 and gemini.cached_input_tokens == 1024
    compressed = http.Response.make(200, b"", {"content-type": "application/json", "content-encoding": "gzip"})
    compressed.raw_content = gzip.compress(OPENAI_ANSWER)
    assert answer_usage(PROVIDERS["openai"], compressed) == TokenUsage(input_tokens=12, output_tokens=4)
    translated = answer_usage(PROVIDERS["anthropic"], _response(OPENAI_ANSWER, "application/json"),
                              openai_format=True)
    assert translated == TokenUsage(input_tokens=12, output_tokens=4)
    assert answer_usage(PROVIDERS["openai"], _response(b"", "application/json")) is None


def test_reprice_totals_by_workflow_and_model() -> None:
    prices, media = PriceBook(), MediaPriceTable()
    openai_cost = prices.token_cost("openai", "gpt-4o-mini", TokenUsage(input_tokens=12, output_tokens=4))
    anthropic_usage = answer_usage(PROVIDERS["anthropic"], _response(ANTHROPIC_STREAM, "text/event-stream"))
    assert anthropic_usage is not None
    anthropic_cost = prices.token_cost("anthropic", "claude-sonnet-4-5", anthropic_usage)
    flows = [
        _recorded_flow(OPENAI_ANSWER, "application/json", _record_dict(cost_usd=openai_cost)),
        _recorded_flow(ANTHROPIC_STREAM, "text/event-stream", _record_dict(
            provider="anthropic", model="claude-sonnet-4-5", endpoint="messages", workflow="wf-b", cost_usd=0.01),
            host="api.anthropic.com", path="/v1/messages"),
        _recorded_flow(GEMINI_ANSWER, "application/json", {}, host="generativelanguage.googleapis.com",
                       path="/v1beta/models/gemini-2.5-flash:generateContent"),
        _recorded_flow(b"<html>", "text/html", {}, host="example.com"),
        tflow.ttcpflow(),
    ]
    report = reprice_flows(flows, file="x.flows", prices=prices, media=media)
    assert (report.flows, report.skipped, report.total.requests, report.total.unrecorded) == (5, 2, 3, 1)
    workflows = {g.workflow: g for g in report.by_workflow}
    assert workflows["wf"].cost_usd == pytest.approx(openai_cost) and workflows["wf"].difference_usd == 0
    assert workflows["wf-b"].recorded_cost_usd == 0.01
    assert workflows["wf-b"].cost_usd == pytest.approx(anthropic_cost)
    assert workflows[None].requests == 1 and workflows[None].recorded_cost_usd == 0
    models = {(g.provider, g.model): g for g in report.by_model}
    assert models[("gemini", "gemini-2.5-flash")].input_tokens == 1290
    text = format_report(report)
    assert "wf-b" in text and "gemini-2.5-flash" in text and "TOTAL" in text and "1 of them carry no" in text


def test_a_flow_without_its_answer_is_priced_from_its_record() -> None:
    flow = _recorded_flow(b"", "text/event-stream", _record_dict(input_tokens=100, output_tokens=10))
    flow.response.content = None
    call = price_flow(flow, PriceBook(), MediaPriceTable())
    assert call is not None and call.usage_source == "record" and call.usage.input_tokens == 100


def test_a_call_refused_before_routing_counts_and_costs_nothing() -> None:
    flow = _recorded_flow(b'{"error": {"message": "Unknown TokenSense key."}}', "application/json",
                          _record_dict(provider=None, model=None, status=401, input_tokens=0, output_tokens=0,
                                       cost_usd=0.0), host="127.0.0.1")
    report = reprice_flows([flow], file="x", prices=PriceBook(), media=MediaPriceTable())
    assert (report.skipped, report.total.requests, report.total.cost_usd, report.total.unrecorded) == (0, 1, 0.0, 0)
    assert report.by_model[0].provider is None


def test_media_calls_are_priced_from_the_media_table() -> None:
    fal = _recorded_flow(json.dumps({"images": [{"url": "u", "width": 1024, "height": 1024}]}).encode(),
                         "application/json", _record_dict(provider="fal", model="fal-ai/flux/dev",
                                                          endpoint="images.generations", images=1, cost_usd=0.025),
                         host="fal.run", path="/fal-ai/flux/dev")
    call = price_flow(fal, PriceBook(), MediaPriceTable())
    assert call is not None and call.usage.images == 1 and call.cost_usd == pytest.approx(0.025)


# -- replay -----------------------------------------------------------------------------------------


def test_replayable_flows_lose_their_base_url_prefix_and_tokensense_headers() -> None:
    flow = _recorded_flow(OPENAI_STREAM, "text/event-stream", host="127.0.0.1", path="/openai/v1/chat/completions")
    flow.response.headers["x-tokensense-request-id"] = "r1"
    flow.metadata[RECORDING] = recording_info(bodies_redacted=False, stream_captured=True, usage_chunk_added=True)
    ready = replayable(flow)
    assert ready is not None and ready.request.path == "/v1/chat/completions" and ready.request.scheme == "http"
    assert "x-tokensense-request-id" not in ready.response.headers
    chunks = [json.loads(line[6:]) for line in ready.response.text.splitlines() if line.startswith("data: {")]
    assert chunks and all(c["choices"] for c in chunks)
    assert ready.response.text.rstrip().endswith("data: [DONE]")
    assert replayable(tflow.tflow()) is None


def test_drop_usage_chunk_keeps_everything_else() -> None:
    body = b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n' \
           b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\ndata: [DONE]\n\n'
    assert drop_usage_chunk(body) == b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\ndata: [DONE]\n\n'


def test_replay_args_never_forward() -> None:
    argv = replay_args(argparse.Namespace(host="127.0.0.1", port=8082, reuse=True))
    assert "reverse:http://127.0.0.1:9@8082" in argv
    for option in ("server_replay_extra=404", "server_replay_ignore_params=key", "server_replay_reuse=true",
                   "connection_strategy=lazy"):
        assert option in argv


def test_saved_flow_files_are_mitmproxy_flow_files(tmp_path: Path) -> None:
    """`mitmdump -nr FILE` and `--server-replay FILE` read what `--record` writes."""
    writer = FlowFileWriter(str(tmp_path / "a.flows"))
    flow = _recorded_flow(OPENAI_ANSWER, "application/json")
    writer.submit(snapshot(flow, {RECORD: flow.metadata[RECORD]}), redact_bodies=False)
    writer.close()
    with (tmp_path / "a.flows").open("rb") as f:
        [read] = list(FlowReader(f).stream())
    assert isinstance(read, http.HTTPFlow) and read.response.status_code == 200


async def test_intercept_admits_on_the_request_headers_before_any_body_byte() -> None:
    """Issue 22: intercept mode checked the required key only in the request hook, after mitmproxy had buffered the
    whole body. Now the gateway's admit gate runs on the headers: no key, or a Content-Length over the limit, is
    answered at once and the body is read and dropped, never buffered; an admitted body is limited as it arrives."""
    runtime = Runtime()
    runtime.started = True
    runtime.keys = _Keys(_key_info())  # type: ignore[assignment]
    addon = Intercept(runtime)
    huge = str(300 * 1024 * 1024)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokensense_intercept_require_key=True)
        unkeyed = _provider_flow()
        unkeyed.request.headers["content-length"] = huge
        unkeyed.request.content = None  # the headers only: mitmproxy has read no body yet
        await addon.requestheaders(unkeyed)
        assert unkeyed.response is not None and unkeyed.response.status_code == 401
        assert body_refused(unkeyed) and get_call(unkeyed).intercepted

        keyed_huge = _provider_flow(**{KEY_HEADER: "tsk_good"})
        keyed_huge.request.headers["content-length"] = huge
        keyed_huge.request.content = None
        await addon.requestheaders(keyed_huge)
        assert keyed_huge.response is not None and keyed_huge.response.status_code == 413
        assert body_refused(keyed_huge) and KEY_HEADER not in keyed_huge.request.headers

        keyed = _provider_flow(**{KEY_HEADER: "tsk_good"})
        await addon.requestheaders(keyed)
        assert keyed.response is None and not body_refused(keyed)
        assert body_limit(keyed) == runtime.settings.max_body_mb * 1024 * 1024
        assert get_call(keyed).key == _key_info() and get_call(keyed).model is None  # parsed in `request`
        await addon.request(keyed)
        assert get_call(keyed).model == "gpt-4o-mini" and keyed.response is None

    without_key_required = Intercept(runtime)
    with taddons.context(without_key_required):
        flow = _provider_flow()
        flow.request.headers["content-length"] = huge
        flow.request.content = None
        await without_key_required.requestheaders(flow)
        assert flow.response is not None and flow.response.status_code == 413  # every body is bounded
