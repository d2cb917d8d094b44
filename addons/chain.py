"""One mitmproxy addon that runs the TokenSense addons' hooks in order, and fails closed.

mitmproxy looks up and calls every hook of every addon through its addon
manager; with ten addons that dispatch cost about 0.05 ms a request (measured
with scripts/bench). Here each hook is dispatched once and the members' hooks
run in list order. The members stay separate classes, one per concern. (They
are kept in `_members`, not `addons`, or mitmproxy would call them a second time.)

Failing closed: an exception in a member's `requestheaders` or `request` hook
(a gate) answers the call with a JSON 500 in the endpoint's shape and runs no
further member of that hook, so the forward stage never points it upstream.
An exception in a later hook (answer, stream, record) is logged and the next
member still runs, so the call is still metered.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

from mitmproxy import hooks, http

log = logging.getLogger(__name__)

GATE_HOOKS = frozenset({"requestheaders", "request"})


def _fail(name: str, member: Callable, args: tuple) -> bool:
    """Handle an exception of `member`; True if the hook's remaining members must not run."""
    flow = args[0] if args else None
    owner = type(getattr(member, "__self__", member)).__name__
    log.exception("TokenSense addon error in %s.%s", owner, name)
    if name in GATE_HOOKS and isinstance(flow, http.HTTPFlow):
        from addons.common import answer_internal_error

        try:
            answer_internal_error(flow)
            if name == "requestheaders":
                from tokensense.gateway.flowmeta import refuse_body

                refuse_body(flow)
        except Exception:  # the answer itself failed: kill the flow rather than let it go upstream
            log.exception("could not answer a failed call; killing it")
            flow.kill()
        return True
    return False


def _sync(name: str, fns: list[Callable]) -> Callable:
    def hook(*args):
        for fn in fns:
            try:
                fn(*args)
            except Exception:
                if _fail(name, fn, args):
                    return

    return hook


def _async(name: str, fns: list[Callable]) -> Callable:
    async def hook(*args):
        for fn in fns:
            try:
                result = fn(*args)
                # `inspect.isawaitable(None)` ends in an ABC instance check: the sync members return None.
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception:
                if _fail(name, fn, args):
                    return

    return hook


class TokenSenseChain:
    """Behaves like the member addons listed one after the other, as separate addons would (but fails closed)."""

    def __init__(self, members: list[object]) -> None:
        self._members = members
        for name in hooks.all_hooks:
            fns = [getattr(m, name) for m in members if callable(getattr(m, name, None))]
            if fns:
                is_async = any(inspect.iscoroutinefunction(fn) for fn in fns)
                setattr(self, name, (_async if is_async else _sync)(name, fns))
