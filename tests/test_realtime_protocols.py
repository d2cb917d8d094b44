"""The realtime socket protocols as pure functions (frames in, meaning out), and the session's books."""

from __future__ import annotations

import json

import pytest

from tokensense.core.errors import GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.gateway import sessions
from tokensense.gateway.keys import KeyInfo
from tokensense.providers import get_provider, socket_protocol
from tokensense.providers.gemini import GEMINI_LIVE
from tokensense.providers.openai import OPENAI_REALTIME
from tokensense.providers.sockets import NOTHING_CLIENT, NOTHING_SERVER, ServerFrame

DONE = {"type": "response.done", "event_id": "event_1", "response": {
    "id": "resp_1", "status": "completed", "usage": {
        "total_tokens": 400, "input_tokens": 300, "output_tokens": 100,
        "input_token_details": {"text_tokens": 100, "audio_tokens": 200, "image_tokens": 0, "cached_tokens": 128,
                                "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 64, "image_tokens": 0}},
        "output_token_details": {"text_tokens": 20, "audio_tokens": 80}}}}


def _bytes(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_paths_find_their_protocol_and_provider() -> None:
    assert socket_protocol("/v1/realtime") == (get_provider("openai"), OPENAI_REALTIME)
    for version in ("v1beta", "v1alpha"):
        path = f"/ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent"
        assert socket_protocol(path) == (get_provider("gemini"), GEMINI_LIVE)
        assert GEMINI_LIVE.handshake(path, {}).upstream_path == path
    assert socket_protocol("/v1/realtime/../admin") is None and socket_protocol("/v1/responses") is None


def test_openai_handshake_needs_a_model() -> None:
    assert OPENAI_REALTIME.handshake("/v1/realtime", {"model": "gpt-realtime"}).model == "gpt-realtime"
    with pytest.raises(GatewayError) as missing:
        OPENAI_REALTIME.handshake("/v1/realtime", {})
    assert missing.value.status == 400
    sideband = OPENAI_REALTIME.handshake("/v1/realtime", {"call_id": "rtc_abc"})  # a WebRTC call's server side
    assert sideband.model is None
    with pytest.raises(GatewayError):
        OPENAI_REALTIME.handshake("/v1/realtime", {"call_id": "../x"})
    created = OPENAI_REALTIME.server_frame(_bytes({"type": "session.created", "session": {"model": "gpt-realtime"}}),
                                           True)
    assert created.model == "gpt-realtime"


def test_openai_client_frames() -> None:
    create = OPENAI_REALTIME.client_frame(
        _bytes({"type": "response.create", "event_id": "e1", "response": {"max_output_tokens": 200}}), True)
    assert create.starts_response and create.max_output_tokens == 200 and create.event_id == "e1"
    assert OPENAI_REALTIME.client_frame(_bytes({"type": "response.create", "response": {
        "max_output_tokens": "inf"}}), True).max_output_tokens is None
    update = OPENAI_REALTIME.client_frame(_bytes({"type": "session.update", "session": {"max_output_tokens": 50}}),
                                          True)
    assert update.session_max_output_tokens == 50 and not update.starts_response
    audio = _bytes({"type": "input_audio_buffer.append", "audio": "AAAA" * 1000})
    assert OPENAI_REALTIME.client_frame(audio, True) is NOTHING_CLIENT
    assert OPENAI_REALTIME.client_frame(b'{"type": "response.create"', True) is NOTHING_CLIENT  # not JSON: upstream's


def test_openai_response_done_is_usage_by_modality() -> None:
    frame = OPENAI_REALTIME.server_frame(_bytes(DONE), True)
    assert frame.done and frame.status == "completed" and frame.usage is not None
    usage = frame.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens) == (300, 100, 128)
    assert usage.units == {"input_audio_tokens": 200, "cache_audio_read_tokens": 64, "output_audio_tokens": 80}
    assert usage.counters == {"input_text_tokens": 100, "output_text_tokens": 20}
    assert OPENAI_REALTIME.server_frame(_bytes({"type": "response.created", "response": {}}), True).started
    error = OPENAI_REALTIME.server_frame(_bytes({"type": "error", "error": {"event_id": "e9"}}), True)
    assert error.failed_event_id == "e9"
    delta = _bytes({"type": "response.output_audio.delta", "delta": "AAAA" * 1000})
    assert OPENAI_REALTIME.server_frame(delta, True) is NOTHING_SERVER


def test_openai_error_event_is_the_realtime_shape() -> None:
    data = OPENAI_REALTIME.error_frame(402, "No budget left.", code="budget_exceeded", event_id="e2")
    assert data is not None
    event = json.loads(data)
    assert event["type"] == "error" and event["event_id"].startswith("event_")
    assert event["error"] == {"type": "insufficient_quota", "code": "budget_exceeded", "message": "No budget left.",
                              "param": None, "event_id": "e2"}


def test_gemini_live_frames() -> None:
    setup = GEMINI_LIVE.client_frame(_bytes({"setup": {"model": "models/gemini-live-2.5-flash-preview",
                                                       "generationConfig": {"maxOutputTokens": 300}}}), True)
    assert setup.model == "gemini-live-2.5-flash-preview" and setup.session_max_output_tokens == 300
    assert GEMINI_LIVE.client_frame(_bytes({"clientContent": {"turns": [], "turnComplete": True}}), True).starts_response
    assert GEMINI_LIVE.client_frame(_bytes({"realtimeInput": {"audioStreamEnd": True}}), False).starts_response
    assert not GEMINI_LIVE.client_frame(_bytes({"realtimeInput": {"audio": {"data": "AAAA"}}}), True).starts_response
    assert GEMINI_LIVE.server_frame(_bytes({"serverContent": {"modelTurn": {"parts": []}}}), False).started
    end = GEMINI_LIVE.server_frame(_bytes({"serverContent": {"turnComplete": True}, "usageMetadata": {
        "promptTokenCount": 50, "responseTokenCount": 40, "totalTokenCount": 90,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 18}, {"modality": "AUDIO", "tokenCount": 32}],
        "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 40}]}}), False)
    assert end.done and end.usage is not None
    assert (end.usage.input_tokens, end.usage.output_tokens) == (50, 40)
    assert end.usage.units == {"input_audio_tokens": 32, "output_audio_tokens": 40}
    assert GEMINI_LIVE.error_frame(429, "x", code=None, event_id=None) is None  # closed with 1008 instead


def _session() -> sessions.Session:
    key = KeyInfo(id="k1", name="k", revoked=False, project=None, budget_usd=None, budget_period="total", rpm=None,
                  tpm=None, plan=None, allowed_models=(), allowed_providers=())
    provider = get_provider("openai")
    assert provider is not None
    return sessions.Session(key=key, provider=provider, protocol=OPENAI_REALTIME, model="gpt-realtime",
                            attribution={}, request_id="r1")


class _Runtime:
    """What the session's books use of the runtime: the price book (no recorder: records go nowhere)."""

    def __init__(self) -> None:
        from tokensense.metering.pricing import PriceBook

        self.prices = PriceBook()
        self.counters = None
        self.recorder = None
        self.typical = None  # [budgets] reserve = "cap": no output history
        self.budgets = None  # no budgets on attribution


def test_a_response_reserves_its_output_cap_as_audio_and_the_last_input() -> None:
    runtime, session = _Runtime(), _session()
    first = sessions.reservation(runtime, session, 100)  # type: ignore[arg-type]
    assert first.output_tokens == 100 and first.units == {"output_audio_tokens": 100} and first.input_tokens == 0
    session.output_cap = 300
    session.last_input = TokenUsage(input_tokens=250, units={"input_audio_tokens": 200})
    second = sessions.reservation(runtime, session, None)  # type: ignore[arg-type]
    assert second.output_tokens == 300 and second.input_tokens == 250
    assert second.units == {"input_audio_tokens": 200, "output_audio_tokens": 300}
    session.output_cap = None
    assert sessions.reservation(runtime, session, None).output_tokens == 4_096  # type: ignore[arg-type]


def test_the_books_match_responses_and_forget_a_refused_ask() -> None:
    runtime, session = _Runtime(), _session()
    asked = OPENAI_REALTIME.client_frame(_bytes({"type": "response.create", "event_id": "e1"}), True)
    sessions.asked(session, sessions.new_call(session), asked)
    sessions.on_server_frame(runtime, session, ServerFrame(failed_event_id="e1"))  # type: ignore[arg-type]
    assert not session.responses  # the provider refused the ask: nothing to record
    sessions.asked(session, sessions.new_call(session), asked)
    sessions.on_server_frame(runtime, session, ServerFrame(started=True))  # type: ignore[arg-type]
    sessions.on_server_frame(runtime, session, OPENAI_REALTIME.server_frame(_bytes(DONE), True))  # type: ignore[arg-type]
    assert not session.responses and session.last_input is not None and session.last_input.input_tokens == 300
    # A response the provider started by itself (voice activity detection) is booked too.
    sessions.on_server_frame(runtime, session, ServerFrame(started=True))  # type: ignore[arg-type]
    assert len(session.responses) == 1 and session.responses[0].started
    assert sessions.end(runtime, session, by_client=True) == 1  # type: ignore[arg-type]
