"""Several backends at once and per-place overrides: precedence, separate queues, bad config."""

from __future__ import annotations

import asyncio

import pytest
from click.testing import CliRunner

from botkit.bot import Bot
from botkit.cli import create_cli
from botkit.errors import ConfigError
from botkit.settings import settings_from_mapping
from botkit.testing import WAIT_TIMEOUT, eventually
from botkit.types import NO_LORA, ReplyStatus

TWO_BACKENDS = {
    "bot": {"system_prompt": "global prompt"},
    "backend": {"type": "scripted", "default_reply": "from default", "temperature": 0.7},
    "backends": {
        "other": {"type": "scripted", "default_reply": "from other", "loras": {"support": "s.gguf"}}
    },
    "overrides": {
        "test:support": {"system_prompt": "support prompt", "backend": "other", "temperature": 0.1},
        "test:support/t1": {"temperature": 0.5, "max_tokens": 3, "stop": ["END"]},
        "test:dm": {"system_prompt": "dm prompt"},
        "test:tuned": {"backend": "other", "lora": "support"},
        "test:base": {"backend": "other", "lora": "none"},
    },
}


def other(bot):
    return bot.backends["other"].backend


async def test_no_override_uses_the_global_prompt_and_the_default_backend(make_bot):
    async with make_bot(TWO_BACKENDS) as bot:
        reply = await bot.chat.say("hi", channel="general")
        assert reply.final == "from default"
        request = bot.backend.requests[0]
        assert request.prompt.system == "global prompt"
        assert request.params.temperature == 0.7
        assert other(bot).requests == []


async def test_a_channel_override_picks_backend_prompt_and_sampling(make_bot):
    async with make_bot(TWO_BACKENDS) as bot:
        reply = await bot.chat.say("hi", channel="support")
        assert reply.final == "from other"
        request = other(bot).requests[0]
        assert request.prompt.system == "support prompt"
        assert request.params.temperature == 0.1
        assert request.params.max_tokens == bot.backends["other"].settings.max_tokens
        assert bot.backend.requests == []


async def test_a_thread_inherits_its_channel_and_overrides_key_by_key(make_bot):
    async with make_bot(TWO_BACKENDS) as bot:
        reply = await bot.chat.say("hi", channel="support", thread="t1")
        # max_tokens 3 from the thread cuts the reply "from other" (2 words) not at all,
        # the backend and the prompt come from the channel, the temperature from the thread.
        assert reply.final == "from other"
        request = other(bot).requests[0]
        assert request.prompt.system == "support prompt"
        assert (request.params.temperature, request.params.max_tokens) == (0.5, 3)
        assert request.params.stop == ("END",)
        # Another thread of the same channel only gets the channel's values.
        await bot.chat.say("hi", channel="support", thread="t2")
        assert other(bot).requests[1].params.temperature == 0.1


async def test_dms_take_the_platform_dm_override(make_bot):
    async with make_bot(TWO_BACKENDS) as bot:
        await bot.chat.say("hi", dm=True)
        assert bot.backend.requests[0].prompt.system == "dm prompt"


async def test_an_override_lora_reaches_the_backend_and_the_stored_reply(make_bot):
    seen = []

    class Spy:
        from botkit import hookimpl

        @hookimpl
        def botkit_after_reply(self, message, reply, bot):
            seen.append((message.channel_id, reply.backend, reply.lora))

    async with make_bot(TWO_BACKENDS, plugins={"spy": Spy()}) as bot:
        await other(bot).switch_lora("support")
        await bot.chat.say("hi", channel="tuned")
        await bot.chat.say("hi", channel="base")
        await bot.chat.say("hi", channel="support")
        assert [r.params.lora for r in other(bot).requests] == ["support", NO_LORA, None]
        # The LoRA adapter that answered is recorded: named, none, and the active one.
        assert seen == [("tuned", "scripted", "support"), ("base", "scripted", None), ("support", "scripted", "support")]


async def test_each_backend_keeps_its_own_queue(make_bot):
    config = {
        **TWO_BACKENDS,
        "backend": {"type": "scripted", "default_reply": "slow slow slow"},
    }
    async with make_bot(config) as bot:
        gate = bot.backend.hold()
        slow, slow_reply = bot.chat.say_nowait("hi", channel="general", user="a")
        await gate.reached()
        # The default backend is busy; a second message for it waits in its queue...
        queued, queued_reply = bot.chat.say_nowait("hi", channel="general", thread="x", user="b")
        await eventually(lambda: queued_reply.sent, what="the second message is told it waits")
        assert bot.queue.running == 1 and bot.queue.waiting == 1
        # ...while the other backend answers although the default one never gets free.
        fast = await asyncio.wait_for(bot.chat.say("hi", channel="support"), WAIT_TIMEOUT)
        assert fast.final == "from other" and not slow.done()
        gate.open()
        await asyncio.gather(slow, queued)
        assert slow_reply.final == "slow slow slow"
        assert any("ahead of you" in text for text in queued_reply.sent)


async def test_stop_reaches_a_generation_on_a_named_backend(make_bot):
    config = {
        **TWO_BACKENDS,
        "backends": {"other": {"type": "scripted", "default_reply": "a b c d e f g h"}},
        "overrides": {"test:support": {"backend": "other"}},
    }
    async with make_bot(config) as bot:
        gate = other(bot).hold()
        task, reply = bot.chat.say_nowait("hi", channel="support")
        await gate.reached()
        stopped = await bot.chat.say("/stop", channel="support")
        await task
        assert reply.status is ReplyStatus.STOPPED
        assert "stopped" in stopped.texts[0].lower()


async def test_reload_applies_changed_overrides_at_once(make_bot, tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        '[backend]\ntype = "scripted"\n[overrides."test:general"]\nsystem_prompt = "before"\n', encoding="utf-8"
    )
    async with make_bot() as bot:
        bot.settings._source_path = path  # the bot was built from this file's values plus test defaults
        path.write_text(
            '[backend]\ntype = "scripted"\n[overrides."test:general"]\nsystem_prompt = "after"\n',
            encoding="utf-8",
        )
        notes = await bot.chat.say("/reload", user="admin")
        assert "reloaded" in notes.texts[-1]
        await bot.chat.say("hi")
        assert bot.backend.requests[-1].prompt.system == "after"


async def test_admin_switches_and_lists_loras(make_bot):
    async with make_bot(TWO_BACKENDS) as bot:
        listing = await bot.chat.say("/lora", user="admin")
        assert "other: support" in listing.texts[0] and "default: none loaded" in listing.texts[0]
        switched = await bot.chat.say("/lora other support", user="admin")
        assert "LoRA adapter support" in switched.texts[0]
        assert other(bot).active_lora == "support"
        assert "*support" in (await bot.chat.say("/lora", user="admin")).texts[0]
        refused = await bot.chat.say("/lora other nope", user="admin")
        assert refused.texts[0].startswith("LoRA adapter not switched") and "'nope'" in refused.texts[0]
        await bot.chat.say("/lora other none", user="admin")
        assert other(bot).active_lora is None
        not_admin = await bot.chat.say("/lora other support", user="mallory")
        assert "admins only" in not_admin.texts[0] and other(bot).active_lora is None


async def test_adapter_is_still_the_lora_command_under_its_old_name(make_bot):
    async with make_bot(TWO_BACKENDS) as bot:
        switched = await bot.chat.say("/adapter other support", user="admin")
        assert "LoRA adapter support" in switched.texts[0] and other(bot).active_lora == "support"
        assert "*support" in (await bot.chat.say("/adapter", user="admin")).texts[0]
        help_text = (await bot.chat.say("/help", user="admin")).texts[0]
        assert "old name of /lora" in help_text


async def test_status_lists_every_backend(make_bot):
    async with make_bot(TWO_BACKENDS) as bot:
        status = (await bot.chat.say("/status", user="admin")).texts[0]
        assert "\ndefault: scripted scripted · " in status and "\nother: scripted scripted · " in status


@pytest.mark.parametrize(
    "config, expected",
    [
        (
            {"overrides": {"test:x": {"backend": "missing"}}},
            "[overrides.\"test:x\"] backend: no backend 'missing'; configured: default",
        ),
        ({"backends": {"big": {"type": "nope"}}}, "[backends.big] type: no backend 'nope'"),
        ({"backends": {"default": {"type": "scripted"}}}, "[backends.default]: the name 'default'"),
        ({"overrides": {"general": {"temperature": 0.1}}}, "a place is 'platform:channel'"),
        ({"overrides": {"test:dm/5": {}}}, "'platform:dm' takes no thread"),
        ({"overrides": {"test:x": {"temprature": 0.1}}}, 'overrides."test:x"] temprature: unknown key'),
        ({"backends": {"big": {"type": "scripted", "top_p": 7}}}, "[backends.big] top_p"),
    ],
)
def test_bad_backend_and_override_config_names_the_key(config, expected):
    with pytest.raises(ConfigError) as error:
        Bot.load(settings_from_mapping({"backend": {"type": "scripted"}, **config}))
    assert expected in str(error.value)


async def test_an_unknown_lora_in_an_override_stops_start_up(make_bot):
    config = {**TWO_BACKENDS, "overrides": {"test:x": {"lora": "support"}}}
    with pytest.raises(ConfigError) as error:
        async with make_bot(config):
            pass
    assert (
        "[overrides.\"test:x\"] lora: backend 'default' has no LoRA adapter 'support'; its LoRA adapters: "
        "none (name them in [backend] loras)"
    ) in str(error.value)


OLD_LORA_KEYS = {
    **TWO_BACKENDS,
    "backends": {"other": {"type": "scripted", "adapters": {"support": "s.gguf"}}},
    "overrides": {"test:tuned": {"backend": "other", "adapter": "support"}},
}


async def test_the_old_lora_key_names_still_work_with_a_warning_naming_the_new_ones(make_bot, caplog):
    async with make_bot(OLD_LORA_KEYS) as bot:
        assert other(bot).loras == {"support": "s.gguf"}
        await bot.chat.say("hi", channel="tuned")
        assert other(bot).requests[0].params.lora == "support"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "config: [backends.other] adapters is deprecated: rename it to loras" in " ".join(warnings)
    assert 'config: [overrides."test:tuned"] adapter is deprecated: rename it to lora' in " ".join(warnings)


@pytest.mark.parametrize(
    "config, expected",
    [
        (
            {"backends": {"other": {"type": "scripted", "loras": {"a": "a.gguf"}, "adapters": {"b": "b.gguf"}}}},
            "config: [backends.other] adapters: the old name of loras, which this table sets too: keep only loras",
        ),
        (
            {"overrides": {"test:x": {"lora": "a", "adapter": "b"}}},
            'config: [overrides."test:x"] adapter: the old name of lora, which this table sets too: '
            "keep only lora (got 'b')",
        ),
    ],
    ids=["backend", "override"],
)
def test_a_table_with_both_the_old_and_the_new_lora_key_is_refused(config, expected):
    with pytest.raises(ConfigError) as error:
        Bot.load(settings_from_mapping({"backend": {"type": "scripted"}, **config}))
    assert str(error.value) == expected


def test_backends_list_shows_each_backend_and_whether_it_loads(write_config):
    path = write_config(
        '[backend]\ntype = "scripted"\n'
        '[backends.remote]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nconnect_timeout = 0.5\n'
    )
    result = CliRunner().invoke(create_cli(), ["backends", "list", "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert "default [backend]\n  type:     scripted\n  model:    scripted" in result.output
    assert "context:  4,096 tokens\n  loads:    yes" in result.output
    assert "remote [backends.remote]" in result.output
    assert "loads:    NO: [backends.remote] base_url: http://127.0.0.1:9/v1/models is not reachable" in result.output
    unchecked = CliRunner().invoke(create_cli(), ["backends", "list", "--no-load", "--config", str(path)])
    assert unchecked.exit_code == 0 and unchecked.output.count("not checked") == 2


def test_a_named_backends_secret_comes_from_its_own_environment_variable(write_config, monkeypatch):
    path = write_config('[backends.remote]\ntype = "openai"\napi_key = "sk-in-file"\n')
    result = CliRunner().invoke(create_cli(), ["backends", "list", "--no-load", "--config", str(path)])
    assert result.exit_code == 2
    assert "BOTKIT_BACKENDS__REMOTE__API_KEY" in result.output and "sk-in-file" not in result.output
