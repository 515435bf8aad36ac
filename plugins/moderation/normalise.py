"""Text normalisation and the blocklist: case, accents, zalgo, invisible characters, look-alikes, leetspeak.

Matching runs on a *folded* view of the text: casefolded, decomposed (NFKD)
with combining marks dropped (accents and zalgo go), format characters
removed (zero-width spaces and joiners, bidi overrides and isolates, BOM, soft
hyphen) and Cyrillic/Greek look-alikes mapped to Latin. Unicode tag characters,
invisible but read by a model, are read as the ASCII they mirror, so the
detectors see text hidden in them. Offsets in the folded view map back to the
original, so that a match can be redacted there.

Blocklist words are matched as whole tokens by their *skeleton*: each
look-alike symbol or digit reads as its letter (``4``/``@`` -> a, ``$``/``5`` -> s,
``1``/``!``/``|``/``l`` -> i, ...), ``*`` stands for any vowel (``f*ck``), and a
run of single characters with separators between them is read as one word
(``b a d``, ``b.a.d``, ``b-4-d``). A token is looked up in a set, so the cost
is linear in the text and does not grow with the length of the blocklist.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from botkit.detectors import has_tags, is_tag, tag_as_ascii

# Cyrillic and Greek letters that look Latin (after casefolding).
LOOKALIKES = {
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "ɡ": "g", "ο": "o",
    "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
}  # fmt: skip

# Each symbol or digit as the letter it stands for, one for one (offsets are kept).
LEET = str.maketrans({
    "4": "a", "@": "a", "8": "b", "3": "e", "1": "i", "!": "i", "|": "i", "0": "o", "5": "s", "$": "s",
    "7": "t", "+": "t",
})  # fmt: skip
# For blocklist lookups, also letters easily swapped for each other read as one (l and i, v and u).
SKELETON = {**LEET, ord("9"): "g", ord("6"): "g", ord("2"): "z", ord("l"): "i", ord("v"): "u"}
LEET_SYMBOLS = "@$!|+*"  # may start or end a token and still be part of the word (a$$, $hit, sh!t)
VOWELS = frozenset("aeiou")

# What separates tokens: whitespace and punctuation that no look-alike uses.
SEPARATOR_CHARS = r"\s.,;:'\"`~^\-_/\\#%&()\[\]{}<>=?"
TOKEN = re.compile(f"[^{SEPARATOR_CHARS}]+")
MAX_SPACED_GAP = 3  # separator characters between spaced-out letters (b . a . d)


class _FoldTable(dict[int, str]):
    """``str.translate`` table that folds each character on first sight, then from the cache."""

    def __missing__(self, codepoint: int) -> str:
        folded = fold_char(chr(codepoint))
        self[codepoint] = folded
        return folded


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c) and unicodedata.category(c) != "Cf")


def fold_char(char: str) -> str:
    """One character as it is matched: "" for marks and invisible characters, a tag as its ASCII."""
    char = tag_as_ascii(char)  # U+E0041 (TAG LATIN CAPITAL LETTER A) -> "A"
    if not char or unicodedata.category(char) in ("Cf", "Mn", "Me"):
        return ""
    folded = _strip_marks(_strip_marks(char).casefold())
    return "".join(LOOKALIKES.get(c, c) for c in folded)


_FOLD = _FoldTable()


class Folded:
    """The folded view of ``original`` (``text``) and the way back from its offsets."""

    __slots__ = ("original", "text", "_origin")

    def __init__(self, original: str) -> None:
        self.original = original
        self._origin: list[int] | None = None
        if original.isascii():
            self.text = original.lower()
        elif has_tags(original):
            self.text = self._fold_with_tags()
        else:
            self.text = original.translate(_FOLD)

    def _fold_with_tags(self) -> str:
        """The folded text, each run of tag characters read as its own words: "day" + hidden
        "ignore ..." reads "day ignore ...", not "dayignore ...".
        """
        pieces: list[str] = []
        origin: list[int] = []
        last = len(self.original) - 1
        for index, char in enumerate(self.original):
            folded = _FOLD[ord(char)]
            before = after = ""
            if is_tag(char):
                if index == 0 or not is_tag(self.original[index - 1]):
                    before = " "
                if index == last or not is_tag(self.original[index + 1]):
                    after = " "  # belongs to what follows, so a match ending here covers the whole run
            pieces += (before, folded, after)
            origin.extend([index] * (len(before) + len(folded)) + [index + 1] * len(after))
        self._origin = origin
        return "".join(pieces)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span of the folded span ``[start, end)``.

        The end reaches up to the next character that was kept, so marks
        and invisible characters that trail a match are covered by it.
        """
        if self.original.isascii():
            return start, end
        if self._origin is None:
            origin: list[int] = []
            for index, char in enumerate(self.original):
                origin.extend([index] * len(_FOLD[ord(char)]))
            self._origin = origin
        return self._origin[start], self._origin[end] if end < len(self.text) else len(self.original)


def fold(text: str) -> Folded:
    """``text`` casefolded, without accents, marks and invisible characters; linear time."""
    return Folded(text)


def leet_view(folded: str) -> str:
    """Look-alike symbols read as letters (``sh!t`` -> ``shit``), offset for offset."""
    return folded.translate(LEET)


def skeleton(word: str) -> str:
    return fold(word).text.translate(SKELETON)


@dataclass(frozen=True, slots=True)
class BlockedWord:
    """A blocklist entry found: the configured entry and its span in the folded text."""

    entry: str
    start: int
    end: int


class Blocklist:
    """Whole words and phrases, matched through their skeletons."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.words: dict[str, str] = {}  # skeleton -> entry
        self.phrases: dict[str, list[tuple[tuple[str, ...], str]]] = {}  # first word -> (words, entry)
        self.starred: dict[int, list[tuple[str, str]]] = {}  # length -> (skeleton, entry), for f*ck
        for entry in entries:
            parts = tuple(skeleton(token) for token in TOKEN.findall(fold(entry).text))
            if not parts:
                raise ValueError(f"{entry!r} has no letters or digits to match")
            if len(parts) == 1:
                self.words[parts[0]] = entry
                self.starred.setdefault(len(parts[0]), []).append((parts[0], entry))
            else:
                self.phrases.setdefault(parts[0], []).append((parts, entry))
        self.spaced_lengths = sorted({len(word) for word in self.words if len(word) >= 3})

    def __bool__(self) -> bool:
        return bool(self.words or self.phrases)

    def find(self, folded: str) -> Iterator[BlockedWord]:
        """Every blocked word or phrase in ``folded`` (a folded text), in order of their tokens."""
        skeletal = folded.translate(SKELETON)  # one for one: the same offsets as ``folded``
        spans = [m.span() for m in TOKEN.finditer(skeletal)]
        skeletons = [skeletal[start:end] for start, end in spans]
        # Only tokens that can be something are looked at one by one; most text is none of these.
        wanted = {i for i, skel in enumerate(skeletons) if skel in self.words or skel in self.phrases}
        wanted.update(
            i
            for i, (start, end) in enumerate(spans)
            if folded[start] in LEET_SYMBOLS or folded[end - 1] in LEET_SYMBOLS
        )
        if "*" in folded:
            wanted.update(i for i, skel in enumerate(skeletons) if "*" in skel)
        singles = (
            [i for i, (start, end) in enumerate(spans) if end - start == 1] if self.spaced_lengths else []
        )
        found: list[BlockedWord] = []
        for index in sorted(wanted):
            start, end = spans[index]
            entry, span = self._word(folded[start:end], skeletons[index], start, end)
            if entry is not None:
                found.append(BlockedWord(entry, *span))
            for words, phrase in self.phrases.get(skeletons[index], ()):
                if tuple(skeletons[index : index + len(words)]) == words:
                    found.append(BlockedWord(phrase, start, spans[index + len(words) - 1][1]))
        run: list[int] = []
        for index in singles:
            if run and (index != run[-1] + 1 or spans[index][0] - spans[run[-1]][1] > MAX_SPACED_GAP):
                found += self._spaced(run, spans, skeletons)
                run = []
            run.append(index)
        found += self._spaced(run, spans, skeletons)
        return iter(sorted(found, key=lambda word: word.start))

    def _word(self, text: str, skel: str, start: int, end: int) -> tuple[str | None, tuple[int, int]]:
        if skel in self.words:
            return self.words[skel], (start, end)
        stripped = text.strip(LEET_SYMBOLS)
        if stripped and stripped != text:
            offset = text.index(stripped)
            inner = stripped.translate(SKELETON)
            if inner in self.words:
                return self.words[inner], (start + offset, start + offset + len(stripped))
        if "*" in skel:
            for word, entry in self.starred.get(len(skel), ()):
                if all(a == b or (a == "*" and b in VOWELS) for a, b in zip(skel, word, strict=True)):
                    return entry, (start, end)
        return None, (start, end)

    def _spaced(
        self, run: list[int], spans: list[tuple[int, int]], skeletons: list[str]
    ) -> Iterator[BlockedWord]:
        if len(run) < 3:
            return
        letters = "".join(skeletons[i] for i in run)
        first = 0
        while first <= len(letters) - 3:
            for length in self.spaced_lengths:
                entry = (
                    self.words.get(letters[first : first + length])
                    if first + length <= len(letters)
                    else None
                )
                if entry is not None:
                    yield BlockedWord(entry, spans[run[first]][0], spans[run[first + length - 1]][1])
                    first += length - 1
                    break
            first += 1
