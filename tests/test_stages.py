"""The stage functions on their own (gateway/stages/): parse and police are pure over values, one of each.

Issue 22: the first attempt and each fallback had their own router and their own
police (drifted: fallbacks skipped the unpriced-model refusal). These tests pin the
one parse and the one police that every path now calls, and that an exception in a
stage is a JSON 500 with nothing sent upstream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from keyinfo import key_info
from mitmproxy.test import taddons
from sqlmodel import Session
from test_pipeline import CHAT, assert_not_forwarded, error_of, gateway_flow, run_gates

from addons import intercept as intercept_addon
from addons import policy as policy_addon
from addons import routing as routing_addon
from addons.stack import build_addons
from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import GatewayError
from tokensense.gateway.call import CallContext
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.limits import MemoryCounters
from tokensense.gateway.routing import classify
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stages.parse import ClientRequest, RouteReading, parse_call, read_request, reading_of, resolve
from tokensense.gateway.stages.police import Refused, Target, police
from tokensense.metering.pricing import PriceBook
from tokensense.providers import PROVIDERS
from tokensense.providers.gemini import NATIVE as GEMINI_NATIVE
from tokensense.providers.openai import OPENAI_ERRORS
from tokensense.settings import Settings
from tokensense.storage import repo

PRICES = PriceBook()
CHAT_ROUTE = RouteReading(Endpoint.CHAT)


_key = key_info


# -- parse ------------------------------------------------------------------------------------------


def test_read_request_takes_the_model_and_stream_from_where_the_route_says() -> None:
    chat = read_request(RouteReading(Endpoint.CHAT), {"model": "gpt-4o-mini", "stream": True})
    assert (chat.requested, chat.stream) == ("gpt-4o-mini", True)
    in_path = RouteReading(GEMINI_NATIVE, "streamGenerateContent", path_model="gemini-2.5-flash",
                           model_in_body=False, streams=True, body_streams=False)
    gemini = read_request(in_path, {"model": "ignored", "stream": False})
    assert (gemini.requested, gemini.stream) == ("gemini-2.5-flash", True)
    cloud = read_request(RouteReading(Endpoint.CHAT, path_provider="azure", model_in_body=False), {"model": "prod-4o"})
    assert cloud.requested == "azure/prod-4o"
    with pytest.raises(GatewayError) as e:
        read_request(RouteReading(Endpoint.CHAT), {"model": "gpt-4o-mini", "max_tokens": "lots"})
    assert e.value.status == 400 and "max_tokens" in e.value.message
    # Intercept mode leaves the provider to judge the body.
    assert read_request(RouteReading(Endpoint.CHAT), {"model": "m", "max_tokens": "lots"}, check_caps=False) \
        .requested == "m"


def test_a_calls_route_reading_and_its_fallbacks() -> None:
    call = CallContext.of_route(classify("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent"))
    assert reading_of(call) == RouteReading(GEMINI_NATIVE, "streamGenerateContent", "v1beta", "gemini-2.5-flash",
                                            model_in_body=False, streams=True, body_streams=False)
    cloud = CallContext.of_route(classify("POST", "/openai/deployments/prod-4o/chat/completions"))
    assert not reading_of(cloud).model_in_body and reading_of(cloud).path_params
    # A fallback of a cloud platform's path goes to the other model's own endpoint: its body names the model.
    fallback = reading_of(cloud, fallback=True)
    assert fallback.model_in_body and fallback.path_provider is None and fallback.path_params is None


def test_parse_call_native_names_the_providers_model_and_asks_for_stream_usage() -> None:
    client = {"model": "openai/gpt-4o-mini", "stream": True, "messages": []}
    adapter, model = resolve(client["model"], PRICES)
    parsed = parse_call(CHAT_ROUTE, read_request(CHAT_ROUTE, client), adapter, model)
    assert (parsed.provider.name, parsed.model, parsed.upstream_model) == ("openai", "gpt-4o-mini", "gpt-4o-mini")
    assert parsed.sent_body["model"] == "gpt-4o-mini" and parsed.sent_body["stream_options"] == {"include_usage": True}
    assert parsed.body is not None and json.loads(parsed.body) == parsed.sent_body
    assert parsed.drops_usage_chunk and not parsed.client_wants_usage
    assert client == {"model": "openai/gpt-4o-mini", "stream": True, "messages": []}  # the client's body is kept
    assert parsed.target == Target(adapter, "gpt-4o-mini", "openai/gpt-4o-mini", parsed.sent_body)
    unchanged = parse_call(CHAT_ROUTE, read_request(CHAT_ROUTE, {"model": "gpt-4o-mini"}), adapter, "gpt-4o-mini")
    assert unchanged.body is None  # the client's own bytes go


def test_parse_call_translates_chat_for_another_format_and_refuses_what_it_cannot_serve() -> None:
    request = ClientRequest({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 5}, "claude-haiku-4-5", False)  # a fallback: another model, same body
    adapter, model = resolve("claude-haiku-4-5", PRICES)
    parsed = parse_call(CHAT_ROUTE, request, adapter, model)
    assert parsed.translator is not None and parsed.content_type == "application/json"
    assert parsed.sent_body["model"] == "claude-haiku-4-5" and parsed.sent_body["max_tokens"] == 5
    assert parsed.upstream.path.endswith("/messages") and "openai-" in parsed.drop_header_prefixes
    with pytest.raises(GatewayError) as e:
        parse_call(RouteReading(Endpoint.EMBEDDINGS), request, adapter, model, where="/v1/embeddings")
    assert e.value.status == 400 and e.value.code == "unsupported_model_for_endpoint"


# -- police -----------------------------------------------------------------------------------------


def _call(key: KeyInfo, endpoint: Endpoint = Endpoint.CHAT) -> CallContext:
    call = CallContext(endpoint, OPENAI_ERRORS)
    call.key = key
    return call


def _never_spent(key_id: str, since: object) -> float:
    return 0.0


async def _police(call: CallContext, target: Target, counters: MemoryCounters | None = None, **kw: object):
    return await police(call, target, prices=PRICES, counters=counters or MemoryCounters(),
                        spent_since=_never_spent, **kw)  # type: ignore[arg-type]


async def test_police_refuses_access_and_unpriced_models_for_a_budget() -> None:
    openai = PROVIDERS["openai"]
    body = {"model": "gpt-4o-mini", "messages": [], "max_tokens": 10}
    with pytest.raises(Refused) as e:
        await _police(_call(_key(allowed_models=("gpt-4o",))), Target(openai, "gpt-4o-mini", None, body))
    assert e.value.error.status == 403 and e.value.error.code == "model_not_allowed"
    unpriced = Target(openai, "gpt-nonexistent-9", "openai/gpt-nonexistent-9", body)
    with pytest.raises(Refused) as e:
        await _police(_call(_key(budget_usd=5.0)), unpriced)
    assert e.value.error.code == "model_unpriced" and "openai/gpt-nonexistent-9" in e.value.reason
    assert (await _police(_call(_key()), unpriced)).passed  # no budget: nothing to count it against
    media = _call(_key(budget_usd=5.0), Endpoint.IMAGES)  # priced by the media table, not here
    assert (await _police(media, unpriced)).passed


async def test_police_refuses_unpriced_models_for_a_budget_on_the_calls_attribution() -> None:
    """A key without a budget, in a workflow with one: an unpriced model could not be counted against the workflow's
    budget, so it is refused as for a key with a budget, naming the workflow's budget."""
    from tokensense.config import BudgetsConfig
    from tokensense.gateway.budgets import BudgetBook

    book = BudgetBook(None, BudgetsConfig.model_validate([{"workflow": "nightly", "usd": 5}]).limits)
    body = {"model": "gpt-nonexistent-9", "messages": [], "max_tokens": 10}
    unpriced = Target(PROVIDERS["openai"], "gpt-nonexistent-9", "openai/gpt-nonexistent-9", body)
    call = _call(_key())
    call.attribution = {"workflow": "nightly"}
    with pytest.raises(Refused) as e:
        await _police(call, unpriced, budgets=book)
    assert e.value.error.status == 403 and e.value.error.code == "model_unpriced"
    assert "workflow `nightly`" in e.value.reason
    other = _call(_key())
    other.attribution = {"workflow": "daytime"}  # no budget applies: nothing to count it against
    assert (await _police(other, unpriced, budgets=book)).passed


async def test_police_reserves_the_budget_and_counts_the_rate_of_the_first_attempt_only() -> None:
    counters = MemoryCounters()
    target = Target(PROVIDERS["openai"], "gpt-4o-mini", "gpt-4o-mini",
                    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100})
    call = _call(_key(budget_usd=1.0, rpm=1))
    first = await _police(call, target, counters)
    assert first.passed and first.holds_rate and first.rate is not None and first.rate.allowed
    assert first.budget is not None and first.budget.window == "total" and 0 < first.budget.amount < 0.001
    fallback = await _police(call, target, counters, count_request=False)  # the same call's fallback
    assert not fallback.holds_rate and fallback.budget is not None
    with pytest.raises(Refused) as e:  # a second call in the same minute
        await _police(_call(_key(budget_usd=1.0, rpm=1)), target, counters)
    assert e.value.error.status == 429 and e.value.held is not None and not e.value.held.passed
    assert "retry-after" in e.value.headers
    with pytest.raises(Refused) as e:
        await _police(_call(_key(budget_usd=0.00001)), target, counters)
    assert e.value.error.status == 402 and e.value.budget is not None and e.value.amount


async def test_police_without_counters_refuses_a_key_with_limits() -> None:
    target = Target(PROVIDERS["openai"], "gpt-4o-mini", None, {"model": "gpt-4o-mini", "messages": []})
    with pytest.raises(Refused) as e:
        await police(_call(_key(rpm=5)), target, prices=PRICES, counters=None, spent_since=_never_spent)
    assert e.value.error.status == 503
    passed = await police(_call(_key()), target, prices=PRICES, counters=None, spent_since=_never_spent)
    assert passed.passed and passed.budget is None


# -- a stage that raises ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    mp = pytest.MonkeyPatch()
    for provider in PROVIDERS.values():
        mp.setenv(provider.env_key, f"provider-key-{provider.name}")
    rt = Runtime(Settings(home=tmp_path_factory.mktemp("stages"),
                          **{f"{name}_base_url": f"http://127.0.0.1:9999/{name}" for name in PROVIDERS}))
    rt.start()
    yield rt
    rt.close()
    mp.undo()


@pytest.fixture(scope="module")
def key(runtime: Runtime) -> str:
    with Session(runtime.engine) as session:
        _, plain = repo.create_key(session=session, name="stages", budget_usd=5.0)
    runtime.keys.refresh(force=True)  # type: ignore[union-attr]
    return plain


def _raise(*args: object, **kwargs: object) -> None:
    raise RuntimeError("a stage failed")


@pytest.mark.parametrize("stage", ["parse", "police"])
async def test_an_exception_in_a_stage_function_is_a_json_500_and_nothing_goes_upstream(
        runtime: Runtime, key: str, monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    if stage == "parse":
        monkeypatch.setattr(routing_addon, "parse_call", _raise)
    else:
        async def failing(*args: object, **kwargs: object) -> None:
            raise RuntimeError("a stage failed")

        monkeypatch.setattr(policy_addon, "police", failing)
    chain = build_addons(runtime)[0]
    with taddons.context(chain):
        flow = await run_gates(chain, gateway_flow("POST", "/v1/chat/completions", CHAT, key=key))
    assert flow.response is not None and flow.response.status_code == 500
    assert error_of(flow)["error"]["code"] == "internal_error"
    assert_not_forwarded(flow)


async def test_an_exception_in_an_intercepted_calls_parse_is_a_json_500(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    from mitmproxy.proxy.mode_specs import ProxyMode

    monkeypatch.setattr(intercept_addon, "parse_intercepted", _raise)
    chain = build_addons(runtime)[0]
    with taddons.context(chain):
        flow = gateway_flow("POST", "/v1/chat/completions", CHAT)
        flow.request.host, flow.request.port, flow.request.scheme = "api.openai.com", 443, "https"
        flow.client_conn.proxy_mode = ProxyMode.parse("regular@8081")
        await run_gates(chain, flow)
    assert flow.response is not None and flow.response.status_code == 500
    assert error_of(flow)["error"]["code"] == "internal_error"
    call = flow.metadata["tokensense.call"]
    assert call is not None and call.intercepted and not call.forwarded


# -- settle -----------------------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.records: list = []

    def submit(self, record: object) -> None:
        self.records.append(record)


def test_settle_writes_a_calls_record_once_and_each_failed_attempt_once() -> None:
    from tokensense.gateway.call import Record
    from tokensense.gateway.stages.settle import FailedAttempt, settle, settle_failed

    runtime = Runtime()
    recorder = _Recorder()
    runtime.recorder = recorder  # type: ignore[assignment]
    call = _call(_key())
    call.provider, call.model = PROVIDERS["openai"], "gpt-4o-mini"
    seen: list[tuple[str, int]] = []
    call.on_record.append(lambda record: seen.append(("call", record.attempt)))
    call.on_attempt_record.append(lambda record: seen.append(("attempt", record.attempt)))
    failed = settle_failed(runtime, call, FailedAttempt(1, PROVIDERS["anthropic"], "claude-haiku-4-5", 503,
                                                        "overloaded", call.started, None))
    assert (failed.attempt, failed.provider, failed.status, failed.cost_usd) == (1, "anthropic", 503, 0.0)
    call.attempt = 2
    record = settle(runtime, call, 200)
    assert record is not None and (record.attempt, record.provider, record.request_id) == \
        (2, "openai", failed.request_id)
    assert settle(runtime, call, 502) is None  # the error hook after the response hook: no second record
    assert [r.attempt for r in recorder.records] == [1, 2] and seen == [("attempt", 1), ("call", 2)]
    assert call.record_state is Record.WRITTEN

    not_a_provider_call = _call(_key())
    not_a_provider_call.record_state = Record.NONE
    assert settle(runtime, not_a_provider_call, 200) is None and len(recorder.records) == 2
    counting = _call(_key())
    counting.record_state = Record.DEFERRED  # the input-count task settles it, once
    assert settle(runtime, counting, 200) is not None and settle(runtime, counting, 200) is None
