"""Bridging a blocking generator on a worker thread into asyncio."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from botkit.streaming import iterate_in_thread
from botkit.testing import WAIT_TIMEOUT


@pytest.fixture
def worker():
    executor = ThreadPoolExecutor(max_workers=1)
    yield executor
    executor.shutdown(wait=True)


async def test_items_arrive_in_order_off_the_event_loop(worker):
    loop_thread = threading.get_ident()
    threads = set()

    def produce():
        for i in range(5):
            threads.add(threading.get_ident())
            yield i

    items = [item async for item in iterate_in_thread(produce, threading.Event(), worker)]
    assert items == [0, 1, 2, 3, 4]
    assert loop_thread not in threads


async def test_errors_in_the_worker_reach_the_consumer(worker):
    def produce():
        yield 1
        raise ValueError("engine failed")

    got = []
    with pytest.raises(ValueError, match="engine failed"):
        async for item in iterate_in_thread(produce, threading.Event(), worker):
            got.append(item)
    assert got == [1]


async def test_cancel_stops_the_worker_and_closes_the_generator(worker):
    closed = threading.Event()
    cancel = threading.Event()
    taken = threading.Semaphore(0)

    def produce():
        try:
            for i in range(10_000):
                yield i
                taken.acquire(timeout=WAIT_TIMEOUT)  # in step with the consumer: it cannot race ahead
        finally:
            closed.set()

    got = []
    async for item in iterate_in_thread(produce, cancel, worker):
        got.append(item)
        if item == 3:
            cancel.set()
        taken.release()
    # It stops after the item during which cancel was set: 3, or 4 if it was already under way.
    assert got in ([0, 1, 2, 3], [0, 1, 2, 3, 4])
    assert closed.is_set()


class SlowToStop:
    """A model that, told to stop, waits in its clean-up until the test lets it finish."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.may_finish = threading.Event()
        self.finished = threading.Event()

    def produce(self):
        try:
            for _ in range(10_000):
                yield "x"
        finally:
            self.stopping.set()
            self.may_finish.wait(WAIT_TIMEOUT)
            self.finished.set()

    async def stuck_in_clean_up(self, leaving: asyncio.Future) -> None:
        """Wait until the model is in its clean-up; ``leaving`` must not be done while it is."""
        try:
            assert await asyncio.to_thread(self.stopping.wait, WAIT_TIMEOUT), "the model was never told to stop"
            await asyncio.sleep(0)  # one more turn of the loop, in which ``leaving`` could wrongly finish
            assert not leaving.done(), "left before the worker finished"
        finally:
            self.may_finish.set()


async def test_leaving_early_waits_for_the_worker_to_finish(worker):
    model = SlowToStop()
    stream = iterate_in_thread(model.produce, threading.Event(), worker)
    async for _ in stream:
        break
    closing = asyncio.ensure_future(stream.aclose())
    await model.stuck_in_clean_up(closing)
    await closing
    assert model.finished.is_set()


async def test_task_cancellation_still_waits_for_the_worker(worker):
    model = SlowToStop()
    first = asyncio.Event()

    async def consume():
        async for _ in iterate_in_thread(model.produce, threading.Event(), worker):
            first.set()

    task = asyncio.ensure_future(consume())
    await first.wait()
    task.cancel()
    await model.stuck_in_clean_up(task)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert model.finished.is_set()
