"""Streaming a reply into a chat platform by editing a message: throttled edits, and splitting at a size limit.

Shared by the adapters of platforms that show a streamed reply as one message
edited in place (Discord, Slack). The platform calls are handed in: ``post``
sends a new message and returns its id, ``edit`` replaces a message's text,
``delete`` (optional) removes one. Rate limits are the platform library's to
wait out; this module only keeps the number of calls down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable

log = logging.getLogger("botkit.adapters.edits")

FENCE = "```"
CLOSING = "\n" + FENCE
# Shown in place of a part that the final text no longer needs, when the platform call to delete it
# was not handed in (a platform refuses an empty message).
REMOVED = "(removed)"

_FENCE_LINE = re.compile(r"^[ \t]*```")
# Characters that belong to the character before them: a cut just before one would split what
# the reader sees as one symbol (an accent from its letter, a skin tone or a joined emoji).
ZWJ = "\u200d"
_MARKS = frozenset({"Mn", "Mc", "Me"})  # combining marks: accents, vowel signs, the keycap


def _binds_to_previous(char: str) -> bool:
    code = ord(char)
    return (
        char == ZWJ
        or unicodedata.category(char) in _MARKS  # also the variation selectors (Mn)
        or 0x1F3FB <= code <= 0x1F3FF  # skin tone modifiers
        or 0xE0020 <= code <= 0xE007F  # tag characters (subdivision flags)
        or 0xDC00 <= code <= 0xDFFF  # the low half of a surrogate pair
    )


def _is_regional_indicator(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"


def _splits_a_flag(text: str, cut: int) -> bool:
    """Whether ``cut`` falls between the two regional indicators of one flag (they pair from the left)."""
    if not (_is_regional_indicator(text[cut]) and _is_regional_indicator(text[cut - 1])):
        return False
    run = 0
    while cut - run > 0 and _is_regional_indicator(text[cut - run - 1]):
        run += 1
    return run % 2 == 1


def _safe_cut(text: str, cut: int) -> int:
    """``cut`` moved left, where needed, so that ``text[:cut]`` does not end inside a symbol
    (a grapheme cluster: a letter and its marks, an emoji with its modifiers, joins and tags, a flag).
    """
    while 0 < cut < len(text) and (
        _binds_to_previous(text[cut]) or text[cut - 1] == ZWJ or _splits_a_flag(text, cut)
    ):
        cut -= 1
    return cut if cut > 0 else 1


def _open_fence(text: str, fence: str | None) -> str | None:
    """The fence line still open at the end of ``text`` (``fence`` being the one open at its start)."""
    for line in text.split("\n"):
        if _FENCE_LINE.match(line):
            fence = None if fence is not None else line.strip()
    return fence


def _room_for(fence: str, limit: int) -> bool:
    """Whether a part can afford to reopen and close a code block and still carry text."""
    return len(fence) + 1 + len(CLOSING) <= limit // 2


def _cut_point(text: str, budget: int) -> tuple[int, int]:
    """Where to cut ``text`` so that the first piece fits ``budget``: (end of the piece, start of the rest).

    A paragraph break is preferred, then a line break, then a space, as long as
    the piece keeps at least half the budget; otherwise a hard cut.
    """
    for separator in ("\n\n", "\n", " "):
        at = text.rfind(separator, 0, budget + len(separator))
        if at > 0 and at >= budget // 2:
            return at, at + len(separator)
    cut = _safe_cut(text, budget)
    return cut, cut


def _before_opening_fence(text: str, end: int, start: int, fence: str | None) -> tuple[int, int]:
    """Cut before a code block's opening line when the piece would end with it (an empty block)."""
    line_start = text.rfind("\n", 0, end) + 1
    if line_start > 0 and _FENCE_LINE.match(text[line_start:end]) and fence is None:
        if _open_fence(text[:line_start], None) is None and _open_fence(text[:end], None) is not None:
            return line_start, line_start
    return end, start


def split_text(text: str, limit: int, measure: Callable[[str], int] = len) -> list[str]:
    """Parts of at most `limit` characters, cut at a paragraph / line / space boundary where possible,
    never inside a symbol (a flag, a joined emoji, a letter and its accents) nor a surrogate pair
    unless one symbol alone is longer than `limit`; code fences (```) closed and reopened across a cut.

    ``measure`` gives a part's size as the platform counts it, when that is not
    its length (Slack counts a message as sent, escapes included): each part
    then measures at most `limit`.

    Whitespace at a cut is dropped (the platforms trim it anyway) and a part
    that would be only whitespace is left out: an empty or blank text gives ``[]``.
    """
    if limit < 1:
        raise ValueError(f"split_text: limit must be at least 1, not {limit}")
    parts: list[str] = []
    rest = text
    fence: str | None = None  # the fence line open where `rest` starts
    while rest.strip():
        prefix = f"{fence}\n" if fence is not None and _room_for(fence, limit) else ""
        if measure(prefix + rest.rstrip()) <= limit:
            parts.append(prefix + rest.rstrip())
            break
        budget = limit - len(prefix)
        while True:
            end, start, open_after = _next_piece(rest, budget, fence, limit)
            closing = CLOSING if open_after is not None and _room_for(open_after, limit) else ""
            part = prefix + rest[:end].rstrip() + closing
            size = measure(part)
            if size <= limit or budget <= 1:
                break
            # Measured longer than it is: a smaller budget, in proportion, until it fits.
            budget = max(1, min(budget - 1, budget * limit // size))
        if rest[:end].strip():
            parts.append(part)
        fence = open_after
        rest = rest[start:]
        if fence is None:
            rest = rest.lstrip("\n")
    return parts


def _next_piece(rest: str, budget: int, fence: str | None, limit: int) -> tuple[int, int, str | None]:
    """Where the next piece of ``rest`` ends and the rest starts, and the fence open after the piece."""
    end, start = _cut_point(rest, budget)
    open_after = _open_fence(rest[:end], fence)
    if open_after is not None and _room_for(open_after, limit):
        # The piece ends inside a code block: make room to close it.
        end, start = _cut_point(rest, budget - len(CLOSING))
        end, start = _before_opening_fence(rest, end, start, fence)
        open_after = _open_fence(rest[:end], fence)
    return end, start, open_after


class EditStream:
    """Delivers one streamed reply as a message edited at most once per `interval` seconds,
    split into follow-up messages at `limit` characters (``split``, when given, makes the parts
    instead: a platform that sends them rendered, and must measure them so).

    ``update`` never waits for the platform: the newest text is kept and a
    background task delivers it when the interval allows, so the first text is
    posted at once and every later text is visible at most one interval after
    it arrived. ``finish`` waits for a delivery in flight, then delivers the
    final text exactly and returns the ids of the messages that carry it.
    """

    def __init__(
        self,
        post: Callable[[str], Awaitable[str]],
        edit: Callable[[str, str], Awaitable[None]],
        *,
        limit: int,
        interval: float = 1.0,
        delete: Callable[[str], Awaitable[None]] | None = None,
        split: Callable[[str], list[str]] | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"EditStream: limit must be at least 1, not {limit}")
        if interval < 0:
            raise ValueError(f"EditStream: interval must not be negative, not {interval}")
        self._post = post
        self._edit = edit
        self._delete = delete
        self._split = split
        self.limit = limit
        self.interval = interval
        self.message_ids: list[str] = []
        self._shown: list[str] = []  # the text each message in message_ids shows now
        self._pending: str | None = None
        self._last_round = -math.inf
        self._delivering = False
        self._finished = False
        self._pump: asyncio.Task[None] | None = None

    async def update(self, text: str) -> None:
        """Take the whole reply so far; it is delivered when the interval allows."""
        if self._finished:
            return
        self._pending = text
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._deliver_pending(), name="botkit-edit-stream")

    async def finish(self, text: str) -> list[str]:
        """Deliver the final text (edits the first part, posts follow-ups); return the ids of its messages.

        Messages streamed earlier that the final text no longer needs are
        deleted (or, without ``delete``, show ``REMOVED``) and not returned.
        """
        self._finished = True
        self._pending = None
        pump = self._pump
        if pump is not None and not pump.done():
            if not self._delivering:
                pump.cancel()  # it is only waiting for the interval to pass
            await asyncio.wait({pump})
        carrying = await self._deliver(text, final=True)
        return self.message_ids[:carrying]

    async def _deliver_pending(self) -> None:
        while self._pending is not None and not self._finished:
            wait = self._last_round + self.interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            text, self._pending = self._pending, None
            if text is None or self._finished:
                return
            self._delivering = True
            try:
                await self._deliver(text, final=False)
            except Exception as error:  # the next round or finish() tries again
                log.warning(
                    "streaming edit failed (%s: %s); retrying with the next text", type(error).__name__, error
                )
            finally:
                self._delivering = False

    async def _deliver(self, text: str, *, final: bool) -> int:
        """Make the messages show ``text``: changed parts edited, new parts posted, spare ones removed.

        Returns the number of messages that carry the text.
        """
        parts = self._split(text) if self._split is not None else split_text(text, self.limit)
        if not parts and not final:
            return 0
        self._last_round = time.monotonic()
        for index, part in enumerate(parts):
            if index < len(self.message_ids):
                if self._shown[index] != part:
                    await self._edit(self.message_ids[index], part)
                    self._shown[index] = part
            else:
                self.message_ids.append(await self._post(part))
                self._shown.append(part)
        if final and len(self.message_ids) > len(parts):
            await self._remove_spare(len(parts))
        return len(parts)

    async def _remove_spare(self, keep: int) -> None:
        """The final text is shorter than what was streamed: the messages it no longer needs go."""
        spare = self.message_ids[keep:]
        if self._delete is not None:
            for message_id in spare:
                await self._delete(message_id)
            del self.message_ids[keep:], self._shown[keep:]
            return
        for index in range(keep, len(self.message_ids)):
            if self._shown[index] != REMOVED:
                await self._edit(self.message_ids[index], REMOVED)
                self._shown[index] = REMOVED
