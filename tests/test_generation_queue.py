"""The generation queue: FIFO slots, places in line, /stop of waiting and running requests."""

from __future__ import annotations

import asyncio

import pytest

from botkit.errors import QueueFull
from botkit.generation import GenerationCancelled, GenerationQueue, Ticket
from botkit.testing import WAIT_TIMEOUT, eventually


async def test_first_request_runs_at_once_and_others_wait_in_order():
    queue = GenerationQueue(concurrency=1, limit=10)
    first, second, third = Ticket("a"), Ticket("b"), Ticket("c")
    assert queue.enqueue(first) == 0
    assert queue.enqueue(second) == 1
    assert queue.enqueue(third) == 2
    order: list[str] = []

    async def run(ticket: Ticket) -> None:
        await queue.wait_turn(ticket)
        order.append(ticket.owner)
        await asyncio.sleep(0)  # holds the model across a yield: the others must still wait
        queue.release(ticket)

    await asyncio.gather(run(third), run(second), run(first))
    assert order == ["a", "b", "c"]
    assert (queue.running, queue.waiting) == (0, 0)


async def test_concurrency_two_runs_two_at_once():
    queue = GenerationQueue(concurrency=2, limit=10)
    tickets = [Ticket(str(i)) for i in range(3)]
    assert [queue.enqueue(t) for t in tickets] == [0, 0, 1]
    assert queue.running == 2
    queue.release(tickets[0])
    await queue.wait_turn(tickets[2])
    assert queue.running == 2 and tickets[2].active


async def test_limit_refuses_more_waiters():
    queue = GenerationQueue(concurrency=1, limit=1)
    queue.enqueue(Ticket("a"))
    queue.enqueue(Ticket("b"))
    with pytest.raises(QueueFull):
        queue.enqueue(Ticket("c"))


async def test_cancel_removes_waiting_and_signals_running():
    queue = GenerationQueue(concurrency=1, limit=10)
    running, waiting, other = Ticket("alice"), Ticket("alice"), Ticket("bob")
    for ticket in (running, waiting, other):
        queue.enqueue(ticket)
    assert queue.cancel("alice") == 2
    assert running.cancel.is_set()
    with pytest.raises(GenerationCancelled):
        await queue.wait_turn(waiting)
    queue.release(running)
    await asyncio.wait_for(queue.wait_turn(other), WAIT_TIMEOUT)  # bob moves up, alice's waiter is gone
    assert queue.cancel("nobody") == 0


async def test_a_cancelled_waiting_task_gives_up_its_place():
    queue = GenerationQueue(concurrency=1, limit=10)
    holder, quitter, next_one = Ticket("a"), Ticket("b"), Ticket("c")
    for ticket in (holder, quitter, next_one):
        queue.enqueue(ticket)
    task = asyncio.ensure_future(queue.wait_turn(quitter))
    await asyncio.sleep(0)  # the task starts waiting
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queue.waiting == 1
    queue.release(holder)
    await asyncio.wait_for(queue.wait_turn(next_one), WAIT_TIMEOUT)


def test_concurrency_must_be_positive():
    with pytest.raises(ValueError):
        GenerationQueue(concurrency=0, limit=1)


async def test_waiting_requests_take_the_model_in_arrival_order_not_enqueue_order():
    queue = GenerationQueue(concurrency=1, limit=10)
    running = Ticket("first", order=0)
    assert queue.enqueue(running) == 0
    # The third message was quicker through gates and history loading than the second.
    third, second = Ticket("third", order=2), Ticket("second", order=1)
    assert queue.enqueue(third) == 1
    assert queue.enqueue(second) == 1  # goes ahead of the later arrival
    order: list[str] = []

    async def run(ticket: Ticket) -> None:
        await queue.wait_turn(ticket)
        order.append(ticket.owner)
        queue.release(ticket)

    waiters = [asyncio.ensure_future(run(third)), asyncio.ensure_future(run(second))]
    await asyncio.sleep(0)  # both start waiting
    queue.release(running)
    await asyncio.gather(*waiters)
    assert order == ["second", "third"]


async def test_slow_gates_do_not_let_later_messages_jump_the_queue(make_bot):
    from botkit import hookimpl

    let_through = {f"c{index}": asyncio.Event() for index in range(5)}

    class UnevenGates:
        """Holds each message at its gate until the test lets it through, as uneven I/O would."""

        @hookimpl
        async def botkit_gate(self, message):
            if message.channel_id in let_through:
                await let_through[message.channel_id].wait()

    async with make_bot(plugins={"uneven": UnevenGates()}) as bot:
        model = bot.backend.hold()
        busy, _ = bot.chat.say_nowait("hold the model", channel="busy")
        await model.reached()
        sent = []
        for index in range(5):
            sent.append(bot.chat.say_nowait(f"message {index}", channel=f"c{index}", user=f"u{index}"))
            await asyncio.sleep(0)  # its handling starts: it arrived before the next one
        for index in reversed(range(5)):  # the later a message arrived, the sooner it is through its gate
            let_through[f"c{index}"].set()
            responder = sent[index][1]
            await eventually(lambda responder=responder: responder.sent, what=f"message {index} waits its turn")
        model.open()
        await asyncio.gather(busy, *(task for task, _ in sent))
        answered = [prompt.current.text for prompt in bot.backend.prompts]
        assert answered == ["hold the model"] + [f"message {index}" for index in range(5)]
