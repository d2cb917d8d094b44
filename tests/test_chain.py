"""The addon chain calls its members' hooks in order, awaits async ones, and survives a failing member."""

from __future__ import annotations

from addons.chain import TokenSenseChain


class Sync:
    def __init__(self, log: list, name: str) -> None:
        self.log, self.name = log, name

    def request(self, flow) -> None:
        self.log.append(self.name)


class Async(Sync):
    async def request(self, flow) -> None:
        self.log.append(self.name)


class Broken(Sync):
    def request(self, flow) -> None:
        raise RuntimeError("boom")


async def test_members_run_in_order_and_an_error_does_not_stop_the_rest() -> None:
    log: list[str] = []
    chain = TokenSenseChain([Sync(log, "a"), Async(log, "b"), Broken(log, "x"), Sync(log, "c")])
    await chain.request(object())
    assert log == ["a", "b", "c"]
    assert not hasattr(chain, "response")  # only hooks some member has


def test_sync_chain_stays_sync() -> None:
    log: list[str] = []
    chain = TokenSenseChain([Sync(log, "a"), Sync(log, "b")])
    assert chain.request(object()) is None and log == ["a", "b"]
