"""The shared streaming helper: splitting replies at platform limits, and throttled edits of a streamed reply."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from botkit.adapters.edits import REMOVED, EditStream, split_text
from botkit.testing import WAIT_TIMEOUT, eventually


def words(text: str) -> list[str]:
    return text.split()


# --- split_text -------------------------------------------------------------------------------


def test_short_text_is_one_part():
    assert split_text("hello there", 2000) == ["hello there"]


def test_blank_text_gives_no_parts():
    assert split_text("", 100) == []
    assert split_text("  \n\n ", 100) == []


def test_parts_fit_and_keep_every_word():
    text = " ".join(f"word{i}" for i in range(1500))
    parts = split_text(text, 2000)
    assert len(parts) > 1
    assert all(len(part) <= 2000 for part in parts)
    assert words(" ".join(parts)) == words(text)


def test_cut_prefers_paragraphs_then_lines_then_spaces():
    first = "a" * 60
    second = "b" * 60
    assert split_text(f"{first}\n\n{second}", 100) == [first, second]
    assert split_text(f"{first}\n{second}", 100) == [first, second]
    assert split_text(f"{first} {second}", 100) == [first, second]
    # a paragraph break wins over a later line break when both are in reach
    text = "p" * 55 + "\n\n" + "q" * 20 + "\n" + "r" * 40
    assert split_text(text, 100)[0] == "p" * 55


def test_a_boundary_too_early_is_not_used():
    # cutting at the space would leave a 3-character part: a hard cut keeps parts full
    text = "abc " + "x" * 150
    parts = split_text(text, 100)
    assert parts[0] == "abc " + "x" * 96
    assert "".join(parts) == text


def test_hard_cut_never_splits_a_symbol():
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one emoji made of five code points
    thumbs = "\U0001f44d\U0001f3fd"  # thumbs up with a skin tone
    accented = "e\u0301"  # e + combining acute
    for symbol in (family, thumbs, accented):
        text = symbol * 40
        parts = split_text(text, 37)
        assert all(len(part) <= 37 for part in parts)
        assert all(len(part) % len(symbol) == 0 for part in parts), symbol
        assert "".join(parts) == text


@pytest.mark.parametrize(
    "symbol",
    [
        "\U0001f1ec\U0001f1e7",  # the flag of the United Kingdom: two regional indicators
        "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",  # England's flag
        "\u2764\ufe0f",  # a heart with its emoji variation selector
        "1\ufe0f\u20e3",  # keycap one
        "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag: variation selector and a join
        "\u0915\u093f",  # Devanagari "ki": a spacing vowel sign (Mc) after its consonant
    ],
)
@pytest.mark.parametrize("lead", ["", "x"])
def test_hard_cut_never_splits_a_flag_or_a_cluster(symbol, lead):
    text = lead + symbol * 60
    for limit in (19, 20, 37):
        parts = split_text(text, limit)
        assert all(len(part) <= limit for part in parts)
        assert "".join(parts) == text
        cuts = [sum(map(len, parts[:n])) for n in range(1, len(parts))]
        assert all((cut - len(lead)) % len(symbol) == 0 for cut in cuts), (symbol, limit, parts)


def test_regional_indicators_pair_from_the_start_of_their_run():
    text = "\U0001f1eb" + "\U0001f1ec\U0001f1e7" * 30  # a lone indicator, then flags: pairs shift by one
    parts = split_text(text, 19)
    cuts = [sum(map(len, parts[:n])) for n in range(1, len(parts))]
    assert "".join(parts) == text
    assert cuts and all(cut % 2 == 0 for cut in cuts)


def test_surrogate_pair_is_not_split():
    # text decoded with surrogatepass can hold UTF-16 halves; a pair stays together
    pair = "\ud83d\ude00"
    text = "x" + pair * 30
    parts = split_text(text, 10)
    assert "".join(parts) == text
    for part in parts:
        assert not ("\ud800" <= part[-1] <= "\udbff"), "a part ends with the high half of a pair"


def test_code_block_is_closed_and_reopened_across_a_cut():
    code = "\n".join(f"print({i})  # line {i}" for i in range(40))
    text = f"Here is the code:\n\n```python\n{code}\n```\n\nThat prints the numbers."
    parts = split_text(text, 300)
    assert len(parts) > 2
    for part in parts:
        assert len(part) <= 300
        fences = re.findall(r"^```", part, flags=re.MULTILINE)
        assert len(fences) % 2 == 0, f"unbalanced fences in part:\n{part}"
    assert parts[1].startswith("```python\n")
    # the code lines all arrive, in order, once each
    shown = [line for part in parts for line in part.split("\n") if line.startswith("print(")]
    assert shown == code.split("\n")
    assert parts[-1].endswith("That prints the numbers.")


def test_a_cut_does_not_leave_an_empty_code_block_behind():
    text = "x" * 90 + "\n```\n" + "code line\n" * 5 + "```"
    parts = split_text(text, 100)
    assert parts[0] == "x" * 90
    assert all(not part.endswith("```\n```") for part in parts)


def test_unclosed_fence_in_streamed_text_still_fits():
    text = "```\n" + "y " * 200  # a reply still being generated: the block is not closed yet
    parts = split_text(text, 120)
    assert all(len(part) <= 120 for part in parts)
    assert all(part.startswith("```") for part in parts)


def test_limit_must_be_positive():
    with pytest.raises(ValueError, match="limit"):
        split_text("x", 0)


# --- EditStream -------------------------------------------------------------------------------


class FakePlatform:
    """Records the platform calls an EditStream makes, with their times; ``hold`` makes calls wait."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, str, str]] = []
        self.attempts: list[tuple[str, str]] = []  # every call as it arrives, held or not
        self.messages: dict[str, str] = {}
        self.fail_next_edit = False
        self.start = time.monotonic()
        self._open = asyncio.Event()
        self._open.set()
        self._holding = asyncio.Event()

    def hold(self) -> None:
        """From now on a call waits, as on a slow platform, until ``release``."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def holding(self) -> None:
        """Wait until a call is held."""
        await asyncio.wait_for(self._holding.wait(), WAIT_TIMEOUT)

    async def calls_made(self, count: int) -> None:
        await eventually(lambda: len(self.calls) >= count, what=f"{count} platform calls")

    async def _arrive(self, kind: str, text: str) -> None:
        self.attempts.append((kind, text))
        if not self._open.is_set():
            self._holding.set()
            await self._open.wait()

    async def post(self, text: str) -> str:
        await self._arrive("post", text)
        message_id = f"m{len(self.messages) + 1}"
        self.messages[message_id] = text
        self.calls.append((time.monotonic() - self.start, "post", message_id, text))
        return message_id

    async def edit(self, message_id: str, text: str) -> None:
        await self._arrive("edit", text)
        if self.fail_next_edit:
            self.fail_next_edit = False
            raise ConnectionError("platform unavailable")
        self.messages[message_id] = text
        self.calls.append((time.monotonic() - self.start, "edit", message_id, text))

    async def delete(self, message_id: str) -> None:
        del self.messages[message_id]
        self.calls.append((time.monotonic() - self.start, "delete", message_id, ""))


def delivering() -> list[asyncio.Task]:
    """EditStream's background deliveries still running: none may be left once ``finish`` returns."""
    return [t for t in asyncio.all_tasks() if t.get_name() == "botkit-edit-stream" and not t.done()]


async def test_first_text_is_posted_at_once_and_later_ones_wait_for_the_interval():
    platform = FakePlatform()
    stream = EditStream(platform.post, platform.edit, limit=2000, interval=3600)
    await stream.update("one")
    await platform.calls_made(1)  # not an hour later
    await stream.update("one two")
    await stream.update("one two three")
    # Finishing does not wait out the interval either; the texts in between were never sent.
    ids = await asyncio.wait_for(stream.finish("one two three four"), WAIT_TIMEOUT)
    assert ids == ["m1"]
    assert [call[1:] for call in platform.calls] == [
        ("post", "m1", "one"),
        ("edit", "m1", "one two three four"),
    ]


async def test_updates_within_an_interval_become_one_edit_with_the_newest_text():
    interval = 0.2
    platform = FakePlatform()
    stream = EditStream(platform.post, platform.edit, limit=2000, interval=interval)
    text = "one "
    await stream.update(text)
    await platform.calls_made(1)
    for word in "two three four five six".split():
        text += word + " "
        await stream.update(text)
    await platform.calls_made(2)
    assert [call[1] for call in platform.calls] == ["post", "edit"]
    assert platform.calls[1][3] == text.strip()
    # The edit waited for the interval (a lower bound: a busy machine only makes it later).
    assert platform.calls[1][0] - platform.calls[0][0] >= interval / 2
    ids = await stream.finish(text + "seven")
    assert ids == ["m1"]
    assert platform.messages == {"m1": "one two three four five six seven"}


async def test_update_returns_at_once_even_when_the_platform_is_slow():
    platform = FakePlatform()
    platform.hold()
    stream = EditStream(platform.post, platform.edit, limit=2000, interval=0.1)
    # Both return while the platform still holds the first post.
    await asyncio.wait_for(stream.update("hello"), WAIT_TIMEOUT)
    await asyncio.wait_for(stream.update("hello world"), WAIT_TIMEOUT)
    await platform.holding()
    assert platform.calls == []
    platform.release()
    ids = await stream.finish("hello world!")
    assert ids == ["m1"]
    assert platform.messages["m1"] == "hello world!"


async def test_finish_waits_for_the_edit_in_flight_and_delivers_the_final_text_last():
    platform = FakePlatform()
    stream = EditStream(platform.post, platform.edit, limit=2000, interval=0)
    await stream.update("a")
    await platform.calls_made(1)
    platform.hold()
    await stream.update("a b")
    await platform.holding()  # the edit to "a b" is under way
    finishing = asyncio.ensure_future(stream.finish("a b c"))
    await asyncio.sleep(0)  # finish starts, and must now wait for that edit before it sends anything
    assert not finishing.done()
    assert platform.attempts == [("post", "a"), ("edit", "a b")]
    platform.release()
    await finishing
    assert [call[1:] for call in platform.calls] == [
        ("post", "m1", "a"),
        ("edit", "m1", "a b"),
        ("edit", "m1", "a b c"),
    ]
    assert delivering() == []  # nothing stale can arrive afterwards
    assert platform.messages["m1"] == "a b c"


async def test_an_unchanged_final_text_is_not_edited_again():
    platform = FakePlatform()
    stream = EditStream(platform.post, platform.edit, limit=2000, interval=0.01)
    await stream.update("done")
    await platform.calls_made(1)
    assert await stream.finish("done") == ["m1"]
    assert [call[1] for call in platform.calls] == ["post"]


async def test_finish_without_updates_posts_every_part():
    platform = FakePlatform()
    stream = EditStream(platform.post, platform.edit, limit=50, interval=1.0)
    text = " ".join(["lorem"] * 30)
    ids = await stream.finish(text)
    assert ids == ["m1", "m2", "m3", "m4"]
    assert all(len(platform.messages[i]) <= 50 for i in ids)
    assert words(" ".join(platform.messages[i] for i in ids)) == words(text)


async def test_a_long_streamed_reply_continues_in_follow_up_messages():
    platform = FakePlatform()
    stream = EditStream(platform.post, platform.edit, limit=100, interval=0)

    def shown() -> list[str]:
        return words(" ".join(platform.messages.values()))

    text = ""
    for i in range(60):
        text += f"w{i:02d} "
        await stream.update(text)
        await eventually(lambda: shown() == words(text), what=f"w{i:02d} shown")  # noqa: B023
    ids = await stream.finish(text.strip())
    assert len(ids) == 3
    assert words(" ".join(platform.messages[i] for i in ids)) == words(text)
    # earlier parts were posted before later ones, and the first part was edited in place
    posts = [call[2] for call in platform.calls if call[1] == "post"]
    assert posts == ids
    assert any(call[1:3] == ("edit", "m1") for call in platform.calls)


async def test_a_shorter_final_text_deletes_the_parts_it_no_longer_needs():
    platform = FakePlatform()
    stream = EditStream(platform.post, platform.edit, limit=20, interval=0.0, delete=platform.delete)
    await stream.update("aaaa bbbb cccc dddd eeee ffff gggg")
    await platform.calls_made(2)
    assert len(platform.messages) == 2
    ids = await stream.finish("Sorry, I can't help.")
    assert ids == ["m1"]
    assert platform.messages == {"m1": "Sorry, I can't help."}


async def test_without_delete_spare_parts_are_marked_removed():
    platform = FakePlatform()
    stream = EditStream(platform.post, platform.edit, limit=20, interval=0.0)
    await stream.update("aaaa bbbb cccc dddd eeee ffff gggg")
    await platform.calls_made(2)
    ids = await stream.finish("")  # a blocked reply without a notice: the streamed text must go
    assert ids == []
    assert set(platform.messages.values()) == {REMOVED}


async def test_a_failed_edit_while_streaming_does_not_lose_the_final_text(caplog):
    platform = FakePlatform()
    stream = EditStream(platform.post, platform.edit, limit=2000, interval=0.02)
    await stream.update("one")
    await platform.calls_made(1)
    platform.fail_next_edit = True
    await stream.update("one two")
    await eventually(lambda: "streaming edit failed" in caplog.text, what="the failed edit logged")
    assert await stream.finish("one two three") == ["m1"]
    assert platform.messages["m1"] == "one two three"


async def test_updates_after_finish_are_ignored():
    platform = FakePlatform()
    stream = EditStream(platform.post, platform.edit, limit=2000, interval=0.0)
    await stream.finish("final")
    await stream.update("late")
    assert delivering() == []  # nothing was set off to deliver it
    assert platform.messages == {"m1": "final"}


def test_parts_fit_a_measure_other_than_their_length():
    def as_sent(part: str) -> int:  # each & is sent as &amp;
        return len(part) + 4 * part.count("&")

    text = "\n\n".join(["fish & chips & peas"] * 200) + "\n```\n" + "a&b\n" * 300 + "```"
    parts = split_text(text, 500, measure=as_sent)
    assert all(as_sent(part) <= 500 for part in parts)
    assert max(map(as_sent, parts)) > 400  # measured parts are still filled, not cut far too small
    assert split_text(text, 500) == split_text(text, 500, measure=len)
    assert "".join(parts).replace("\n", "").replace("```", "") == text.replace("\n", "").replace("```", "")
