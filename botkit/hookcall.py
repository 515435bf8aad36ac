"""Calling pluggy hooks from asyncio: await each result, isolate failing plugins.

pluggy calls implementations synchronously and would hand back un-run
coroutines; these helpers call one implementation at a time, await what it
returns, and log (with the plugin's name) and skip an implementation that raises.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pluggy

from botkit.types import Refuse

log = logging.getLogger("botkit.plugins")


def implementations(hook: pluggy.HookCaller) -> list[pluggy.HookImpl]:
    """The hook's implementations in pluggy's call order."""
    # get_hookimpls() lists them in registration order; pluggy calls them reversed.
    return list(reversed(hook.get_hookimpls()))


async def resolve(value: Any) -> Any:
    """Await ``value`` if it is awaitable; the one place botkit awaits hook results."""
    if inspect.isawaitable(value):
        return await value
    return value


async def each_result(hook: pluggy.HookCaller, **kwargs: Any) -> AsyncIterator[tuple[str, Any]]:
    """Yield ``(plugin_name, result)`` for each implementation, in call order.

    Results are awaited; an implementation that raises is logged and skipped.
    The caller may stop iterating early (a chain that was refused).
    """
    for impl in implementations(hook):
        try:
            args = {name: kwargs[name] for name in impl.argnames}
            result = await resolve(impl.function(**args))
        except Exception:
            log.exception("plugin %r raised in %s; skipped", impl.plugin_name, hook.name)
            continue
        yield impl.plugin_name, result


async def call_all(hook: pluggy.HookCaller, **kwargs: Any) -> None:
    """Call and await every implementation; results are ignored."""
    async for _ in each_result(hook, **kwargs):
        pass


async def first_result(hook: pluggy.HookCaller, **kwargs: Any) -> Any:
    """The first non-None result, after awaiting; later implementations are not called."""
    async for _, result in each_result(hook, **kwargs):
        if result is not None:
            return result
    return None


async def run_chain(hook: pluggy.HookCaller, key: str, value: Any, accept: type, **kwargs: Any) -> Any:
    """Pass ``value`` (as argument ``key``) through each implementation in turn.

    ``None`` keeps the value, an instance of ``accept`` replaces it for the next
    implementation, and a ``Refuse`` ends the chain and is returned. Anything
    else is logged as the plugin's mistake and ignored.
    """
    for impl in implementations(hook):
        kwargs[key] = value
        try:
            result = await resolve(impl.function(**{name: kwargs[name] for name in impl.argnames}))
        except Exception:
            log.exception("plugin %r raised in %s; skipped", impl.plugin_name, hook.name)
            continue
        if result is None:
            continue
        if isinstance(result, Refuse):
            return replace(result, plugin=impl.plugin_name)
        if isinstance(result, accept):
            value = result
            continue
        log.error(
            "plugin %r returned %s from %s, expected None, %s or Refuse; ignored",
            impl.plugin_name,
            type(result).__name__,
            hook.name,
            accept.__name__,
        )
    return value


async def call_plugin(hook: pluggy.HookCaller, plugin_name: str, **kwargs: Any) -> None:
    """Call one plugin's implementation of ``hook`` (if it has one); errors are logged."""
    for impl in implementations(hook):
        if impl.plugin_name != plugin_name:
            continue
        try:
            await resolve(impl.function(**{name: kwargs[name] for name in impl.argnames}))
        except Exception:
            log.exception("plugin %r raised in %s", plugin_name, hook.name)
