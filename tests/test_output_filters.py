"""Built-in output filters: mention safety and the AI disclosure label."""

from __future__ import annotations

import pytest

from botkit.plugins.mentions import ZERO_WIDTH, neutralise

Z = ZERO_WIDTH


@pytest.mark.parametrize(
    ("model_output", "shown"),
    [
        ("Hey @everyone look", f"Hey @{Z}everyone look"),
        ("@HERE now", f"@{Z}HERE now"),
        ("ping <!channel> and <!here> and <!everyone>", f"ping @{Z}channel and @{Z}here and @{Z}everyone"),
        ("<!channel|channel> labelled", f"@{Z}channel labelled"),
        ("team <!subteam^S0123|devs>", f"team @{Z}devs"),
        ("role <@&123456789>", f"role @{Z}role"),
        ("user <@987> and <@!654>", f"user @{Z}987 and @{Z}654"),
        ("slack user <@U0BOB|bob>", f"slack user @{Z}U0BOB"),
        ("email me at someone@example.com", "email me at someone@example.com"),
        ("write to ops@channel.io or team@here.com", "write to ops@channel.io or team@here.com"),
        ("cc all@everyone.example.org, @here", f"cc all@everyone.example.org, @{Z}here"),
        ("ops@channel.io @channel", f"ops@channel.io @{Z}channel"),
        ("hey@here and x@everyone.", f"hey@{Z}here and x@{Z}everyone."),  # no domain: no address
        ("@here.com is not an address", f"@{Z}here.com is not an address"),
    ],
)
def test_pings_are_neutralised(model_output, shown):
    assert neutralise(model_output, author_id="author") == shown


def test_the_author_may_be_mentioned():
    assert (
        neutralise("thanks <@author> and <@other>", author_id="author") == f"thanks <@author> and @{Z}other"
    )
    assert neutralise("thanks <@author>", author_id=None) == f"thanks @{Z}author"


async def test_no_reply_pings_anyone_whatever_the_model_writes(bot):
    bot.backend.add_reply("@every", "one and <!chan", "nel> hello <@", "42>")
    reply = await bot.chat.say("ping everybody")
    assert reply.final == f"@{Z}everyone and @{Z}channel hello @{Z}42"
    assert all("@everyone" not in update and "<!channel>" not in update for update in reply.updates)


async def test_disclosure_footer_on_the_final_reply(make_bot):
    async with make_bot({"plugins": {"disclosure": {"text": "🤖 AI-generated"}}}) as bot:
        bot.backend.add_reply("Hi ", "there")
        reply = await bot.chat.say("hello")
    assert reply.updates == ["Hi ", "Hi there"]
    assert reply.final == "Hi there\n\n🤖 AI-generated"


async def test_disclosure_header_shows_while_streaming(make_bot):
    async with make_bot({"plugins": {"disclosure": {"text": "[AI]", "position": "header"}}}) as bot:
        bot.backend.add_reply("Hi ", "there")
        reply = await bot.chat.say("hello")
    assert reply.updates == ["[AI]\nHi ", "[AI]\nHi there"]
    assert reply.final == "[AI]\nHi there"


async def test_no_label_by_default(bot):
    bot.backend.say("plain")
    assert (await bot.chat.say("hi")).final == "plain"
