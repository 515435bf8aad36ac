"""Write the profanity classifier's weights, read out of alt-profanity-check's model, as botkit data.

alt-profanity-check (MIT) ships its model as scikit-learn pickles; botkit
ships the numbers instead, so that running the bot needs neither the package
nor scikit-learn. With the package installed (the ``testing`` extra), run from
the repository root::

    .venv/bin/python scripts/gen_profanity_weights.py           # writes the two files below
    .venv/bin/python scripts/gen_profanity_weights.py --check   # exit 1 if they differ from the package

It writes ``plugins/moderation/profanity_weights.bin`` (the layout is in
``plugins/moderation/classifier.py``) and ``profanity_weights.LICENSE`` next to
it: the package's licence, which its numbers are shipped under.
"""

from __future__ import annotations

import argparse
import array
import hashlib
import json
import sys
from importlib import metadata
from pathlib import Path

from botkit.plugins.moderation.classifier import MAGIC, WEIGHTS_FILE

PACKAGE = "alt-profanity-check"
FOLDER = Path(__file__).resolve().parent.parent / "plugins" / "moderation"
LICENCE_FILE = WEIGHTS_FILE.removesuffix(".bin") + ".LICENSE"
# The vectorizer settings that classifier.py's arithmetic reproduces; another model is refused.
VECTORIZER = {
    "analyzer": "word",
    "lowercase": True,
    "token_pattern": r"(?u)\b\w\w+\b",
    "ngram_range": (1, 1),
    "binary": False,
    "norm": "l2",
    "use_idf": True,
    "sublinear_tf": False,
}


class UnexpectedModel(RuntimeError):
    """The installed package's model is not the kind classifier.py scores."""


def read_model() -> dict:
    """The numbers of the installed package's model: vocabulary in column order, IDF, each fold's."""
    from profanity_check import profanity_check as library  # imports scikit-learn: seconds

    vectorizer, model = library.vectorizer, library.model
    params = vectorizer.get_params()
    if any(params.get(key) != value for key, value in VECTORIZER.items()):
        raise UnexpectedModel(f"unexpected vectorizer settings {params}")
    if params["preprocessor"] is not None or params["tokenizer"] is not None:
        raise UnexpectedModel("the vectorizer has its own preprocessor or tokenizer")
    folds = getattr(model, "calibrated_classifiers_", None)
    if not folds or any(fold.method != "sigmoid" for fold in folds) or list(model.classes_) != [0, 1]:
        raise UnexpectedModel(f"unexpected classifier {model!r}")
    tokens = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.__getitem__)
    if [vectorizer.vocabulary_[token] for token in tokens] != list(range(len(tokens))):
        raise UnexpectedModel("the vocabulary's columns are not 0..n-1")
    if any("\n" in token for token in tokens):
        raise UnexpectedModel("a token holds a line break")
    return {
        "version": metadata.version(PACKAGE),
        "tokens": tokens,
        "idf": [float(weight) for weight in vectorizer.idf_],
        "coefficients": [[float(c) for c in fold.estimator.coef_[0]] for fold in folds],
        "intercepts": [float(fold.estimator.intercept_[0]) for fold in folds],
        "sigmoids": [[float(fold.calibrators[0].a_), float(fold.calibrators[0].b_)] for fold in folds],
    }


def encode(model: dict) -> bytes:
    """The weights file's bytes: the same model always gives the same bytes."""
    vocabulary = "\n".join(model["tokens"]).encode("utf-8")
    numbers = array.array("d", model["idf"])
    for fold in model["coefficients"]:
        numbers.extend(fold)
    if sys.byteorder != "little":
        numbers.byteswap()
    body = numbers.tobytes() + vocabulary  # numbers first: git and editors see a binary file at once
    header = {
        "source": {"package": PACKAGE, "version": model["version"], "licence": "MIT", "notice": LICENCE_FILE},
        "model": "TF-IDF of words, l2-normalised; per fold a linear SVM and a sigmoid; folds averaged",
        "tokens": len(model["tokens"]),
        "intercepts": model["intercepts"],
        "sigmoids": model["sigmoids"],
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    return MAGIC + json.dumps(header, separators=(",", ":")).encode("ascii") + b"\n" + body


def licence_notice(version: str) -> str:
    """The package's own licence text, after a line saying what it covers."""
    distribution = metadata.distribution(PACKAGE)
    licences = [f for f in distribution.files or [] if f.name in ("LICENSE", "LICENSE.txt", "LICENCE")]
    if not licences:
        raise UnexpectedModel(f"{PACKAGE} {version} ships no LICENSE file")
    text = licences[0].read_text(encoding="utf-8")
    return (
        f"{WEIGHTS_FILE} holds the numbers of the model that {PACKAGE} {version}\n"
        f"ships (https://github.com/dimitrismistriotis/alt-profanity-check), under its licence:\n\n{text}"
    )


def expected_files() -> dict[Path, bytes]:
    """What the two files should hold, from the installed package."""
    model = read_model()
    return {
        FOLDER / WEIGHTS_FILE: encode(model),
        FOLDER / LICENCE_FILE: licence_notice(model["version"]).encode("utf-8"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for path, data in expected_files().items():
        if path.exists() and path.read_bytes() == data:
            continue
        stale.append(path)
        if not args.check:
            path.write_bytes(data)
            print(f"wrote {path} ({len(data):,} bytes)")
    if args.check and stale:
        print("out of date: " + ", ".join(str(p) for p in stale) + "; run scripts/gen_profanity_weights.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
