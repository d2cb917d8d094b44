"""One mitmproxy addon that calls the TokenSense addons' hooks in order: one dispatch per hook, not ten."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

from mitmproxy import hooks

log = logging.getLogger(__name__)


def _sync(name: str, fns: list[Callable]) -> Callable:
    def hook(*args):  # noqa: ANN002, ANN202
        for fn in fns:
            try:
                fn(*args)
            except Exception:
                log.exception("TokenSense addon error in %s", name)

    return hook


def _async(name: str, fns: list[Callable]) -> Callable:
    async def hook(*args):  # noqa: ANN002, ANN202
        for fn in fns:
            try:
                result = fn(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("TokenSense addon error in %s", name)

    return hook


class TokenSenseChain:
    """Behaves like the member addons listed one after the other, as separate addons would.

    mitmproxy looks up and calls every hook of every addon through its addon
    manager; with ten addons that dispatch cost about 0.05 ms a request
    (measured with scripts/bench). Here each hook is dispatched once and the
    members' hooks run in list order; like mitmproxy, an error in one member is
    logged and the next still runs. The members stay separate classes, one per
    concern. (They are kept in `_members`, not `addons`, or mitmproxy would
    call them a second time.)
    """

    def __init__(self, members: list[object]) -> None:
        self._members = members
        for name in hooks.all_hooks:
            fns = [getattr(m, name) for m in members if callable(getattr(m, name, None))]
            if fns:
                is_async = any(inspect.iscoroutinefunction(fn) for fn in fns)
                setattr(self, name, (_async if is_async else _sync)(name, fns))
