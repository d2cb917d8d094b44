"""The mitmproxy master that `tokensense serve` runs: mitmdump's, with a hook dispatch that costs less per request.

mitmproxy's `AddonManager.trigger_event` walks every addon (about forty in
mitmdump) for every hook of every request: per addon a coroutine, a context
manager, two generators and a `getattr`, and `Hook.args()` calls
`dataclasses.fields` each time. Most addons have no handler for a given hook.
`FastAddonManager` resolves, once per hook name, the handlers that exist and
calls only those (leaving out mitmdump's own map/modify/block/sticky addons
while their options are off, see `_IDLE`), with the same semantics: the addons
run in chain order, an exception is logged and skips the rest of that top-level
addon (its sub-addons) but not the next addon, `AddonHalt` stops the hook,
`OptionsError` propagates, and a flow hook is followed by `update` (only when
some addon handles it).

The table is rebuilt after any `register`, `remove` or `clear` (scripts that are
loaded, reloaded or unloaded go through those). An addon that swaps its
handlers or its `addons` list without them is seen after the next such call.
"""

from __future__ import annotations

import inspect
import logging
import operator
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

from mitmproxy import addonmanager, ctx, exceptions, flow, hooks
from mitmproxy.tools.dump import DumpMaster

logger = logging.getLogger(addonmanager.__name__)  # the same logger as mitmproxy's own "Addon error" lines

Group = tuple[Callable[..., Any], ...]  # the handlers of one top-level addon (itself and its sub-addons)

_args_getters: dict[type, Callable[[hooks.Hook], tuple]] = {}


def hook_args(event: hooks.Hook) -> tuple:
    """`event.args()` as a tuple, without `dataclasses.fields` on every call."""
    getter = _args_getters.get(type(event))
    if getter is None:
        names = [f.name for f in hooks.fields(event)]  # type: ignore[arg-type]
        if not names:
            def getter(_e: hooks.Hook) -> tuple:
                return ()
        elif len(names) == 1:
            one = operator.attrgetter(names[0])

            def getter(e: hooks.Hook) -> tuple:
                return (one(e),)
        else:
            getter = operator.attrgetter(*names)
        _args_getters[type(event)] = getter
    return getter(event)


FLOW_HOOKS = frozenset({"requestheaders", "request", "responseheaders", "response"})

# mitmdump's own addons whose flow hooks do nothing while their feature is off (mitmproxy 12), by addon
# name: whether the addon is off. They stay loaded (their options and commands work); their flow hooks are
# left out of the table while off, and the table is rebuilt after every option change (`configure`).
_IDLE: dict[str, Callable[[Any], bool]] = {
    "maplocal": lambda a: not getattr(a, "replacements", None),
    "mapremote": lambda a: not getattr(a, "replacements", None),
    "modifybody": lambda a: not getattr(a, "replacements", None),
    "modifyheaders": lambda a: not getattr(a, "replacements", None),
    "blocklist": lambda a: not getattr(a, "items", None),
    "stickyauth": lambda a: not getattr(a, "flt", None),
    "stickycookie": lambda a: not getattr(a, "flt", None),
    "upstreamauth": lambda a: not getattr(a, "auth", None),
    "anticache": lambda a: not ctx.options.anticache,
    "anticomp": lambda a: not ctx.options.anticomp,
    "savehar": lambda a: not ctx.options.hardump,
}


def _idle(addon: object, hook: str) -> bool:
    """Whether `addon` is one of mitmdump's own that does nothing in `hook` as the options stand."""
    if hook not in FLOW_HOOKS or not type(addon).__module__.startswith("mitmproxy.addons."):
        return False
    off = _IDLE.get(addonmanager._get_name(addon))
    return off is not None and off(addon)


def _not_callable(name: str, addon: object) -> Callable[..., Any]:
    def fail(*_args: Any) -> None:
        raise exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable")

    return fail


class FastAddonManager(addonmanager.AddonManager):
    """mitmproxy's addon manager with the handlers of each hook looked up once (see the module docstring)."""

    _handlers: dict[str, tuple[Group, ...]]

    def __init__(self, master: Any) -> None:
        super().__init__(master)
        self._handlers = {}

    def _changed(self) -> None:
        self._handlers = {}

    def register(self, addon: Any) -> Any:
        self._changed()
        try:
            return super().register(addon)
        finally:
            self._changed()

    def remove(self, addon: Any) -> None:
        self._changed()
        try:
            super().remove(addon)
        finally:
            self._changed()

    def clear(self) -> None:
        self._changed()
        try:
            super().clear()
        finally:
            self._changed()

    def trigger(self, event: hooks.Hook) -> None:
        super().trigger(event)
        if isinstance(event, hooks.ConfigureHook):  # options changed: addons may have turned a feature on or off
            self._changed()

    def handlers(self, name: str) -> tuple[Group, ...]:
        """The handlers of hook `name`, grouped by top-level addon, in chain order."""
        found = self._handlers.get(name)
        if found is None:
            groups = []
            for top in self.chain:
                group = []
                for a in addonmanager.traverse([top]):
                    func = getattr(a, name, None)
                    if not func or isinstance(func, types.ModuleType):
                        continue  # a module imported under a hook's name (`from mitmproxy import log`) is no handler
                    if _idle(a, name):
                        continue
                    group.append(func if callable(func) else _not_callable(name, a))
                if group:
                    groups.append(tuple(group))
            found = self._handlers[name] = tuple(groups)
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        groups = self._handlers.get(event.name)
        if groups is None:
            groups = self.handlers(event.name)
        if not groups:
            return
        args = hook_args(event)
        for group in groups:
            try:
                for func in group:
                    res = func(*args)
                    if res is not None and inspect.isawaitable(res):
                        await res
            except (exceptions.AddonHalt, exceptions.OptionsError) as e:
                if isinstance(e, exceptions.AddonHalt):
                    return
                raise
            except Exception:
                etype, value, tb = sys.exc_info()
                assert etype and value
                logger.error(f"Addon error: {value}", exc_info=(etype, value, tb))

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        if self.handlers("update"):
            message = hook_args(event)[0]
            if isinstance(message, flow.Flow):
                await self.trigger_event(hooks.UpdateHook([message]))


class GatewayMaster(DumpMaster):
    """mitmdump's master (same addons, options and commands) with `FastAddonManager`."""

    def __init__(self, options: Any, loop: Any = None, with_termlog: bool = True, with_dumper: bool = True) -> None:
        super().__init__(options, loop=loop, with_termlog=with_termlog, with_dumper=with_dumper)
        # Master.__init__ makes a plain AddonManager and adds the addons at once; FastAddonManager adds no state
        # but its table, so the manager becomes one in place (the table is built at the first hook).
        self.addons.__class__ = FastAddonManager
        self.addons._changed()  # type: ignore[attr-defined]


def run_gateway(argv: Sequence[str]) -> None:
    """mitmproxy's `mitmdump(argv)` with `GatewayMaster`."""
    from mitmproxy.tools import cmdline
    from mitmproxy.tools.main import run

    def extra(args: Any) -> dict:
        if args.filter_args:
            v = " ".join(args.filter_args)
            return dict(save_stream_filter=v, readfile_filter=v, dumper_filter=v)
        return {}

    run(GatewayMaster, cmdline.mitmdump, argv, extra)


