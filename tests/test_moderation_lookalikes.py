"""Moderation: blocklist words spelled with look-alike letters are caught; ordinary text in other scripts is not."""

from __future__ import annotations

import unicodedata

import pytest
from sqlalchemy import select

from botkit import ReplyStatus
from botkit.plugins.moderation import ModerationSettings, event_log
from botkit.plugins.moderation.confusables import CONFUSABLES
from botkit.plugins.moderation.normalise import fold
from botkit.storage import ModerationEventRecord
from botkit.testing import WAIT_TIMEOUT

NOTICE_IN = ModerationSettings().input_notice
NOTICE_OUT = ModerationSettings().output_notice
BLOCKLIST = ["frack", "shit", "bitch", "kill yourself"]

LOOKALIKE_SPELLINGS = {
    "small capitals": "ꜰʀᴀᴄᴋ",
    "small capitals and a zero-width space": "ꜱ\u200bʜɪᴛ",
    "Armenian ho": "s\u0570it",  # հ
    "Armenian seh and oh": "kill y\u0585\u057drself",  # օ ս
    "dotless i": "sh\u0131t",  # ı
    "Cherokee": "\u13da\u13bb\u13a5\u13a2",  # Ꮪ Ꮋ Ꭵ Ꭲ
    "Lisu": "\ua4dd\ua4e3\ua4ee\ua4da\ua4d7",  # ꓝ ꓣ ꓮ ꓚ ꓗ
    "Canadian syllabics": "\u15f7itch",  # ᗷ
    "Greek capitals": "ΚΙLL ΥΟURSELF",
    "Cyrillic": "\u0455hi\u0442",  # ѕ т
    "Latin with strokes and hooks": "\u0192r\u0251ck",  # ƒ ɑ
    "mathematical bold": "𝐟𝐫𝐚𝐜𝐤",
    "mathematical fraktur": "𝖋𝖗𝖆𝖈𝖐",
    "fullwidth": "ｓｈｉｔ",
    "look-alikes and leetspeak": "ꜰ r 4 ᴄ ᴋ",
}

ORDINARY = {
    "Russian": "Привет, как дела? Сегодня хорошая погода, пойдём гулять в парк.",
    "Greek": "Καλημέρα σας, τι κάνετε; Ο καιρός είναι ωραίος σήμερα.",
    "Armenian": "Բարև ձեզ, ինչպե՞ս եք։ Այսօր եղանակը շատ լավ է։",
    "Cherokee": "ᎣᏏᏲ, ᏙᎯᏧ? ᎠᏂᏴᏫᏯ ᎦᏬᏂᎯᏍᏗ ᎣᏍᏓ.",
    "Georgian": "გამარჯობა, როგორ ხარ? დღეს კარგი ამინდია.",
    "Hebrew": "שלום, מה שלומך? היום מזג האוויר נעים מאוד.",
    "Arabic": "مرحبا، كيف حالك؟ الطقس جميل اليوم، ١٢٣ شخصا في الحديقة.",
    "Hindi": "नमस्ते, आप कैसे हैं? आज मौसम बहुत अच्छा है।",
    "Japanese": "こんにちは、お元気ですか？今日はいい天気ですね。",
    "Turkish": "Işık ılık, hava sıcak değil; İstanbul'da yağmur yok.",
}


def config() -> dict:
    return {"plugins": {"moderation": {"blocklist": BLOCKLIST}}}


async def events(bot) -> list[ModerationEventRecord]:
    assert await event_log(bot).flush(WAIT_TIMEOUT)
    async with bot.db.sessions() as session:
        return list(await session.scalars(select(ModerationEventRecord)))


@pytest.mark.parametrize("spelling", list(LOOKALIKE_SPELLINGS.values()), ids=list(LOOKALIKE_SPELLINGS))
async def test_a_blocked_word_in_look_alike_letters_is_blocked(make_bot, spelling):
    async with make_bot(config()) as bot:
        reply = await bot.chat.say(f"well {spelling} then")
        stored = await events(bot)
    assert reply.texts == [NOTICE_IN] and bot.backend.requests == []
    # The classifier reads the folded text too: "shit" in look-alikes is also flagged as profanity.
    assert ("in", "blocklist", "block") in {(e.direction, e.category, e.action) for e in stored}


async def test_a_look_alike_word_in_a_streamed_reply_stops_it(make_bot):
    async with make_bot(config()) as bot:
        bot.backend.add_reply("that is ", "ꜰʀ", "ᴀᴄᴋ", " nonsense")
        reply = await bot.chat.say("tell me")
    assert reply.status is ReplyStatus.BLOCKED and reply.final == NOTICE_OUT
    assert not any("ᴀᴄᴋ" in update for update in reply.updates)


async def test_a_redacted_look_alike_word_is_removed_whole(make_bot):
    settings = config()
    settings["plugins"]["moderation"]["input_actions"] = {"blocklist": "redact"}
    async with make_bot(settings) as bot:
        await bot.chat.say("oh 𝐟𝐫𝐚𝐜𝐤, ꜱʜɪᴛ happens")
    assert bot.backend.prompts[0].current.text == "oh [removed], [removed] happens"


@pytest.mark.parametrize("text", list(ORDINARY.values()), ids=list(ORDINARY))
async def test_ordinary_text_in_other_scripts_passes_untouched(make_bot, text):
    async with make_bot(config()) as bot:
        reply = await bot.chat.say(text)
        stored = await events(bot)
    assert reply.status is ReplyStatus.COMPLETED
    assert bot.backend.prompts[0].current.text == text
    assert stored == []


def test_the_table_reads_each_character_as_one_ascii_letter_or_digit():
    assert len(CONFUSABLES) > 500
    for code, letter in CONFUSABLES.items():
        assert code > 0x7F and len(letter) == 1 and (letter.islower() or letter.isdigit()), hex(code)
        assert fold(chr(code)).text == letter, hex(code)
    # Right-to-left letters and other scripts' digits keep their meaning (see scripts/gen_confusables.py).
    for char in "اهוס٥١०৪":
        assert ord(char) not in CONFUSABLES and fold(char).text == char, unicodedata.name(char)
