"""Bridge a blocking iterator (a model generating on a worker thread) into asyncio."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


async def iterate_in_thread(
    produce: Callable[[], Iterator[T]], cancel: threading.Event, executor: Executor | None
) -> AsyncIterator[T]:
    """Run ``produce()`` on ``executor`` and yield its items on the event loop.

    The worker stops after the item during which ``cancel`` was set, or as soon as
    the consumer stops iterating. Leaving this generator, for whatever reason,
    waits for the worker to finish, so a model is never used by two threads.
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def post(item: object) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop closed under us: nobody is listening
            stop.set()

    def work() -> None:
        iterator = produce()
        try:
            for item in iterator:
                post(item)
                if cancel.is_set() or stop.is_set():
                    break
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            post(_Raised(error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            post(_DONE)

    worker = loop.run_in_executor(executor, work)
    try:
        while True:
            item = await items.get()
            if item is _DONE:
                break
            if isinstance(item, _Raised):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        cancelled = False
        while not worker.done():
            try:
                await asyncio.shield(worker)
            except asyncio.CancelledError:
                # Cancelled while waiting: still do not return before the thread is done.
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
