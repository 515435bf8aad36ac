"""The offline profanity classifier: alt-profanity-check's shipped model, scored in pure Python.

alt-profanity-check (MIT) ships a scikit-learn model inside its wheel: a
TF-IDF word vectorizer and a linear SVM calibrated to probabilities (sigmoid,
five folds). Nothing is downloaded. Its own ``predict_prob`` costs about 3 ms a
call, mostly scikit-learn's input checks, and output moderation scores at every
streamed update; so the model's numbers are read out once at start-up and the
same arithmetic runs here in microseconds. A test checks the scores agree
with the library's.

Text is scored as the library scores it, after folding (case, accents,
invisible characters) and with leetspeak read as letters inside words that
mix letters and symbols (``sh1t`` -> ``shit``); numbers on their own stay.
"""

from __future__ import annotations

import functools
import math
import operator
import re

from .normalise import LEET

_RAW_TOKEN = re.compile(r"[\w@$!|+]{2,}")
_SYMBOLS = re.compile(r"[@$!|+]")
_MIXED = re.compile(r"(?=.*[^\W\d_])(?=.*[\W\d_])", re.DOTALL)  # a letter and something else
_WORD = re.compile(r"\w\w+")  # scikit-learn's default token_pattern, (?u)\b\w\w+\b


class ClassifierUnavailable(RuntimeError):
    """The classifier package is missing or its model is not the kind this module reads."""


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
    def from_library(cls) -> ProfanityModel:
        try:
            from profanity_check import profanity_check as library
        except ImportError as error:
            raise ClassifierUnavailable(
                f"alt-profanity-check is not installed ({error}); pip install alt-profanity-check"
            ) from None
        vectorizer, model = library.vectorizer, library.model
        params = vectorizer.get_params()
        expected = {
            "analyzer": "word",
            "ngram_range": (1, 1),
            "norm": "l2",
            "use_idf": True,
            "sublinear_tf": False,
        }
        if any(params.get(key) != value for key, value in expected.items()) or not params.get("lowercase"):
            raise ClassifierUnavailable(f"unexpected vectorizer settings {params}")
        folds = getattr(model, "calibrated_classifiers_", None)
        if not folds or any(fold.method != "sigmoid" for fold in folds) or list(model.classes_) != [0, 1]:
            raise ClassifierUnavailable(f"unexpected classifier {model!r}")
        coefficients = [fold.estimator.coef_[0] for fold in folds]
        intercepts = [float(fold.estimator.intercept_[0]) for fold in folds]
        sigmoids = [(float(fold.calibrators[0].a_), float(fold.calibrators[0].b_)) for fold in folds]
        idf = vectorizer.idf_
        weights = {
            token: (float(idf[index]) ** 2, tuple(float(idf[index]) * float(c[index]) for c in coefficients))
            for token, index in vectorizer.vocabulary_.items()
        }
        return cls(weights, intercepts, sigmoids)

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


@functools.cache
def load_model() -> ProfanityModel:
    """The shipped model, read once per process (about a second: it imports scikit-learn)."""
    return ProfanityModel.from_library()
