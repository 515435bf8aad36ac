"""Several `botkit run` replicas serving one Slack app (HTTP mode) on PostgreSQL and Redis.

The test is the load balancer: it posts each Slack event to one replica and Slack's retry of
it to another, at the same time. The model is an OpenAI-compatible stub that records every
prompt, as vLLM or llama-server would be reached by replicas in production.
"""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_slack import FakeSlack
from openai_server import StubServer
from servers import free_port
from test_slack_run import botkit_run

from botkit.testing import WAIT_TIMEOUT, eventually

REPLY = ("Noted", " that.")


@dataclass
class Replica:
    name: str
    port: int
    process: asyncio.subprocess.Process

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack/events"


def replica_config(
    folder: Path, *, slack: FakeSlack, stub: StubServer, db_url: str, redis_url: str, port: int, ttl: float
) -> Path:
    folder.mkdir()
    config = folder / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [bot]
            name = "testbot"
            control_socket = "off"
            [backend]
            type = "openai"
            base_url = "{stub.base_url}"
            retries = 0
            [storage]
            url = "{db_url}"
            data_dir = "{folder / "data"}"
            [cluster]
            enabled = true
            redis_url = "{redis_url}"
            lock_ttl_s = {ttl}
            [plugins.ratelimit]
            enabled = false
            [adapters.console]
            enabled = false
            [adapters.slack]
            enabled = true
            mode = "http"
            host = "127.0.0.1"
            port = {port}
            api_url = "{slack.api_url}"
            edit_interval = 0.1
            """
        ),
        encoding="utf-8",
    )
    return config


async def start_replicas(
    count: int, tmp_path: Path, slack: FakeSlack, stub: StubServer, db_url: str, redis_url: str, ttl: float = 30.0
) -> list[Replica]:
    env = {
        **os.environ,
        "BOTKIT_ADAPTERS__SLACK__BOT_TOKEN": slack.bot_token,
        "BOTKIT_ADAPTERS__SLACK__SIGNING_SECRET": slack.signing_secret,
    }
    replicas = []
    for index in range(count):
        port = free_port()
        config = replica_config(
            tmp_path / f"replica{index}",
            slack=slack,
            stub=stub,
            db_url=db_url,
            redis_url=redis_url,
            port=port,
            ttl=ttl,
        )
        process = await botkit_run(config, env)
        replicas.append(Replica(f"replica{index}", port, process))
    for replica in replicas:
        await eventually(lambda r=replica: listening(r), timeout=90, what=f"{replica.name} listening")
    return replicas


async def listening(replica: Replica) -> bool:
    if replica.process.returncode is not None:
        _, stderr = await replica.process.communicate()
        raise AssertionError(f"{replica.name} exited: {stderr.decode()[-3000:]}")
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", replica.port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def stop(replicas: list[Replica]) -> dict[str, tuple[int | None, str]]:
    """SIGTERM the live ones; each one's exit status and output."""
    for replica in replicas:
        if replica.process.returncode is None:
            replica.process.send_signal(signal.SIGTERM)
    ended = {}
    for replica in replicas:
        stdout, stderr = await asyncio.wait_for(replica.process.communicate(), 60)
        ended[replica.name] = (replica.process.returncode, stdout.decode() + stderr.decode())
    return ended


def bot_replies(slack: FakeSlack, channel: str) -> list[str]:
    return [m["text"] for m in slack.bot_messages(channel)]


def user_texts(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def assistant_texts(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "assistant"]


@pytest.fixture
def db_url(postgres) -> str:
    return postgres.create_database(f"r{uuid.uuid4().hex[:12]}")


@pytest.fixture
def stub():
    with StubServer(default_reply=REPLY) as server:
        yield server


async def test_three_replicas_answer_each_event_once_in_order_with_the_whole_history(
    tmp_path, db_url, redis_server, stub
):
    conversations, turns = 4, 4
    async with FakeSlack() as slack:
        for user in range(conversations):
            slack.add_user(f"U{user}", f"user{user}")
        replicas = await start_replicas(3, tmp_path, slack, stub, db_url, redis_server.url)
        try:
            for turn in range(turns):
                posts = []
                for user in range(conversations):
                    event = slack.direct_message(f"D{user}", f"turn {turn} of user {user}", user=f"U{user}")
                    event_id = f"Ev{turn}x{user}"
                    # Turn by turn each conversation moves to the next replica (and so comes back to
                    # one that answered it before, whose cache would be stale); Slack's retry of the
                    # same event goes to yet another one, at the same time.
                    first = replicas[(user + turn) % 3]
                    retry = replicas[(user + turn + 1) % 3]
                    posts.append(slack.post_event(first.events_url, event, event_id=event_id))
                    posts.append(slack.post_event(retry.events_url, event, event_id=event_id, retry_num=1))
                assert [status for status, _ in await asyncio.gather(*posts)] == [200] * 2 * conversations
                await slack.wait_for(
                    lambda t=turn: all(
                        bot_replies(slack, f"D{user}") == ["Noted that."] * (t + 1)
                        for user in range(conversations)
                    ),
                    what=f"every conversation's answer to turn {turn}",
                )
        finally:
            ended = await stop(replicas)

    for name, (status, output) in ended.items():
        assert status == 0, f"{name}: {output[-3000:]}"
        assert "Traceback" not in output, f"{name}: {output[-3000:]}"
        assert slack.bot_token not in output and slack.signing_secret not in output
    prompts = [request.body for request in stub.requests if request.path.endswith("/chat/completions")]
    # Each event reached two replicas; the model was asked once per event.
    assert len(prompts) == conversations * turns
    for user in range(conversations):
        asked = [body for body in prompts if user_texts(body)[-1].endswith(f"of user {user}")]
        # In message order, each prompt holding every earlier turn and answer, whichever replica wrote them.
        assert [user_texts(body) for body in asked] == [
            [f"turn {t} of user {user}" for t in range(turn + 1)] for turn in range(turns)
        ]
        assert [assistant_texts(body) for body in asked] == [["Noted that."] * turn for turn in range(turns)]
    assert all(bot_replies(slack, f"D{user}") == ["Noted that."] * turns for user in range(conversations))


async def test_a_replica_killed_mid_reply_leaves_its_conversation_to_the_next_within_lock_ttl_s(
    tmp_path, db_url, redis_server, stub
):
    async with FakeSlack() as slack:
        slack.add_user("U1", "alice")
        killed, survivor = await start_replicas(2, tmp_path, slack, stub, db_url, redis_server.url, ttl=2.0)
        try:
            stub.first_token.clear()  # the model takes its time over the first answer
            first = slack.direct_message("D1", "first question")
            assert (await slack.post_event(killed.events_url, first, event_id="EvK1"))[0] == 200
            await eventually(stub.holding.is_set, what="the first question at the model")
            killed.process.send_signal(signal.SIGKILL)  # mid-reply, holding the conversation's lock
            await killed.process.wait()
            stub.first_token.set()
            second = slack.direct_message("D1", "second question")
            assert (await slack.post_event(survivor.events_url, second, event_id="EvK2"))[0] == 200
            # lock_ttl_s is 2 s; the deadline only leaves room for a busy machine.
            await slack.wait_for(
                lambda: bot_replies(slack, "D1")[-1:] == ["Noted that."], timeout=2.0 + WAIT_TIMEOUT
            )
        finally:
            ended = await stop([killed, survivor])
    assert ended["replica1"][0] == 0, ended["replica1"][1][-3000:]
    assert ended["replica0"][0] == -signal.SIGKILL
    asked = [request.body for request in stub.requests if request.path.endswith("/chat/completions")]
    assert [user_texts(body) for body in asked] == [["first question"], ["second question"]]
    # The first question died with its replica: Slack had its acknowledgement, so it sends no retry.
    assert bot_replies(slack, "D1") == ["Noted that."]

