"""The Discord adapter: the real discord.py client against the fake Discord in fake_discord.py."""

from __future__ import annotations

import asyncio
import sys

import pytest
from fake_discord import EPHEMERAL, SUPPRESS_EMBEDS, FakeDiscord, start_discord

from botkit import hookimpl
from botkit.errors import ConfigError, PlatformError
from botkit.testing import eventually

TOKEN_VARIABLE = "BOTKIT_ADAPTERS__DISCORD__TOKEN"


@pytest.fixture
async def discord(make_bot, monkeypatch):
    """The fake Discord, with the bot's token in the environment (make_bot clears BOTKIT_* first)."""
    async with FakeDiscord() as fake:
        monkeypatch.setenv(TOKEN_VARIABLE, fake.token)
        yield fake


class Recorder:
    """A plugin that keeps what the adapter hands to the bot besides messages, and the replies delivered."""

    def __init__(self) -> None:
        self.reactions: list = []
        self.changes: list = []
        self.replies: list = []

    @hookimpl
    def botkit_reaction(self, reaction):
        self.reactions.append(reaction)

    @hookimpl
    def botkit_message_changed(self, change):
        self.changes.append(change)

    @hookimpl
    def botkit_after_reply(self, message, reply):
        self.replies.append((message, reply))


def texts(discord: FakeDiscord, channel: str | None = None) -> list[str]:
    return [message["content"] for message in discord.bot_messages(channel)]


def sent_bodies(discord: FakeDiscord) -> list[dict]:
    """Every message body the bot sent or edited, in order."""
    routes = {
        ("POST", "/channels/{channel}/messages"),
        ("PATCH", "/channels/{channel}/messages/{message}"),
        ("POST", "/webhooks/{application}/{token}"),
        ("PATCH", "/webhooks/{application}/{token}/messages/{message}"),
    }
    return [call.body for call in discord.calls if (call.method, call.route) in routes and call.status == 200]


def pings_nobody(body: dict) -> bool:
    """Discord's ``allowed_mentions`` that notify no one, whatever the content says."""
    allowed = body.get("allowed_mentions")
    return (
        allowed is not None
        and allowed.get("parse") == []
        and not allowed.get("users")
        and not allowed.get("roles")
        and not allowed.get("replied_user", False)
    )


async def test_a_mention_is_answered_by_a_streamed_reply(make_bot, discord):
    parts = ["Plants grow by ", "turning light water and air into sugar ", "through photosynthesis every day"]
    answer = "".join(parts)
    async with start_discord(make_bot, discord, edit_interval=0.1) as (bot, _adapter):
        first, second = bot.backend.say_in_parts(*parts)
        asked = await discord.say("how do plants grow?", mention_bot=True)
        await discord.wait_for(lambda: texts(discord) == [parts[0].strip()], what="the first part")
        first.open()
        await discord.wait_for(lambda: texts(discord) == [(parts[0] + parts[1]).strip()], what="two parts")
        second.open()
        await discord.wait_for(lambda: texts(discord) == [answer], what="the final text")

    assert bot.backend.prompts[0].current.text == "how do plants grow?"  # the mention itself is dropped
    assert discord.typing == [discord.general], "typing shows while the model is asked"
    posts = discord.calls_to("POST", "/channels/{channel}/messages")
    assert len(posts) == 1
    assert str(posts[0].body["message_reference"]["message_id"]) == asked["id"]
    assert posts[0].body["flags"] & SUPPRESS_EMBEDS, "links in replies do not embed"
    edits = [
        call.body["content"] for call in discord.calls_to("PATCH", "/channels/{channel}/messages/{message}")
    ]
    assert len(edits) >= 2, "the reply grows by edits while the model writes"
    assert edits[-1] == answer
    assert all(answer.startswith(text) for text in [posts[0].body["content"], *edits])
    assert all(pings_nobody(body) for body in sent_bodies(discord))


async def test_dms_and_replies_are_answered_other_messages_are_not(make_bot, discord):
    async with start_discord(make_bot, discord) as (bot, _adapter):
        bot.backend.say("Hi in a DM.")
        dm = discord.dm_channel(discord.alice)
        await discord.say("hello bot", channel=dm)
        await discord.wait_for(lambda: texts(discord, dm) == ["Hi in a DM."], what="the DM answer")

        bot.backend.say("First answer.")
        await discord.say("what is 2+2?", mention_bot=True)
        await discord.wait_for(lambda: texts(discord, discord.general) == ["First answer."])
        first = discord.bot_messages(discord.general)[0]

        # not addressed to the bot: a plain message, another bot's mention, the bot's own message
        await discord.say("just chatting among us", author=discord.bob)
        await discord.say("beep", author=discord.other_bot, mention_bot=True)
        bot.backend.say("Replying to your reply.")
        await discord.say("why?", reply_to=first["id"])  # a reply to the bot's message needs no mention
        # The messages to leave unanswered came first: one answered would have taken this reply.
        await discord.wait_for(lambda: texts(discord, discord.general)[1:] == ["Replying to your reply."])

    assert texts(discord, discord.general) == ["First answer.", "Replying to your reply."]
    asked = [prompt.current.text for prompt in bot.backend.prompts]
    assert asked == ["hello bot", "what is 2+2?", "why?"]


async def test_dm_and_channel_messages_become_botkit_messages(make_bot, discord):
    recorder = Recorder()
    async with start_discord(make_bot, discord, plugins={"recorder": recorder}) as (bot, _adapter):
        dm = discord.dm_channel(discord.bob)
        await discord.say("in private", author=discord.bob, channel=dm)
        await discord.say(f"ask <@{discord.alice['id']}> about it", author=discord.bob, mention_bot=True)
        await discord.wait_for(lambda: len(recorder.replies) == 2)

    # Two conversations: either may be answered first.
    by_place = {message.is_dm: message for message, _ in recorder.replies}
    private, public = by_place[True], by_place[False]
    assert (private.platform, private.is_dm, private.channel_id) == ("discord", True, dm)
    assert private.author.id == discord.bob["id"] and private.author.name == "Bob"
    assert (public.is_dm, public.channel_id, public.thread_id) == (False, discord.general, None)
    assert public.author.roles == (discord.moderator_role["id"],)
    assert public.text == "ask @Alice about it"


async def test_a_long_reply_is_split_into_messages_of_at_most_2000_characters(make_bot, discord):
    paragraph = " ".join(f"lengthyword{i:03d}" for i in range(100))
    answer = "\n\n".join([paragraph] * 3)  # 300 words, about 4,500 characters
    recorder = Recorder()
    async with start_discord(make_bot, discord, plugins={"recorder": recorder}) as (bot, _adapter):
        bot.backend.say(answer)
        await discord.say("tell me everything", mention_bot=True)
        await discord.wait_for(lambda: recorder.replies, what="the reply")

    parts = texts(discord)
    assert len(parts) == 3
    assert all(len(part) <= 2000 for part in parts)
    assert " ".join(parts).split() == answer.split()
    ids = [message["id"] for message in discord.bot_messages()]
    assert list(recorder.replies[0][1].platform_message_ids) == ids


async def test_a_thread_is_opened_per_conversation_and_followed_without_mentions(make_bot, discord):
    config = {"bot": {"conversation_scope": "thread"}}
    async with start_discord(make_bot, discord, config, open_threads=True) as (bot, _adapter):
        bot.backend.say("Let us talk about tea.")
        asked = await discord.say("can we talk about tea?", mention_bot=True)
        thread = asked["id"]  # a thread started from a message has the message's id
        await discord.wait_for(lambda: texts(discord, thread) == ["Let us talk about tea."])
        bot.backend.say("Green tea, then.")
        await discord.say("which one is best?", channel=thread)  # no mention in the thread
        await discord.wait_for(
            lambda: texts(discord, thread) == ["Let us talk about tea.", "Green tea, then."]
        )

    started = discord.calls_to("POST", "/channels/{channel}/messages/{message}/threads")
    assert len(started) == 1 and started[0].body["name"] == "can we talk about tea?"
    assert texts(discord, discord.general) == []
    second = bot.backend.prompts[1]
    assert [turn.text for turn in second.history] == ["can we talk about tea?", "Let us talk about tea."]


async def test_in_a_users_thread_it_keeps_answering_once_mentioned(make_bot, discord):
    async with start_discord(make_bot, discord) as (bot, _adapter):
        quiet = await discord.open_thread("not for the bot")
        await discord.say("nobody asked the bot here", channel=quiet)
        thread = await discord.open_thread("planning")
        bot.backend.say("Sure.")
        await discord.say("help us plan", channel=thread, mention_bot=True)
        await discord.wait_for(lambda: texts(discord, thread) == ["Sure."])
        bot.backend.say("Then Tuesday.")
        await discord.say("and the date?", channel=thread)
        await discord.wait_for(lambda: texts(discord, thread) == ["Sure.", "Then Tuesday."])
    assert texts(discord, quiet) == []


async def test_following_threads_can_be_switched_off(make_bot, discord):
    async with start_discord(make_bot, discord, follow_threads=False) as (bot, _adapter):
        thread = await discord.open_thread("planning")
        bot.backend.say("Sure.")
        await discord.say("help us plan", channel=thread, mention_bot=True)
        await discord.wait_for(lambda: texts(discord, thread) == ["Sure."])
        await discord.say("and the date?", channel=thread)
        bot.backend.say("Still here.")
        await discord.say("are you there?", channel=thread, mention_bot=True)
        # Had the unmentioned message been answered, it would have come first, with this reply.
        await discord.wait_for(lambda: texts(discord, thread)[1:] == ["Still here."])
    assert texts(discord, thread) == ["Sure.", "Still here."]
    assert [prompt.current.text for prompt in bot.backend.prompts] == ["help us plan", "are you there?"]


async def test_slash_commands_are_deferred_at_once_and_answered(make_bot, discord):
    async with start_discord(make_bot, discord, edit_interval=0.1) as (bot, _adapter):
        synced = {command["name"]: command for command in discord.commands["global"]}
        assert {"ask", "help", "reset", "stop"} <= set(synced)
        assert synced["ask"]["options"][0]["name"] == "question"

        (rest,) = bot.backend.say_in_parts("The sky is blue ", "because of Rayleigh scattering")
        token = await discord.slash("ask", {"question": "why is the sky blue?"})
        await discord.wait_for(lambda: discord.interactions[token]["deferred"] is not None)
        await discord.wait_for(lambda: discord.interactions[token]["messages"], what="the first words")
        rest.open()
        await discord.wait_for(
            lambda: (
                [discord.messages[i]["content"] for i in discord.interactions[token]["messages"]]
                == ["The sky is blue because of Rayleigh scattering"]
            ),
            what="the streamed answer",
        )
        help_token = await discord.slash("help")
        await discord.wait_for(lambda: discord.interactions[help_token]["messages"])

    assert bot.backend.prompts[0].current.text == "why is the sky blue?"
    assert discord.interactions[token]["deferred"] == {"type": 5}  # "thinking...", acknowledged at once
    assert discord.calls.index(
        discord.calls_to("POST", "/interactions/{interaction}/{token}/callback")[0]
    ) < discord.calls.index(discord.calls_to("POST", "/webhooks/{application}/{token}")[0])
    assert len(discord.calls_to("PATCH", "/webhooks/{application}/{token}/messages/{message}")) >= 1
    answer = discord.messages[discord.interactions[token]["messages"][0]]
    assert answer["flags"] & SUPPRESS_EMBEDS and not answer["flags"] & EPHEMERAL
    assert all(pings_nobody(body) for body in sent_bodies(discord))
    help_text = discord.messages[discord.interactions[help_token]["messages"][0]]["content"]
    assert "/reset" in help_text


async def test_admin_commands_by_slash_are_for_admins_and_answered_privately(make_bot, discord):
    config = {"bot": {"admins": [f"discord:{discord.bob['id']}"]}}
    async with start_discord(make_bot, discord, config) as (_bot, _adapter):
        refused = await discord.slash("status", user=discord.alice)
        await discord.wait_for(lambda: discord.interactions[refused]["messages"])
        allowed = await discord.slash("status", user=discord.bob)
        await discord.wait_for(lambda: discord.interactions[allowed]["messages"])

    def answer(token: str) -> dict:
        return discord.messages[discord.interactions[token]["messages"][0]]

    assert "for admins only" in answer(refused)["content"]
    assert "scripted" in answer(allowed)["content"]
    assert discord.interactions[allowed]["deferred"]["data"]["flags"] & EPHEMERAL
    assert answer(allowed)["flags"] & EPHEMERAL


async def test_reactions_edits_and_deletions_reach_the_plugins(make_bot, discord):
    recorder = Recorder()
    async with start_discord(make_bot, discord, plugins={"recorder": recorder}) as (bot, _adapter):
        bot.backend.say("Paris.")
        asked = await discord.say("capital of France?", mention_bot=True)
        await discord.wait_for(lambda: recorder.replies)
        reply_id = recorder.replies[0][1].platform_message_ids[0]
        await discord.react(reply_id, "👍")
        await discord.react(reply_id, "👍", add=False)
        await discord.react(asked["id"], "👎", user=discord.bob)  # not on the bot's message: no feedback
        await discord.edit_message(asked["id"], f"<@{discord.bot_user['id']}> capital of Italy?")
        await discord.delete_message(asked["id"])
        # The deletion comes last: once it has arrived, so has everything sent before it.
        await discord.wait_for(lambda: len(recorder.changes) == 2)

    added, removed = recorder.reactions
    assert (added.platform, added.message_id, added.emoji, added.added) == ("discord", reply_id, "👍", True)
    assert added.user.id == discord.alice["id"] and added.channel_id == discord.general
    assert (removed.message_id, removed.added) == (reply_id, False)
    edited, deleted = recorder.changes  # the bot's own edits of its reply are not reported
    assert (edited.message_id, edited.text, edited.user.id) == (
        asked["id"],
        "capital of Italy?",
        discord.alice["id"],
    )
    assert (deleted.message_id, deleted.deleted) == (asked["id"], True)


async def test_a_rate_limited_edit_is_waited_out_and_the_final_text_arrives(make_bot, discord):
    answer = "one two three four five six seven eight nine ten"
    async with start_discord(make_bot, discord, edit_interval=0.05) as (bot, _adapter):
        (rest,) = bot.backend.say_in_parts("one two three ", "four five six seven eight nine ten")
        discord.rate_limit_next("PATCH", "/channels/{channel}/messages/{message}", retry_after=0.4)
        await discord.say("count to ten", mention_bot=True)
        await discord.wait_for(lambda: texts(discord), what="the first words")
        rest.open()  # the rest arrives as edits, the first of them refused
        await discord.wait_for(lambda: texts(discord) == [answer], what="the final text")
    statuses = [call.status for call in discord.calls_to("PATCH", "/channels/{channel}/messages/{message}")]
    assert statuses[0] == 429 and statuses[-1] == 200


async def test_model_output_that_mentions_everyone_pings_nobody(make_bot, discord):
    role = discord.moderator_role["id"]
    async with start_discord(make_bot, discord) as (bot, _adapter):
        bot.backend.say(f"@everyone and @here, <@&{role}> and <@{discord.bob['id']}>: look!")
        await discord.say("make an announcement", mention_bot=True)
        await discord.wait_for(lambda: texts(discord))
    content = texts(discord)[0]
    assert "@everyone" not in content and "@here" not in content
    assert f"<@&{role}>" not in content and f"<@{discord.bob['id']}>" not in content
    assert all(pings_nobody(body) for body in sent_bodies(discord))


async def test_gateway_drop_mid_conversation_resumes_and_answers_what_came_meanwhile(make_bot, discord):
    async with start_discord(make_bot, discord, edit_interval=0.1) as (bot, _adapter):
        (rest,) = bot.backend.say_in_parts("a fairly long answer ", "that is still being written when the connection drops")
        await discord.say("first question", mention_bot=True)
        await discord.wait_for(lambda: texts(discord), what="the reply to begin")
        await discord.drop_connection()
        bot.backend.say("Second answer.")
        # delivered while the bot is disconnected: Discord keeps it for the resumed session
        await discord.say("second question", author=discord.bob, mention_bot=True)
        await discord.wait_for(lambda: discord.resumes, what="a RESUME")
        rest.open()
        first = "a fairly long answer that is still being written when the connection drops"
        await discord.wait_for(lambda: texts(discord) == [first, "Second answer."], what="both answers")

    assert discord.identifies == 1, "the session was resumed, not started again"
    assert discord.gateway_urls[-1].startswith("/resume-gateway"), "resumed at READY's resume_gateway_url"
    assert texts(discord)[1] == "Second answer."


async def test_an_event_replayed_on_resume_is_answered_once(make_bot, discord):
    async with start_discord(make_bot, discord) as (bot, _adapter):
        bot.backend.say("Only once.")
        before = discord.current.sequence
        await discord.say("hello?", mention_bot=True)
        await discord.wait_for(lambda: texts(discord) == ["Only once."])
        # the events since the question (it, and the bot's own reply) come again after the resume
        await discord.drop_connection(replay=discord.current.sequence - before)
        await discord.wait_for(lambda: discord.resumes and discord.ready.is_set(), what="a RESUME")
        bot.backend.say("Still here.")
        await discord.say("are you there?", mention_bot=True)
        # The replayed events came before this one: had one been answered, it would have taken this reply.
        await discord.wait_for(lambda: texts(discord)[1:] == ["Still here."], what="the answer after the resume")
    assert discord.replayed >= 2
    assert texts(discord) == ["Only once.", "Still here."]
    assert [prompt.current.text for prompt in bot.backend.prompts] == ["hello?", "are you there?"]


async def test_shutdown_mid_reply_finishes_the_reply_as_stopped(make_bot, discord):
    recorder = Recorder()
    async with start_discord(make_bot, discord, plugins={"recorder": recorder}, edit_interval=0.1) as (
        bot,
        adapter,
    ):
        bot.backend.say_in_parts("w0 w1 w2 ", " ".join(f"w{i}" for i in range(3, 100)))  # held after w2
        await discord.say("talk for a while", mention_bot=True)
        await discord.wait_for(lambda: texts(discord), what="the reply to begin")
        await adapter.close()
        # the reply ended and was delivered before the connection closed
        assert texts(discord)[0].endswith("[stopped]")
        assert recorder.replies[0][1].status == "stopped"
    assert discord.calls[-1].method in ("PATCH", "POST", "DELETE")


async def test_a_missing_token_is_named_and_a_refused_token_is_not_echoed(make_bot, discord, monkeypatch):
    config = {"adapters": {"discord": discord.adapter_config()}}
    monkeypatch.delenv(TOKEN_VARIABLE)
    async with make_bot(config) as bot:
        with pytest.raises(ConfigError, match=TOKEN_VARIABLE):
            bot.adapter_settings("discord")
        secret = "MTIz.not-the-right-token.abc"
        monkeypatch.setenv(TOKEN_VARIABLE, secret)
    async with make_bot(config) as bot:
        with pytest.raises(PlatformError) as refused:
            await bot.make_adapter("discord").run()
    assert TOKEN_VARIABLE in str(refused.value)
    assert secret not in str(refused.value)


async def test_a_token_in_the_config_file_is_refused(make_bot, discord):
    config = {"adapters": {"discord": {**discord.adapter_config(), "token": "abc.def.ghi"}}}
    async with make_bot(config) as bot:
        with pytest.raises(ConfigError, match="environment") as refused:
            bot.adapter_settings("discord")
    assert "abc.def.ghi" not in str(refused.value)


async def test_the_plugin_loads_without_discord_py_and_says_how_to_install_it(make_bot, discord, monkeypatch):
    monkeypatch.setitem(sys.modules, "discord", None)  # as if discord.py were not installed
    async with make_bot() as bot:
        assert "discord" in bot.registry.adapters
        assert bot.enabled_adapters() == ["console"]  # disabled by default
    async with make_bot({"adapters": {"discord": discord.adapter_config()}}) as bot:
        with pytest.raises(ConfigError, match=r"pip install 'botkit\[discord\]'"):
            bot.adapter_settings("discord")


# -- registering the slash commands --------------------------------------------------------

COMMANDS = "/applications/{application}/commands"


def command_syncs(discord: FakeDiscord) -> list:
    return discord.calls_to("PUT", COMMANDS)


async def test_a_rate_limited_sync_is_a_warning_and_the_bot_answers(make_bot, discord, caplog, tmp_path):
    caplog.set_level("INFO", logger="botkit.adapters.discord")
    for _ in range(5):  # discord.py tries five times, then gives up
        discord.rate_limit_next("PUT", COMMANDS, retry_after=0.01)
    storage = {"storage": {"data_dir": str(tmp_path)}, "backend": {"default_reply": "hi there"}}
    async with start_discord(make_bot, discord, storage) as (_bot, _adapter):
        await eventually(lambda: "could not register the slash commands" in caplog.text, what="the warning")
        await discord.say("hello", mention_bot=True)
        await discord.wait_for(lambda: texts(discord) == ["hi there"], what="the answer")
    assert "global" not in discord.commands
    assert not (tmp_path / "discord-commands.json").exists()  # the next start tries again


async def test_a_server_error_during_the_sync_does_not_hold_up_the_bot(make_bot, discord, tmp_path):
    discord.fail_next("PUT", COMMANDS, 500, times=5)  # discord.py retries 500s for ~25 s, then gives up
    storage = {"storage": {"data_dir": str(tmp_path)}, "backend": {"default_reply": "hi there"}}
    async with start_discord(make_bot, discord, storage) as (_bot, _adapter):
        await discord.say("hello", mention_bot=True)
        await discord.wait_for(lambda: texts(discord) == ["hi there"], what="the answer")
        assert [call.status for call in command_syncs(discord)] == [500]
    assert not (tmp_path / "discord-commands.json").exists()


async def test_unchanged_commands_are_synced_once_and_discord_sync_forces_it(
    make_bot, discord, caplog, tmp_path, write_config
):
    storage = {"storage": {"data_dir": str(tmp_path / "data")}}
    caplog.set_level("INFO", logger="botkit.adapters.discord")
    async with start_discord(make_bot, discord, storage) as (_bot, _adapter):
        await discord.wait_for(lambda: "global" in discord.commands, what="the first sync")
    assert len(command_syncs(discord)) == 1
    caplog.clear()
    async with start_discord(make_bot, discord, storage) as (_bot, _adapter):
        await eventually(lambda: "slash commands unchanged" in caplog.text, what="the skipped sync")
    assert len(command_syncs(discord)) == 1

    import textwrap

    from click.testing import CliRunner

    from botkit.cli import create_cli

    config = write_config(
        textwrap.dedent(
            f"""
            [backend]
            type = "scripted"
            [storage]
            data_dir = "{tmp_path / "data"}"
            [adapters.discord]
            enabled = true
            api_url = "{discord.api_url}"
            gateway_url = "{discord.gateway_url}"
            """
        )
    )
    # in a thread: the command runs its own event loop, and the fake Discord serves on this one
    result = await asyncio.to_thread(
        CliRunner().invoke, create_cli(), ["--config", str(config), "discord", "sync"]
    )
    assert result.exit_code == 0, result.output
    assert "slash commands registered globally" in result.output
    assert len(command_syncs(discord)) == 2
