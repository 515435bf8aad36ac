"""The message pipeline: gates, commands, context, generation, filters, after-hooks, ordering."""

from __future__ import annotations

import asyncio
import logging

import pytest

from botkit import Message, Prompt, Refuse, Reply, ReplyStatus, Role, Turn, hookimpl
from botkit.errors import ConfigError
from botkit.testing import WAIT_TIMEOUT, Gate, eventually


async def test_reply_is_streamed_and_recorded(bot):
    bot.backend.add_reply("Hel", "lo ", "there")
    reply = await bot.chat.say("hi")
    assert reply.updates == ["Hel", "Hello ", "Hello there"]
    assert reply.final == "Hello there"
    assert reply.status is ReplyStatus.COMPLETED
    prompt = bot.backend.prompts[0]
    assert prompt.turns == [Turn(Role.USER, "hi")]
    assert prompt.system == bot.settings.bot.system_prompt


async def test_sampling_parameters_come_from_config(make_bot):
    config = {"backend": {"temperature": 0.2, "top_p": 0.5, "max_tokens": 7, "seed": 42, "stop": ["END"]}}
    async with make_bot(config) as bot:
        await bot.chat.say("hi")
    params = bot.backend.requests[0].params
    assert (params.temperature, params.top_p, params.max_tokens, params.seed) == (0.2, 0.5, 7, 42)
    assert params.stop == ("END",)


@pytest.mark.parametrize(("variant", "ending"), [(None, "### Response:"), ("alpaca-lora", "### Response:\n")])
async def test_alpaca_format_and_variant_from_config(make_bot, variant, ending):
    backend = {"prompt_format": "alpaca"} | ({"alpaca_variant": variant} if variant else {})
    async with make_bot({"backend": backend, "bot": {"system_prompt": ""}}) as bot:
        await bot.chat.say("Name a colour.")
    rendered = bot.backend.requests[0].rendered
    assert rendered.startswith("Below is an instruction that describes a task. Write a response")
    assert rendered.endswith(f"### Instruction:\nName a colour.\n\n{ending}")


async def test_an_unknown_alpaca_variant_is_refused_naming_the_key(make_bot):
    with pytest.raises(ConfigError, match="alpaca_variant"):
        async with make_bot({"backend": {"prompt_format": "alpaca", "alpaca_variant": "alpaca_lora"}}):
            pass


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
async def test_empty_message_is_ignored(bot, text):
    reply = await bot.chat.say(text)
    assert reply.texts == [] and reply.updates == []
    assert bot.backend.requests == []


async def test_too_long_message_is_refused_politely(make_bot):
    async with make_bot({"bot": {"max_message_chars": 100}}) as bot:
        reply = await bot.chat.say("x" * 101)
        assert bot.backend.requests == []
        assert len(reply.sent) == 1 and "too long" in reply.sent[0] and "100" in reply.sent[0]
        ok = await bot.chat.say("x" * 100)
        assert ok.status is ReplyStatus.COMPLETED


async def test_default_limit_is_8000_characters(bot):
    refused = await bot.chat.say("y" * 8001)
    assert "too long" in refused.sent[0] and "8,000" in refused.sent[0]


async def test_gate_can_refuse_with_a_notice_and_later_gates_do_not_run(make_bot):
    seen = []

    class Blocker:
        @hookimpl
        def botkit_gate(self, message):
            if "forbidden" in message.text:
                return Refuse("Not here, please.", reason="test rule")

    class Later:
        @hookimpl(trylast=True)
        async def botkit_gate(self, message):
            seen.append(message.text)

    async with make_bot(plugins={"later": Later(), "blocker": Blocker()}) as bot:
        refused = await bot.chat.say("a forbidden word")
        allowed = await bot.chat.say("fine")
    assert refused.texts == ["Not here, please."]
    assert allowed.status is ReplyStatus.COMPLETED
    assert seen == ["fine"]
    assert [p.current.text for p in bot.backend.prompts] == ["fine"]


async def test_gates_chain_rewrites(make_bot):
    class Upper:
        @hookimpl(tryfirst=True)
        def botkit_gate(self, message):
            return _replace(message, message.text.upper())

    class Exclaim:
        @hookimpl
        async def botkit_gate(self, message):
            return _replace(message, message.text + "!")

    async with make_bot(plugins={"upper": Upper(), "exclaim": Exclaim()}) as bot:
        await bot.chat.say("hello")
    assert bot.backend.prompts[0].current.text == "HELLO!"


async def test_commands_are_read_from_the_gated_text(make_bot):
    class Rewrite:
        @hookimpl
        def botkit_gate(self, message):
            rewritten = {"show me the commands": "/help", "/help": "what is /help?"}
            if message.text in rewritten:
                return _replace(message, rewritten[message.text])

    async with make_bot(plugins={"rewrite": Rewrite()}) as bot:
        into_command = await bot.chat.say("show me the commands")
        out_of_command = await bot.chat.say("/help")
    assert "/help - show the commands you can use" in into_command.sent[0]
    assert out_of_command.sent == [] and out_of_command.status is ReplyStatus.COMPLETED
    assert [p.current.text for p in bot.backend.prompts] == ["what is /help?"]


def _replace(message: Message, text: str) -> Message:
    from dataclasses import replace

    return replace(message, text=text)


async def test_a_raising_plugin_is_logged_by_name_and_the_bot_goes_on(make_bot, caplog):
    class Broken:
        @hookimpl
        def botkit_gate(self, message):
            raise RuntimeError("boom")

        @hookimpl
        async def botkit_filter_reply(self, text):
            raise ValueError("bad filter")

        @hookimpl
        def botkit_after_reply(self, reply):
            raise KeyError("after")

    async with make_bot(plugins={"broken": Broken()}) as bot:
        with caplog.at_level(logging.ERROR, logger="botkit.plugins"):
            reply = await bot.chat.say("still answered?")
    assert reply.final == "Hello from the scripted backend."
    logged = caplog.text
    assert "plugin 'broken' raised in botkit_gate" in logged
    assert "plugin 'broken' raised in botkit_filter_reply" in logged
    assert "plugin 'broken' raised in botkit_after_reply" in logged


async def test_filters_rewrite_streamed_and_final_text(make_bot):
    class Shout:
        @hookimpl
        def botkit_filter_reply(self, text, final):
            return text.upper() + ("." if final else "")

    async with make_bot(plugins={"shout": Shout()}) as bot:
        bot.backend.add_reply("one ", "two")
        reply = await bot.chat.say("hi")
    assert reply.updates == ["ONE ", "ONE TWO"]
    assert reply.final == "ONE TWO."


async def test_a_streamed_reply_is_looked_at_every_stream_interval_not_every_chunk(make_bot):
    looked: list[str] = []

    class Watch:
        @hookimpl
        def botkit_filter_reply(self, text, final):
            if not final:
                looked.append(text)

    async with make_bot({"bot": {"stream_interval": 0.5}}, plugins={"watch": Watch()}) as bot:
        now = 100.0
        bot.pipeline.clock = lambda: now
        first, second, third = bot.backend.say_in_parts("One ", "two ", "three ", "four")
        task, reply = bot.chat.say_nowait("count")
        await first.reached()
        assert reply.updates == ["One "]  # the first text at once
        now = 100.4
        first.open()
        await second.reached()
        assert reply.updates == ["One "]  # "two " came within the interval: it waits for the next look
        now = 100.6
        second.open()
        await third.reached()
        assert reply.updates == ["One ", "One two three "]
        third.open()
        await task
    assert looked == reply.updates
    assert reply.final == "One two three four"  # what no look saw is in the final text


async def test_filter_refusal_stops_generation(make_bot):
    class Stopper:
        @hookimpl
        def botkit_filter_reply(self, text):
            if "secret" in text:
                return Refuse("[reply withheld]", reason="leak")

    after: list[Reply] = []

    class After:
        @hookimpl
        def botkit_after_reply(self, reply):
            after.append(reply)

    async with make_bot(plugins={"stopper": Stopper(), "after": After()}) as bot:
        bot.backend.add_reply("the ", "secret ", "is ", "42")
        reply = await bot.chat.say("tell me")
    assert reply.updates == ["the "]
    assert reply.final == "[reply withheld]" and reply.status is ReplyStatus.BLOCKED
    assert after[0].status is ReplyStatus.BLOCKED and after[0].completion_tokens == 2


async def test_model_output_never_triggers_a_command(bot):
    bot.backend.add_reply("/help")
    reply = await bot.chat.say("say /help")
    assert reply.final == "/help"
    assert reply.sent == []


async def test_after_reply_gets_status_tokens_backend_and_model(make_bot):
    replies: list[tuple[Message, Reply]] = []

    class After:
        @hookimpl
        async def botkit_after_reply(self, message, reply):
            replies.append((message, reply))

    async with make_bot(plugins={"after": After()}) as bot:
        bot.backend.add_reply("a ", "b ", "c")
        await bot.chat.say("count", user="bob")
    message, reply = replies[0]
    assert message.author.id == "bob"
    assert (reply.text, reply.status, reply.backend, reply.model) == (
        "a b c",
        ReplyStatus.COMPLETED,
        "scripted",
        "scripted",
    )
    assert reply.completion_tokens == 3 and reply.prompt_tokens > 0
    assert reply.first_token_s is not None and reply.latency_s >= reply.first_token_s


async def test_backend_failure_apologises_and_the_next_message_is_answered(bot, caplog):
    bot.backend.add_reply("partial ", RuntimeError("engine crashed"))
    with caplog.at_level(logging.ERROR):
        failed = await bot.chat.say("hi")
    assert failed.status is ReplyStatus.FAILED
    assert failed.final.startswith("partial") and "something went wrong" in failed.final
    assert "backend 'default' (scripted) failed" in caplog.text
    again = await bot.chat.say("hi again")
    assert again.status is ReplyStatus.COMPLETED


async def test_timeout_ends_a_runaway_generation(make_bot):
    async with make_bot({"backend": {"timeout": 1}}) as bot:
        bot.backend.add_reply("tok ", "tok ", Gate(), *["tok "] * 100)  # a gate nobody opens
        reply = await bot.chat.say("go on forever")
    assert reply.status is ReplyStatus.TIMED_OUT
    assert "[stopped: the answer took longer than 1 s]" in reply.final
    assert reply.final.count("tok") == 2


async def test_empty_model_answer_is_said_so(bot):
    bot.backend.add_reply("")
    reply = await bot.chat.say("hi")
    assert reply.final == "(the model gave an empty answer)"


async def test_sync_and_async_hooks_both_work_in_context(make_bot):
    class History:
        @hookimpl
        def botkit_prepare_context(self, prompt):
            prompt.turns[:-1] = [Turn(Role.USER, "earlier"), Turn(Role.ASSISTANT, "reply")]

    class System:
        @hookimpl
        async def botkit_prepare_context(self, message, prompt):
            await asyncio.sleep(0)
            prompt.system = f"Talking in #{message.channel_id}."

    async with make_bot(plugins={"history": History(), "system": System()}) as bot:
        await bot.chat.say("now", channel="random")
    prompt = bot.backend.prompts[0]
    assert prompt.system == "Talking in #random."
    assert [t.text for t in prompt.turns] == ["earlier", "reply", "now"]


async def test_oldest_history_is_dropped_to_fit_the_context_window(make_bot):
    after: list[Reply] = []

    class History:
        @hookimpl
        def botkit_prepare_context(self, prompt):
            old = [
                Turn(Role.USER if i % 2 == 0 else Role.ASSISTANT, f"turn {i} " + "x" * 200) for i in range(20)
            ]
            prompt.turns[:-1] = old

        @hookimpl
        def botkit_after_reply(self, reply):
            after.append(reply)

    config = {"backend": {"context_window": 600, "max_tokens": 100}}
    async with make_bot(config, plugins={"history": History()}) as bot:
        reply = await bot.chat.say("latest question")
    assert reply.status is ReplyStatus.COMPLETED
    kept = bot.backend.prompts[0].turns
    assert kept[-1].text == "latest question"
    assert kept[0].text.startswith("turn ") and kept[-2].text.startswith("turn 19")
    assert len(kept) < 21 and after[0].dropped_turns == 21 - len(kept)
    assert await bot.backend.count_tokens(bot.backend.prompts[0]) <= 500


@pytest.mark.parametrize("prompt_format", ["chat", "alpaca"])
async def test_a_long_history_is_cut_where_dropping_one_turn_at_a_time_would_cut_it(make_bot, prompt_format):
    from context_fit_reference import linear_fit
    from test_context_fit import long_history

    conversation = long_history(200)
    after: list[Reply] = []

    class History:
        @hookimpl
        def botkit_prepare_context(self, prompt):
            prompt.turns[:-1] = conversation.history

        @hookimpl
        def botkit_after_reply(self, reply):
            after.append(reply)

    config = {"backend": {"context_window": 3000, "max_tokens": 200, "prompt_format": prompt_format}}
    async with make_bot(config, plugins={"history": History()}) as bot:
        await bot.chat.say(conversation.current.text)
        full = Prompt(bot.settings.bot.system_prompt, list(conversation.turns))
        expected = await linear_fit(full, 2800, bot.backend.count_tokens)
    assert 0 < expected.dropped < 199
    assert bot.backend.prompts[0].turns == conversation.turns[expected.dropped :]
    assert (after[0].dropped_turns, after[0].prompt_tokens) == (expected.dropped, expected.prompt_tokens)


async def test_message_larger_than_the_context_window_is_refused(make_bot):
    async with make_bot({"backend": {"context_window": 300, "max_tokens": 100}}) as bot:
        reply = await bot.chat.say("word " * 400)
    assert bot.backend.requests == []
    assert "too long for the model" in reply.sent[0]


async def test_messages_of_one_conversation_are_answered_in_order(make_bot):
    async with make_bot() as bot:
        order: list[str] = []
        tasks = []
        first = bot.backend.hold("answer 0")
        for i in range(5):
            if i:
                bot.backend.add_reply(f"answer {i}")
            task, responder = bot.chat.say_nowait(f"question {i}")
            task.add_done_callback(lambda _, i=i: order.append(f"answer {i}"))
            tasks.append((task, responder))
        await first.reached()  # the later questions arrive while the first is being answered
        first.open()
        await asyncio.gather(*(t for t, _ in tasks))
    assert [p.current.text for p in bot.backend.prompts] == [f"question {i}" for i in range(5)]
    assert [r.final for _, r in tasks] == [f"answer {i}" for i in range(5)]
    assert order == [f"answer {i}" for i in range(5)]


async def test_other_conversations_do_not_wait_for_a_slow_gate(make_bot):
    release = asyncio.Event()

    class SlowInGeneral:
        @hookimpl
        async def botkit_gate(self, message):
            if message.channel_id == "general":
                await release.wait()

    async with make_bot(plugins={"slow": SlowInGeneral()}) as bot:
        slow_task, slow = bot.chat.say_nowait("in general")
        fast = await asyncio.wait_for(bot.chat.say("in random", channel="random"), WAIT_TIMEOUT)
        assert fast.status is ReplyStatus.COMPLETED and not slow_task.done()
        release.set()
        await slow_task
    assert slow.status is ReplyStatus.COMPLETED


async def test_waiting_user_is_told_their_place(make_bot):
    async with make_bot() as bot:
        gate = bot.backend.hold(*["a "] * 10)
        first_task, first = bot.chat.say_nowait("first", user="alice", channel="one")
        await gate.reached()
        second_task, second = bot.chat.say_nowait("second", user="bob", channel="two")
        third_task, third = bot.chat.say_nowait("third", user="carol", channel="three")
        await eventually(lambda: second.sent and third.sent, what="both waiting users are told")
        gate.open()
        await asyncio.gather(first_task, second_task, third_task)
    assert first.sent == []
    assert second.sent == ["The model is busy; 1 request ahead of you. I'll answer as soon as I can."]
    assert third.sent == ["The model is busy; 2 requests ahead of you. I'll answer as soon as I can."]
    assert [p.current.text for p in bot.backend.prompts] == ["first", "second", "third"]
    assert all(r.status is ReplyStatus.COMPLETED for r in (first, second, third))


async def test_full_queue_says_busy(make_bot):
    async with make_bot({"backend": {"queue_limit": 0}}) as bot:
        gate = bot.backend.hold(*["a "] * 5)
        first_task, first = bot.chat.say_nowait("first", channel="one")
        await gate.reached()
        busy = await bot.chat.say("second", channel="two")
        gate.open()
        await first_task
    assert busy.texts == ["I'm answering a lot of people right now. Please try again in a minute."]
    assert first.status is ReplyStatus.COMPLETED


async def test_stop_cancels_the_users_running_generation(make_bot):
    async with make_bot() as bot:
        gate = Gate()
        bot.backend.add_reply("word ", "word ", gate, *["word "] * 200)
        task, running = bot.chat.say_nowait("write a lot")
        await gate.reached()
        stop = await bot.chat.say("/stop")
        await asyncio.wait_for(task, WAIT_TIMEOUT)  # ends although nobody opens the gate
    assert stop.texts == ["Stopped."]
    assert running.status is ReplyStatus.STOPPED
    assert running.final.endswith("[stopped]") and running.final.count("word") == 2


async def test_stop_cancels_a_waiting_request_and_spares_other_users(make_bot):
    after: list[Reply] = []

    class After:
        @hookimpl
        def botkit_after_reply(self, reply):
            after.append(reply)

    async with make_bot(plugins={"after": After()}) as bot:
        gate = bot.backend.hold(*["a "] * 10)
        alice_task, alice = bot.chat.say_nowait("long", user="alice", channel="one")
        await gate.reached()
        bob_task, bob = bot.chat.say_nowait("queued", user="bob", channel="two")
        await eventually(lambda: bob.sent, what="bob is told he waits")
        nothing = await bot.chat.say("/stop", user="carol", channel="one")
        stopped = await bot.chat.say("/stop", user="bob", channel="two")
        gate.open()
        await asyncio.gather(alice_task, bob_task)
    assert nothing.texts == ["There is no reply of yours to stop."]
    assert stopped.texts == ["Stopped."]
    assert alice.status is ReplyStatus.COMPLETED
    assert bob.final is None  # never reached the model
    assert [p.current.text for p in bot.backend.prompts] == ["long"]
    assert sorted(r.status.value for r in after) == ["completed", "stopped"]


async def test_help_lists_commands_and_hides_admin_ones(make_bot):
    from botkit import Command

    async def secret(ctx):
        return "admin stuff done"

    class Admin:
        @hookimpl
        def botkit_register_commands(self, register):
            register(Command("secret", "do admin stuff", secret, admin_only=True))

    async with make_bot(plugins={"secretive": Admin()}) as bot:
        user_help = await bot.chat.say("/help")
        admin_help = await bot.chat.say("/help", user="admin")
    assert "/help - show the commands you can use" in user_help.sent[0]
    assert "/stop - stop the reply being written for you" in user_help.sent[0]
    assert "/secret" not in user_help.sent[0]
    assert "/secret - do admin stuff (admin)" in admin_help.sent[0]


async def test_admin_only_command_refused_and_logged_for_others(make_bot, caplog):
    from botkit import Command

    ran = []

    async def secret(ctx):
        ran.append(ctx.args)
        return f"done: {ctx.args}"

    class Admin:
        @hookimpl
        def botkit_register_commands(self, register):
            register(Command("secret", "do admin stuff", secret, admin_only=True))

    async with make_bot(plugins={"secretive": Admin()}) as bot:
        with caplog.at_level(logging.WARNING):
            refused = await bot.chat.say("/secret now", user="mallory")
        allowed = await bot.chat.say("/secret now", user="admin")
    assert refused.texts == ["Sorry, /secret is for admins only."]
    assert "refused admin command /secret from non-admin test:mallory" in caplog.text
    assert allowed.texts == ["done: now"] and ran == ["now"]


async def test_unknown_and_failing_commands(make_bot, caplog):
    from botkit import Command

    async def broken(ctx):
        raise RuntimeError("oops")

    class Plugin:
        @hookimpl
        def botkit_register_commands(self, register):
            register(Command("broken", "always fails", broken))

    async with make_bot(plugins={"mine": Plugin()}) as bot:
        unknown = await bot.chat.say("/nope")
        with caplog.at_level(logging.ERROR):
            failed = await bot.chat.say("/broken")
        path = await bot.chat.say("/etc/hosts is a file?")
    assert unknown.texts == ["Unknown command /nope. Type /help to see the commands."]
    assert failed.texts == ["Sorry, /broken failed; the error has been logged."]
    assert "command /broken of plugin 'mine' failed" in caplog.text
    assert path.status is ReplyStatus.COMPLETED  # not a command: goes to the model


async def test_is_admin_hook_overrides_config(make_bot):
    class Acl:
        @hookimpl
        def botkit_is_admin(self, user, message):
            if "moderators" in user.roles:
                return True
            if user.id == "admin" and message is not None:
                return False  # demoted, although config lists them

    async with make_bot(plugins={"acl": Acl()}) as bot:
        mod = bot.chat.message("x", user="mo", roles=("moderators",))
        assert await bot.is_admin(mod.author, mod)
        admin = bot.chat.message("x", user="admin")
        assert not await bot.is_admin(admin.author, admin)
        plain = bot.chat.message("x", user="bob")
        assert not await bot.is_admin(plain.author, plain)


async def test_admins_come_from_config_per_platform(make_bot):
    async with make_bot({"bot": {"admins": ["test:root", "discord:root2"]}}) as bot:
        root = bot.chat.message("x", user="root")
        other = bot.chat.message("x", user="root2")
        assert await bot.is_admin(root.author, root)
        assert not await bot.is_admin(other.author, other)  # admin on another platform only


async def test_startup_and_shutdown_hooks(make_bot):
    events = []

    class Lifecycle:
        @hookimpl
        async def botkit_startup(self, bot):
            events.append(("start", bot.started))

        @hookimpl
        def botkit_shutdown(self, bot):
            events.append(("stop", bot.backend.closed))

    async with make_bot(plugins={"life": Lifecycle()}) as bot:
        assert events == [("start", False)]
    assert events == [("start", False), ("stop", False)]
    assert bot.backend.closed


async def test_shutdown_stops_in_flight_replies(make_bot):
    async with make_bot() as bot:
        gate = Gate()
        bot.backend.add_reply("x ", gate, *["x "] * 500)
        task, reply = bot.chat.say_nowait("long")
        await gate.reached()
    assert task.done()
    assert reply.status is ReplyStatus.STOPPED


def test_conversation_keys_follow_the_scope():
    from botkit import ConversationScope, User

    def key(scope, **kw):
        return Message("x", User("u1"), "discord", "c1", **kw).conversation_key(scope)

    assert key(ConversationScope.CHANNEL, thread_id="t1") == "discord:c1"
    assert key(ConversationScope.THREAD, thread_id="t1") == "discord:c1:t1"
    assert key(ConversationScope.THREAD) == "discord:c1"
    assert key(ConversationScope.USER, thread_id="t1") == "discord:c1:t1:user:u1"
    assert key(ConversationScope.CHANNEL, is_dm=True) == "discord:dm:u1"


def test_prompt_history_and_current():
    prompt = Prompt("sys", [Turn(Role.USER, "a"), Turn(Role.ASSISTANT, "b"), Turn(Role.USER, "c")])
    assert [t.text for t in prompt.history] == ["a", "b"] and prompt.current.text == "c"
