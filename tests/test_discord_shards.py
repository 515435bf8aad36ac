"""Discord sharding: replicas that each run their share of shards, against the fake Discord's routing."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack

import pytest
from fake_discord import FakeDiscord, shard_of, start_discord
from test_discord_run import botkit_run, environment, write_config

from botkit.errors import ConfigError

TOKEN_VARIABLE = "BOTKIT_ADAPTERS__DISCORD__TOKEN"
COMMANDS = "/applications/{application}/commands"


@pytest.fixture
async def discord(make_bot, monkeypatch):
    """The fake Discord with a guild on each of two shards, and the bot's token in the environment."""
    async with FakeDiscord() as fake:
        monkeypatch.setenv(TOKEN_VARIABLE, fake.token)
        fake.zero, fake.zero_channel = fake.add_guild("Shard zero", shard=(0, 2))
        fake.one, fake.one_channel = fake.add_guild("Shard one", shard=(1, 2))
        yield fake


def texts(discord: FakeDiscord, channel: str) -> list[str]:
    return [message["content"] for message in discord.bot_messages(channel)]


def replica(make_bot, discord: FakeDiscord, name: str, **adapter_keys):
    """One replica's bot and Discord adapter; its scripted model always answers with ``name``."""
    config = {"backend": {"type": "scripted", "default_reply": name}}
    return start_discord(make_bot, discord, config=config, edit_interval=0.1, **adapter_keys)


async def test_each_replica_answers_its_shards_guilds_once_and_shard_0_the_dms(make_bot, discord, caplog):
    caplog.set_level(logging.INFO, logger="botkit.adapters.discord")
    async with AsyncExitStack() as stack:
        bot0, adapter0 = await stack.enter_async_context(
            replica(make_bot, discord, "replica 0", shard_count=2, shard_ids=[0])
        )
        bot1, adapter1 = await stack.enter_async_context(
            replica(make_bot, discord, "replica 1", shard_count=2, shard_ids=[1])
        )
        assert sorted(discord.identified_shards) == [(0, 2), (1, 2)]
        assert set(adapter0.client.shards) == {0} and set(adapter1.client.shards) == {1}
        await discord.wait_for(lambda: adapter0.is_connected() and adapter1.is_connected(), what="readiness")
        on_shard_1 = {int(guild) for guild in discord.guilds if shard_of(guild, 2) == 1}
        assert {guild.id for guild in adapter1.client.guilds} == on_shard_1
        assert int(discord.one) in on_shard_1 and int(discord.zero) not in on_shard_1

        await discord.say("which shard am I on?", channel=discord.zero_channel, mention_bot=True)
        await discord.say("and me?", channel=discord.one_channel, author=discord.bob, mention_bot=True)
        dm = discord.dm_channel(discord.alice)
        await discord.say("a private question", channel=dm)
        await discord.wait_for(
            lambda: (
                texts(discord, discord.zero_channel) == ["replica 0"]
                and texts(discord, discord.one_channel) == ["replica 1"]
                and texts(discord, dm) == ["replica 0"]
            ),
            what="each message answered by the replica of its shard",
        )

    # each asked its model exactly once per message it owns: none was seen by both
    assert sorted(prompt.current.text for prompt in bot0.backend.prompts) == [
        "a private question",
        "which shard am I on?",
    ]
    assert [prompt.current.text for prompt in bot1.backend.prompts] == ["and me?"]
    assert len(discord.bot_messages()) == 3
    assert "discord: this replica runs shard 0 of 2" in caplog.messages
    assert "discord: this replica runs shard 1 of 2" in caplog.messages
    assert any(message.endswith("(shard 1 of 2)") for message in caplog.messages if "connected as" in message)


async def test_slash_commands_are_registered_once_and_answered_by_the_shard_of_the_guild(make_bot, discord):
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(replica(make_bot, discord, "replica 0", shard_count=2, shard_ids=[0]))
        bot1, _ = await stack.enter_async_context(
            replica(make_bot, discord, "replica 1", shard_count=2, shard_ids=[1])
        )
        await discord.wait_for(lambda: "global" in discord.commands, what="the slash commands")
        token = await discord.slash("ask", {"question": "who answers?"}, channel=discord.one_channel)
        await discord.wait_for(
            lambda: (
                [discord.messages[i]["content"] for i in discord.interactions[token]["messages"]]
                == ["replica 1"]
            ),
            what="the answer of the replica of shard 1",
        )
    assert [prompt.current.text for prompt in bot1.backend.prompts] == ["who answers?"]
    # only the replica of shard 0 registers the commands: the others would only repeat it
    assert len(discord.calls_to("PUT", COMMANDS)) == 1


async def test_readiness_covers_every_shard_of_the_replica_and_a_dropped_shard_resumes(
    make_bot, discord, monkeypatch
):
    import discord as discord_py

    async def identify_at_once(self, shard_id, *, initial=False):
        pass  # discord.py spaces IDENTIFYs 5 s apart for Discord's limit; the fake has none

    monkeypatch.setattr(discord_py.AutoShardedClient, "before_identify_hook", identify_at_once)
    async with replica(make_bot, discord, "both", shard_count=2) as (bot, adapter):
        assert sorted(discord.identified_shards) == [(0, 2), (1, 2)]
        await discord.wait_for(adapter.is_connected, what="readiness")
        assert adapter.client.latency == adapter.client.latency  # a number: heartbeats of both shards

        discord.hold_connections()
        await discord.drop_connection(shard=1)
        await discord.wait_for(lambda: not adapter.is_connected(), what="not ready with shard 1 down")
        # delivered while shard 1 is down: Discord keeps it for that shard's resumed session
        await discord.say("are you there?", channel=discord.one_channel, mention_bot=True)
        discord.let_connections_in()
        await discord.wait_for(lambda: discord.resumes, what="shard 1's RESUME")
        await discord.wait_for(adapter.is_connected, what="ready again")
        await discord.wait_for(lambda: texts(discord, discord.one_channel) == ["both"], what="the answer")

    assert discord.identifies == 2, "shard 1 resumed its session; nothing identified again"
    assert discord.resumes[0]["session_id"] == discord.live[1].session_id
    assert [prompt.current.text for prompt in bot.backend.prompts] == ["are you there?"]


def test_guilds_are_routed_by_discords_rule():
    assert shard_of(0, 2) == 0
    assert shard_of(1 << 22, 2) == 1
    assert shard_of((5 << 22) + 12345, 4) == 1  # the low 22 bits (worker, process, increment) do not count
    assert shard_of(175928847299117063, 16) == (175928847299117063 >> 22) % 16


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ({"shard_ids": [0]}, r"\[adapters\.discord\] shard_ids: .*needs shard_count"),
        ({"shard_count": 2, "shard_ids": [2]}, r"shard_ids: .*shard 2 does not exist: .* 0\.\.1"),
        ({"shard_count": 3, "shard_ids": [1, 0, 1]}, r"shard_ids: .*lists shard 1 more than once"),
        ({"shard_count": 2, "shard_ids": []}, r"shard_ids: .*is empty"),
        ({"shard_count": 0}, r"\[adapters\.discord\] shard_count: .*greater than or equal to 1"),
    ],
)
async def test_bad_shard_settings_name_the_key(make_bot, discord, keys, error):
    async with make_bot({"adapters": {"discord": discord.adapter_config(**keys)}}) as bot:
        with pytest.raises(ConfigError, match=error):
            bot.adapter_settings("discord")


async def test_without_shard_count_it_stays_one_unsharded_connection(make_bot, discord):
    async with replica(make_bot, discord, "alone") as (_bot, adapter):
        assert type(adapter.client).__name__ == "Client"
        await discord.say("hello", channel=discord.one_channel, mention_bot=True)
        await discord.wait_for(lambda: texts(discord, discord.one_channel) == ["alone"], what="the answer")
    assert discord.identified_shards == [(0, 1)]


async def test_a_replica_takes_its_shard_ids_from_the_environment(make_bot, discord, monkeypatch):
    monkeypatch.setenv("BOTKIT_ADAPTERS__DISCORD__SHARD_IDS", "[1]")
    async with make_bot({"adapters": {"discord": discord.adapter_config(shard_count=2)}}) as bot:
        settings = bot.adapter_settings("discord")
    assert (settings.shard_count, settings.shard_ids, settings.own_shards) == (2, [1], [1])


async def test_two_botkit_run_replicas_split_the_shards(discord, tmp_path):
    processes = []
    try:
        for shard_id in (0, 1):
            folder = tmp_path / f"replica{shard_id}"
            folder.mkdir()
            config = write_config(folder, discord)
            with config.open("a", encoding="utf-8") as file:
                # [adapters.discord] is the file's last table
                file.write('shard_count = 2\n[logging]\nlevel = "INFO"\n')
            env = {**environment(discord.token), "BOTKIT_ADAPTERS__DISCORD__SHARD_IDS": f"[{shard_id}]"}
            processes.append(await botkit_run(config, env))
        await discord.wait_for(lambda: len(discord.live) == 2, timeout=60, what="both replicas' shards")
        await discord.say("hello zero", channel=discord.zero_channel, mention_bot=True)
        await discord.say("hello one", channel=discord.one_channel, mention_bot=True)
        await discord.wait_for(
            lambda: (
                texts(discord, discord.zero_channel) == ["hi there"]
                and texts(discord, discord.one_channel) == ["hi there"]
            ),
            timeout=30,
            what="an answer in each guild",
        )
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        outputs = [await asyncio.wait_for(process.communicate(), 60) for process in processes]
    assert sorted(discord.identified_shards) == [(0, 2), (1, 2)]
    assert len(discord.bot_messages()) == 2
    for shard_id, (process, (stdout, stderr)) in enumerate(zip(processes, outputs, strict=True)):
        output = stdout.decode() + stderr.decode()
        assert process.returncode == 0, output
        assert f"this replica runs shard {shard_id} of 2" in output
        assert "Traceback" not in output
