"""A history read that the memory writer overlaps counts each stored turn once, deleted messages included."""

from __future__ import annotations

import asyncio

from botkit import Role
from botkit.plugins.memory import memory


async def test_a_write_committed_during_a_read_is_counted_once_after_a_deletion(make_bot):
    async with make_bot() as bot:
        store = memory(bot)
        write_to_database, read_database = store.writer._write, store._load
        release = asyncio.Event()
        commits_during_read = []

        async def held_write(batch):
            await release.wait()  # the exchange stays pending until the read below lets it go
            await write_to_database(batch)

        async def load_while_the_writer_commits(scope_key, limit):
            # Pending when the read starts, committed before the database is read: the race a
            # busy machine meets now and then.
            if store.pending and not release.is_set():
                release.set()
                commits_during_read.append(await store.flush(30))
            return await read_database(scope_key, limit)

        store.writer._write, store._load = held_write, load_while_the_writer_commits
        secret = await bot.chat.say("my password is hunter2", user="ann", dm=True, channel="dm-ann")
        await bot.chat.delete(secret)
        await bot.chat.say("what did I tell you?", user="ann", dm=True, channel="dm-ann")
    assert commits_during_read == [True]
    prompt = bot.backend.prompts[-1]
    assert [t.text for t in prompt.turns if t.role is Role.USER] == ["what did I tell you?"]
    assert len([t for t in prompt.turns if t.role is Role.ASSISTANT]) == 1, "the reply is in history once"
