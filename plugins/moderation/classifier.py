"""The offline profanity classifier: alt-profanity-check's model, shipped as botkit data, scored in pure Python.

alt-profanity-check (MIT) trained a TF-IDF word vectorizer and a linear SVM
calibrated to probabilities (sigmoid, five folds) and ships them as
scikit-learn pickles. botkit ships the numbers of that model instead, in
``profanity_weights.bin`` next to this module (its notice in
``profanity_weights.LICENSE``), written by ``scripts/gen_profanity_weights.py``:
reading them takes milliseconds and needs only the standard library, where
importing the package costs seconds and hundreds of MB for scikit-learn and
SciPy. Its own ``predict_prob`` costs about 3 ms a call, mostly scikit-learn's
input checks, and output moderation scores at every streamed update; the same
arithmetic runs here in microseconds. A test checks the scores agree with the
package's.

Text is scored as the library scores it, after folding (case, accents,
invisible characters) and with leetspeak read as letters inside words that
mix letters and symbols (``sh1t`` -> ``shit``); numbers on their own stay.

``profanity_weights.bin``: the line ``botkit profanity weights 1``, one line of
JSON (source package and version, the number of tokens, each fold's intercept
and sigmoid, the SHA-256 of the rest), then float64 little-endian numbers: the
IDF of each token, then each fold's coefficients, fold by fold; then the
vocabulary in column order as UTF-8, one token a line.
"""

from __future__ import annotations

import array
import functools
import hashlib
import json
import math
import operator
import re
import sys
from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable

from .normalise import LEET

WEIGHTS_FILE = "profanity_weights.bin"
MAGIC = b"botkit profanity weights 1\n"

_RAW_TOKEN = re.compile(r"[\w@$!|+]{2,}")
_SYMBOLS = re.compile(r"[@$!|+]")
_MIXED = re.compile(r"(?=.*[^\W\d_])(?=.*[\W\d_])", re.DOTALL)  # a letter and something else
_WORD = re.compile(r"\w\w+")  # scikit-learn's default token_pattern, (?u)\b\w\w+\b


class ClassifierUnavailable(RuntimeError):
    """The classifier's weights file is missing, or is not one this module reads."""


def words(folded: str) -> list[str]:
    """The tokens the vectorizer counts, from folded (lower-case) text."""
    if not _SYMBOLS.search(folded):  # only digits can be leet: each token stays one token
        return [w if w.isalpha() or not _MIXED.match(w) else w.translate(LEET) for w in _WORD.findall(folded)]
    found: list[str] = []
    for raw in _RAW_TOKEN.findall(folded):
        if not raw.isalpha() and _MIXED.match(raw):
            raw = raw.translate(LEET)
        found += _WORD.findall(raw)
    return found


class ProfanityModel:
    """``score(text)``: the probability that ``text`` is offensive, as alt-profanity-check computes it."""

    def __init__(
        self,
        weights: dict[str, tuple[float, tuple[float, ...]]],
        intercepts: list[float],
        sigmoids: list[tuple[float, float]],
    ) -> None:
        # token -> (idf squared, idf * the coefficient of each fold): what one occurrence adds.
        self.weights = weights
        self.intercepts = intercepts
        self.sigmoids = sigmoids  # (a, b) of each fold: p = 1 / (1 + exp(a * decision + b))
        self.empty = self._probability([0.0] * len(intercepts), 1.0)

    @classmethod
    def from_numbers(
        cls,
        tokens: Sequence[str],
        idf: Sequence[float],
        coefficients: Sequence[Sequence[float]],
        intercepts: Sequence[float],
        sigmoids: Sequence[Sequence[float]],
    ) -> ProfanityModel:
        """The model from the vectorizer's vocabulary (in column order) and IDF, and each fold's numbers."""
        products = [[weight * c for weight, c in zip(idf, fold, strict=True)] for fold in coefficients]
        squares = [weight * weight for weight in idf]
        weights = dict(zip(tokens, zip(squares, zip(*products, strict=True), strict=True), strict=True))
        if len(weights) != len(tokens):
            raise ValueError("the vocabulary repeats a token")
        return cls(weights, list(intercepts), [(a, b) for a, b in sigmoids])

    def score(self, folded: str) -> float:
        """Probability (0 to 1) that the folded text is offensive."""
        weights = self.weights
        counts: dict[str, int] = {}
        for token in words(folded):
            if token in weights:
                counts[token] = counts.get(token, 0) + 1
        if not counts:
            return self.empty
        norm = 0.0
        dots = [0.0] * len(self.intercepts)
        for token, count in counts.items():
            squared, coefficients = weights[token]
            norm += count * count * squared
            if count == 1:
                dots = list(map(operator.add, dots, coefficients))
            else:
                dots = [dot + count * c for dot, c in zip(dots, coefficients, strict=True)]
        return self._probability(dots, math.sqrt(norm))

    def _probability(self, dots: list[float], norm: float) -> float:
        # The l2-normalised TF-IDF vector's decision value per fold, calibrated, averaged.
        total = 0.0
        for dot, intercept, (a, b) in zip(dots, self.intercepts, self.sigmoids, strict=True):
            exponent = a * (dot / norm + intercept) + b
            total += 1.0 / (1.0 + math.exp(exponent)) if exponent < 700 else 0.0
        return min(total / len(dots), 1.0)


def read_weights(data: bytes) -> ProfanityModel:
    """The model from the bytes of a weights file; ``ValueError`` (or ``KeyError``...) if they are not one."""
    if not data.startswith(MAGIC):
        raise ValueError(f"it does not start with {MAGIC!r}")
    end = data.index(b"\n", len(MAGIC))
    header = json.loads(data[len(MAGIC) : end])
    body = memoryview(data)[end + 1 :]
    if hashlib.sha256(body).hexdigest() != header["sha256"]:
        raise ValueError("its checksum does not match its contents")
    size, folds = header["tokens"], len(header["intercepts"])
    numbers = array.array("d")
    numbers.frombytes(body[: size * (1 + folds) * numbers.itemsize])
    tokens = str(body[len(numbers) * numbers.itemsize :], "utf-8").split("\n")
    if sys.byteorder != "little":
        numbers.byteswap()
    if len(tokens) != size or len(numbers) != size * (1 + folds) or len(header["sigmoids"]) != folds:
        raise ValueError(f"its sizes do not add up ({len(tokens)} tokens, {len(numbers)} numbers)")
    coefficients = [numbers[size * (fold + 1) : size * (fold + 2)] for fold in range(folds)]
    return ProfanityModel.from_numbers(
        tokens, numbers[:size], coefficients, header["intercepts"], header["sigmoids"]
    )


def load_weights(where: Traversable) -> ProfanityModel:
    """The model in the weights file ``where``; ``ClassifierUnavailable`` saying why if it cannot be read."""
    try:
        data = where.read_bytes()
    except OSError as error:
        raise ClassifierUnavailable(
            f"the profanity classifier's weights cannot be read ({error}); reinstall botkit"
        ) from None
    try:
        return read_weights(data)
    except (ValueError, KeyError, TypeError, IndexError) as error:  # JSON and Unicode errors are ValueErrors
        raise ClassifierUnavailable(
            f"{where} is not a profanity weights file this botkit reads ({error}); reinstall botkit, "
            "or write it again with scripts/gen_profanity_weights.py"
        ) from None


@functools.cache
def load_model() -> ProfanityModel:
    """The shipped model, read once per process (a few tens of milliseconds)."""
    return load_weights(resources.files(__package__) / WEIGHTS_FILE)
