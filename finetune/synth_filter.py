"""The filters of ``botkit finetune synth``: what a generated instruction must pass to be kept.

In order: length in words, things a text model cannot do (images, files, graphs...),
exact duplicates, near duplicates (MinHash, ``dedup.NearDuplicateIndex``), and
Self-Instruct's rule: a ROUGE-L F-measure (``rouge-score``, no stemmer) below the
threshold against every instruction kept so far, the seed tasks included.

The ROUGE-L filter is exact: it keeps the very set that comparing each
instruction with every kept one keeps (``ExhaustiveRouge``, the reference, which
tests/test_synth_filter.py and bench/bench_synth.py compare it with). MinHash LSH
could only make a missed pair unlikely: ROUGE-L >= 0.7 implies no more than a
multiset Jaccard similarity of 7/13, where bands that miss such a pair with
probability below 1e-9 (2 rows, 64 bands of 128 permutations) make about half of
all unrelated pairs candidates. Candidates come instead from prefix filtering,
as set-similarity joins do: the LCS of two token lists is at most their multiset
overlap, so ROUGE-L F = 2 LCS / (m + n) >= t needs an overlap of at least
t m / (2 - t) tokens of an m-token instruction (as LCS <= n). Ranking every token
(with its occurrence number) in one global order, two instructions that share
that many tokens share one among the first m - ceil(t m / (2 - t)) + 1 of each:
the first shared token in the order is preceded in each list only by tokens the
other lacks. An inverted index of those prefixes gives every pair that can reach
the threshold; a positional bound, then the multiset overlap, drop most of them
before rouge-score computes the LCS. The order (rarest first, by the seed tasks'
counts) only decides how few candidates there are, never which are kept.
Instructions that share a rare token still meet in its posting list, so the
work per instruction grows with the number kept, far slower than the
exhaustive filter's (bench/README.md).
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from botkit import BotkitError

from .dedup import NearDuplicateIndex, fingerprint

ROUGE_THRESHOLD = 0.7
NEAR_DUPLICATE_THRESHOLD = 0.8
MIN_WORDS = 3
MAX_WORDS = 150
# Alpaca's list (generate_instruction.py): tasks about things a text-only model cannot see or make.
UNSUITABLE_WORDS = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)  # fmt: skip
_UNSUITABLE = re.compile(
    r"\b(" + "|".join(re.escape(word) for word in UNSUITABLE_WORDS) + r")\b", re.IGNORECASE
)
# The filters in the order they run, as counted in the output and the card.
FILTERS = ("too short", "too long", "unsuitable", "exact duplicate", "near duplicate", "similar (ROUGE-L)")
# Floating-point slack: ROUGE-L is compared as rouge-score computes it, the bound is kept a bit lower.
_SLACK = 1e-6
# A posting: the kept instruction's number, shifted, and the token's place in its ordered list.
_PLACE_BITS = 10
_PLACE_MASK = (1 << _PLACE_BITS) - 1


def rouge_tokenizer() -> Any:
    """rouge-score's default tokenizer (lower case, ``[a-z0-9]+`` tokens, no stemming), as Self-Instruct uses."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise BotkitError("botkit finetune synth needs rouge-score: pip install 'botkit[finetune]'") from None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)._tokenizer


def rouge_l(first: list[str], second: list[str]) -> float:
    """ROUGE-L F-measure of two token lists, computed by rouge-score (as Alpaca's generator calls it)."""
    from rouge_score import rouge_scorer

    return float(rouge_scorer._score_lcs(first, second).fmeasure)


def min_overlap(length: int, threshold: float) -> int:
    """Fewest tokens an instruction of ``length`` tokens shares with one it is at least ``threshold`` similar to."""
    bound = threshold - _SLACK
    return max(1, math.ceil(length * bound / (2 - bound) - 1e-9))


class ExhaustiveRouge:
    """The reference: each instruction compared with every kept one (quadratic; for tests and the bench).

    The LCS of the new instruction with all kept ones at once, bit-parallel over numpy
    arrays (Allison and Dix: one 64-bit word per kept instruction, one step per token
    of the longest), so instructions of up to 64 tokens; the F-measure is computed as
    rouge-score computes it (``2 * P * R / (P + R)``), so the scores are rouge-score's
    (tests/test_synth_filter.py checks them against ``RougeScorer.score``).
    """

    WIDTH = 64

    def __init__(self, threshold: float = ROUGE_THRESHOLD) -> None:
        import numpy as np

        self._np = np
        self.threshold = threshold
        self._ids: dict[str, int] = {}
        self._rows = np.full((0, 0), -1, dtype=np.int64)
        self._lengths = np.zeros(0, dtype=np.int64)
        self.count = 0

    def scores(self, tokens: list[str]) -> Any:
        """ROUGE-L F-measure of ``tokens`` with each kept instruction, in the order kept."""
        np = self._np
        if len(tokens) > self.WIDTH:
            raise ValueError(f"the exhaustive reference takes at most {self.WIDTH} tokens")
        rows, lengths = self._rows[: self.count], self._lengths[: self.count]
        # masks[id]: the positions of token id in ``tokens``; the last entry (id -1: padding) none.
        masks = np.zeros(len(self._ids) + 1, dtype=np.uint64)
        for position, token in enumerate(tokens):
            if token in self._ids:
                masks[self._ids[token]] |= np.uint64(1 << position)
        columns = np.uint64((1 << len(tokens)) - 1) if tokens else np.uint64(0)
        state = np.full(self.count, columns, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for column in range(rows.shape[1]):
                matched = state & masks[rows[:, column]]
                state = ((state + matched) | (state - matched)) & columns
        lcs = (len(tokens) - np.bitwise_count(state)).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = lcs / len(tokens) if tokens else np.zeros(self.count)
            recall = lcs / lengths
            total = precision + recall
            fmeasure = np.where(total > 0, 2 * precision * recall / total, 0.0)
        return np.where(lengths > 0, fmeasure, 0.0) if tokens else np.zeros(self.count)

    def similar_or_add(self, tokens: list[str]) -> bool:
        np = self._np
        if self.count and bool((self.scores(tokens) >= self.threshold).any()):
            return True
        if self.count == len(self._rows) or len(tokens) > self._rows.shape[1]:
            shape = (max(16, 2 * len(self._rows)), max(len(tokens), self._rows.shape[1]))
            grown = np.full(shape, -1, dtype=np.int64)
            grown[: self.count, : self._rows.shape[1]] = self._rows[: self.count]
            self._rows = grown
            self._lengths = np.resize(self._lengths, shape[0])
        self._rows[self.count, : len(tokens)] = [self._ids.setdefault(t, len(self._ids)) for t in tokens]
        self._lengths[self.count] = len(tokens)
        self.count += 1
        return False


def _overlap(counts: Counter[str], other: list[str]) -> int:
    """How many tokens of ``other`` a multiset with ``counts`` has (their multiset intersection's size)."""
    return sum(min(count, counts[token]) for token, count in Counter(other).items() if token in counts)


class PrefixRouge:
    """ROUGE-L against every kept instruction, computed only for the candidates of a prefix index.

    ``similar_or_add(tokens)``: True when a kept instruction's ROUGE-L F-measure with
    ``tokens`` reaches the threshold; otherwise the tokens are kept and False.
    ``rank_counts``: token counts that decide the global order (rarest first).

    The posting lists hold each kept instruction's number and the token's place in its
    ordered list (PPJoin's positional filter): when the first token two instructions
    share is at place i of one and j of the other, no token before it is shared, so
    they share at most min(m - i, n - j); candidates that cannot reach the overlap the
    threshold needs are dropped in numpy, before any Python loop.
    """

    def __init__(self, threshold: float = ROUGE_THRESHOLD, rank_counts: Counter[str] | None = None) -> None:
        import numpy as np

        if not 0.0 < threshold <= 1.0:
            raise ValueError("the ROUGE-L threshold must be above 0 and at most 1")
        self._np = np
        self.threshold = threshold
        self.rank_counts = rank_counts or Counter()
        self.kept: list[list[str]] = []
        self._lengths = np.zeros(1024, dtype=np.int64)
        self._index: dict[tuple[str, int], list[int]] = {}
        self.comparisons = 0

    def _prefix(self, tokens: list[str]) -> list[tuple[str, int]]:
        seen: Counter[str] = Counter()
        items = []
        for token in tokens:
            seen[token] += 1
            items.append((token, seen[token]))
        counts = self.rank_counts
        # Any fixed order is exact; rarest first makes the posting lists short. The crc32
        # breaks ties the same way in every run (str hashes are salted per process).
        items.sort(key=lambda item: (counts[item[0]], zlib.crc32(item[0].encode()), item[1]))
        return items[: len(tokens) - min_overlap(len(tokens), self.threshold) + 1]

    def _candidates(self, prefix: list[tuple[str, int]], length: int) -> list[int]:
        """Kept instructions that may share enough tokens with one of ``length`` tokens and this prefix."""
        np = self._np
        postings, places = [], []
        for place, item in enumerate(prefix):
            posting = self._index.get(item)
            if posting:
                postings.append(posting)
                places.append(np.full(len(posting), place, dtype=np.int64))
        if not postings:
            return []
        total = sum(len(posting) for posting in postings)
        codes = np.fromiter(itertools.chain.from_iterable(postings), dtype=np.int64, count=total)
        mine = np.concatenate(places)
        order = np.argsort(codes >> _PLACE_BITS, kind="stable")  # by instruction, then by place here
        codes, mine = codes[order], mine[order]
        numbers, first, matches = np.unique(codes >> _PLACE_BITS, return_index=True, return_counts=True)
        last = first + matches - 1
        others = self._lengths[numbers]
        # Tokens shared before the last match in both lists are all matches of the two
        # prefixes (counted); after it, at most what is left of the shorter remainder.
        shared = matches + np.minimum(length - 1 - mine[last], others - 1 - (codes[last] & _PLACE_MASK))
        bound = self.threshold - _SLACK
        return numbers[2 * shared >= bound * (length + others) - 1e-9].tolist()

    def similar_or_add(self, tokens: list[str]) -> bool:
        np = self._np
        prefix = self._prefix(tokens) if tokens else []  # rouge-score scores no tokens 0: never similar
        counts = Counter(tokens)
        for number in self._candidates(prefix, len(tokens)):
            other = self.kept[number]
            # LCS <= the multiset overlap: a cheap bound rules most candidates out.
            if 2 * _overlap(counts, other) < (self.threshold - _SLACK) * (len(tokens) + len(other)):
                continue
            self.comparisons += 1
            if rouge_l(tokens, other) >= self.threshold:
                return True
        number = len(self.kept)
        self.kept.append(tokens)
        if number == len(self._lengths):
            self._lengths = np.resize(self._lengths, 2 * number)
        self._lengths[number] = len(tokens)
        for place, item in enumerate(prefix):
            # A place past the mask is stored smaller: the bound only gets looser, never wrong.
            self._index.setdefault(item, []).append(number << _PLACE_BITS | min(place, _PLACE_MASK))
        return False


@dataclass
class InstructionFilter:
    """Every filter of a synth run, with its counts; ``seed(...)`` the seed tasks, ``check(...)`` a new one."""

    rouge_threshold: float = ROUGE_THRESHOLD
    near_duplicate: float | None = NEAR_DUPLICATE_THRESHOLD
    min_words: int = MIN_WORDS
    max_words: int = MAX_WORDS
    rejected: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._tokenizer = rouge_tokenizer()
        self._exact: set[int] = set()
        self._near = NearDuplicateIndex(self.near_duplicate) if self.near_duplicate is not None else None
        self._rouge: PrefixRouge | None = None

    def tokens(self, instruction: str) -> list[str]:
        return list(self._tokenizer.tokenize(instruction))

    def seed(self, instructions: Iterable[str]) -> None:
        """Remember the seed tasks (and, on resume, the instructions kept before): new ones are compared with them.

        Call once, before ``check``; the seeds' token counts set the prefix order.
        """
        texts = list(instructions)
        tokenized = [self.tokens(text) for text in texts]
        self._rouge = PrefixRouge(self.rouge_threshold, Counter(t for tokens in tokenized for t in tokens))
        for text, tokens in zip(texts, tokenized, strict=True):
            self._remember(text, tokens)

    def _remember(self, text: str, tokens: list[str]) -> None:
        self._exact.add(fingerprint(text))
        if self._near is not None:
            self._near.seen_or_add(text)
        assert self._rouge is not None
        self._rouge.similar_or_add(tokens)

    def reason(self, instruction: str) -> str | None:
        """Why ``instruction`` is rejected (one of ``FILTERS``), or None when it is kept (and remembered)."""
        if self._rouge is None:
            self.seed(())
        assert self._rouge is not None
        words = len(instruction.split())
        if words < self.min_words:
            return self._reject("too short")
        if words > self.max_words:
            return self._reject("too long")
        if _UNSUITABLE.search(instruction):
            return self._reject("unsuitable")
        key = fingerprint(instruction)
        if key in self._exact:
            return self._reject("exact duplicate")
        if self._near is not None and self._near.seen_or_add(instruction):
            return self._reject("near duplicate")
        self._exact.add(key)
        if self._rouge.similar_or_add(self.tokens(instruction)):
            return self._reject("similar (ROUGE-L)")
        return None

    def _reject(self, reason: str) -> str:
        self.rejected[reason] += 1
        return reason
