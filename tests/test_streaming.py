"""Bridging a blocking generator on a worker thread into asyncio."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from botkit.streaming import iterate_in_thread


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

    def produce():
        try:
            for i in range(10_000):
                time.sleep(0.001)
                yield i
        finally:
            closed.set()

    got = []
    async for item in iterate_in_thread(produce, cancel, worker):
        got.append(item)
        if item == 3:
            cancel.set()
    assert got[:4] == [0, 1, 2, 3] and len(got) < 10
    assert closed.is_set()


async def test_leaving_early_waits_for_the_worker_to_finish(worker):
    finished = threading.Event()

    def produce():
        try:
            while True:
                time.sleep(0.005)
                yield "x"
        finally:
            time.sleep(0.05)  # a model that takes a moment to stop
            finished.set()

    stream = iterate_in_thread(produce, threading.Event(), worker)
    async for _ in stream:
        break
    await stream.aclose()
    assert finished.is_set()


async def test_task_cancellation_still_waits_for_the_worker(worker):
    finished = threading.Event()

    def produce():
        try:
            while True:
                time.sleep(0.005)
                yield "x"
        finally:
            finished.set()

    async def consume():
        async for _ in iterate_in_thread(produce, threading.Event(), worker):
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()
