"""The gateway's mitmproxy master: FastAddonManager dispatches hooks like mitmproxy's AddonManager, at less cost."""

from __future__ import annotations

import asyncio
import logging

import pytest
from mitmproxy import addonmanager, exceptions, hooks
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpRequestHook, HttpResponseHook
from mitmproxy.test import taddons, tflow

from tokensense.gateway.master import FastAddonManager, GatewayMaster, hook_args


class Recorder:
    def __init__(self, name: str, calls: list[str], *, fail: bool = False, halt: bool = False,
                 children: list[object] | None = None) -> None:
        self.name = name
        self.calls = calls
        self.fail = fail
        self.halt = halt
        if children is not None:
            self.addons = children

    def request(self, flow) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(f"{self.name}.request")
        if self.fail:
            raise ValueError("boom")
        if self.halt:
            raise exceptions.AddonHalt()


class AsyncRecorder:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    async def request(self, flow) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        self.calls.append(f"{self.name}.request")

    async def update(self, flows) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(f"{self.name}.update:{len(flows)}")


def _fast(tctx: taddons.context) -> FastAddonManager:
    manager = tctx.master.addons
    manager.__class__ = FastAddonManager
    manager._handlers = {}
    return manager


def test_hook_args_match_mitmproxys() -> None:
    flow = tflow.tflow(resp=True)
    for event in (HttpRequestHook(flow), HttpResponseHook(flow), hooks.RunningHook(), hooks.UpdateHook([flow]),
                  hooks.ConfigureHook({"a"})):
        assert list(hook_args(event)) == event.args()


async def test_order_sub_addons_errors_and_halt(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    with taddons.context() as tctx:
        manager = _fast(tctx)
        child_fails = Recorder("child1", calls, fail=True)
        manager.add(
            Recorder("a", calls),
            AsyncRecorder("b", calls),
            # An error in a sub-addon skips the rest of that top-level addon, not the next addon.
            Recorder("parent", calls, children=[child_fails, Recorder("child2", calls)]),
            Recorder("c", calls),
        )
        flow = tflow.tflow()
        with caplog.at_level(logging.ERROR):
            await manager.trigger_event(HttpRequestHook(flow))
        assert calls == ["a.request", "b.request", "parent.request", "child1.request", "c.request"]
        assert "Addon error: boom" in caplog.text

        calls.clear()
        manager.add(Recorder("halts", calls, halt=True), Recorder("after", calls))
        manager.remove(manager.get("c"))
        await manager.trigger_event(HttpRequestHook(flow))
        assert calls == ["a.request", "b.request", "parent.request", "child1.request", "halts.request"]


async def test_table_follows_register_and_remove() -> None:
    calls: list[str] = []
    with taddons.context() as tctx:
        manager = _fast(tctx)
        manager.add(Recorder("a", calls))
        flow = tflow.tflow()
        await manager.trigger_event(HttpRequestHook(flow))
        manager.add(Recorder("b", calls))
        await manager.trigger_event(HttpRequestHook(flow))
        manager.remove(manager.get("a"))
        await manager.trigger_event(HttpRequestHook(flow))
        assert calls == ["a.request", "a.request", "b.request", "b.request"]


async def test_update_follows_a_flow_hook_only_when_handled() -> None:
    calls: list[str] = []
    with taddons.context() as tctx:
        manager = _fast(tctx)
        manager.add(Recorder("a", calls))
        flow = tflow.tflow()
        await manager.handle_lifecycle(HttpRequestHook(flow))
        manager.add(AsyncRecorder("b", calls))
        await manager.handle_lifecycle(HttpRequestHook(flow))
        assert calls == ["a.request", "a.request", "b.request", "b.update:1"]


async def test_options_error_propagates() -> None:
    class Bad:
        def running(self) -> None:
            raise exceptions.OptionsError("bad option")

    with taddons.context() as tctx:
        manager = _fast(tctx)
        manager.add(Bad())
        with pytest.raises(exceptions.OptionsError):
            await manager.trigger_event(hooks.RunningHook())


async def test_gateway_master_has_mitmdumps_addons() -> None:
    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster

    master = GatewayMaster(options.Options(), with_termlog=False)
    assert isinstance(master.addons, FastAddonManager)
    plain = DumpMaster(options.Options(), with_termlog=False)
    assert isinstance(plain.addons, addonmanager.AddonManager)
    assert list(master.addons.lookup) == list(plain.addons.lookup)
    assert master.addons.handlers("request")  # mitmdump's own request handlers (save, blocklist, ...)


async def test_idle_builtin_addons_are_left_out_until_their_option_is_set(tmp_path) -> None:
    from mitmproxy import options

    master = GatewayMaster(options.Options(), with_termlog=False)

    def owners(hook: str) -> set[str]:
        return {type(f.__self__).__name__ for group in master.addons.handlers(hook) for f in group}

    assert "MapLocal" not in owners("request") and "ModifyHeaders" not in owners("requestheaders")
    assert "Save" in owners("request")  # no predicate for it: always called
    (tmp_path / "answer.json").write_text("{}")
    master.options.update(map_local=[f"|/v1/local|{tmp_path / 'answer.json'}"], modify_headers=["/~q/x-added/1"])
    assert "MapLocal" in owners("request") and "ModifyHeaders" in owners("requestheaders")

    flow = tflow.tflow()
    flow.request.path = "/v1/local"
    await master.addons.handle_lifecycle(HttpRequestHeadersHook(flow))
    assert flow.request.headers.get("x-added") == "1"
    await master.addons.handle_lifecycle(HttpRequestHook(flow))
    assert flow.response is not None and flow.response.status_code == 200  # map_local answered it

    master.options.update(map_local=[], modify_headers=[])
    assert "MapLocal" not in owners("request") and "ModifyHeaders" not in owners("requestheaders")
