"""The profanity classifier's shipped weights: the package's scores, the generator's bytes, no scikit-learn."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from profanity_check import predict_prob  # the `testing` extra: the reference the shipped data must match

from botkit.plugins.moderation import classifier
from botkit.plugins.moderation.classifier import ClassifierUnavailable, load_model, load_weights, words
from botkit.plugins.moderation.normalise import fold

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "plugins" / "moderation" / classifier.WEIGHTS_FILE
HEAVY = {"sklearn", "scipy", "joblib", "profanity_check"}


def generator():
    spec = importlib.util.spec_from_file_location(
        "gen_profanity_weights", ROOT / "scripts" / "gen_profanity_weights.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WRITTEN = [
    "",
    " ",
    "\n\t  \n",
    "...!!!???",
    "you are a fucking idiot",
    "shut up you stupid bitch",
    "what a shitty piece of crap",
    "f*ck you b!tch",
    "go to hell, you worthless piece of garbage",
    "Damn, that was close.",
    "i hate mondays",
    "the weather is lovely today",
    "here is the python code you asked for",
    "how do i kill a process in linux?",
    "Thanks, that was helpful.",
    "YOU ARE AN IDIOT AND EVERYONE KNOWS IT",
    "sh1t, I forgot my keys again",
    "you're such a b1tch",
    "a$$hole driver cut me off",
    "fuuuuck this",
    "ph0ne number 555 0100 and 2024 results",
    "1234 5678 90",
    "l33t h4x0r w1th 4 d1ff3r3nt 5p3ll1ng",
    "$hit happens",
    "sh|t and sh+t",
    "Café crème brûlée, naïve façade",
    "ｆｕｃｋ full-width letters",
    "zero\u200bwidth\u200bf\u200buck",
    "Привет, как дела?",
    "これは日本語の文です",
    "emoji 😀🔥💩 and words",
    "idiot idiot idiot idiot idiot",
    "the the the the and of a an",
    "Wikipedia editors reverted the vandalism on the article about Greece",
    "Please stop adding unsourced content; it will be removed.",
    "I disagree with your edit, but let's discuss it on the talk page.",
    "You moron, learn to read before you revert my changes",
    "what the hell is going on",
    "This is a great day for a picnic in the park.",
    "the quick brown fox jumps over the lazy dog",
    "kill yourself",
    "nobody likes you, loser",
    "screw you and your stupid rules",
    "dumbass",
    "http://example.com/fuck?x=1&y=shit",
    "user@example.com wrote: you suck",
    "snake_case_identifier and CamelCaseIdentifier",
    "zzz " * 100,
    "a" * 3000,
    "x y z a b c",
]

CLEAN = (
    "the weather service said rain would reach the coast by evening so bring a coat "
    "our team shipped the release after fixing two bugs in the parser and one in the cache "
    "please read the documentation before opening an issue about configuration "
    "thank you for the thoughtful review the changes look good to me "
    "the library opens at nine and closes at six on weekdays "
    "history article sources references citation page talk discussion edit user"
).split()
OFFENSIVE = "fuck shit bitch idiot stupid moron crap damn hell ass bastard dick suck loser dumb hate".split()
LEET = "sh1t f*ck b!tch 1d10t a$$ $tup1d cr4p d4mn h3ll l0s3r fvck b1+ch".split()
OTHER = ["2024", "42", "v2", "x86_64", "é", "ü", "ß", "Ω", "😀", "...", ",", "?", "!", "@", "$$", "--"]


def generated(count: int = 300) -> list[str]:
    """Sentences drawn from the pools above with a fixed seed: mostly clean, some rude, some leet, some long."""
    pick = random.Random(15)
    texts = []
    for index in range(count):
        length = pick.choice([1, 2, 3, 5, 8, 13, 21, 40]) if index % 25 else 400
        pools = [CLEAN] * 6 + [OFFENSIVE] * 2 + [LEET, OTHER]
        sentence = [pick.choice(pick.choice(pools)) for _ in range(length)]
        if index % 7 == 0:
            sentence = [word.upper() if pick.random() < 0.3 else word for word in sentence]
        texts.append(" ".join(sentence) + pick.choice(["", ".", "!", "?", "!!"]))
    return texts


CORPUS = WRITTEN + generated()


def test_the_corpus_covers_clean_offensive_and_leetspeak_text():
    scores = [load_model().score(fold(text).text) for text in CORPUS]
    assert len(CORPUS) >= 300
    assert sum(score >= 0.9 for score in scores) >= 50 and sum(score < 0.5 for score in scores) >= 50
    assert any(fold(text).text != text.lower() for text in CORPUS)  # accents, width, invisible characters
    assert any(" ".join(words(text)) != " ".join(re.findall(r"\w\w+", text)) for text in CORPUS)  # leetspeak


def test_the_shipped_weights_give_the_packages_own_scores():
    # The package reads the tokens botkit reads (leetspeak as letters): the arithmetic is what is compared.
    model = load_model()
    folded = [fold(text).text for text in CORPUS]
    ours = [model.score(text) for text in folded]
    theirs = list(predict_prob([" ".join(words(text)) for text in folded]))
    assert ours == pytest.approx(theirs, abs=1e-9)


def test_plain_text_scores_as_the_package_scores_it_unchanged():
    plain = [text for text in CORPUS if re.fullmatch(r"[A-Za-z ,.?']*", text)]
    assert len(plain) >= 50
    ours = [load_model().score(text.lower()) for text in plain]
    assert ours == pytest.approx(list(predict_prob(plain)), abs=1e-9)


def test_the_shipped_files_are_what_the_generator_writes_from_the_installed_package():
    expected = generator().expected_files()
    assert sorted(path.name for path in expected) == ["profanity_weights.LICENSE", "profanity_weights.bin"]
    for path, data in expected.items():
        assert path.read_bytes() == data, f"{path.name} is stale: run scripts/gen_profanity_weights.py"


def test_the_shipped_files_name_their_source_and_carry_its_mit_notice():
    from importlib import metadata

    header = json.loads(SHIPPED.read_bytes().split(b"\n")[1])
    version = metadata.version("alt-profanity-check")
    assert header["source"] == {
        "package": "alt-profanity-check",
        "version": version,
        "licence": "MIT",
        "notice": "profanity_weights.LICENSE",
    }
    notice = SHIPPED.with_name("profanity_weights.LICENSE").read_text()
    assert f"alt-profanity-check {version}" in notice
    assert "MIT License" in notice and "Copyright (c) 2018 Victor Zhou" in notice
    assert "The above copyright notice and this permission notice shall be included" in notice


def test_the_moderation_plugin_scores_without_importing_scikit_learn():
    script = (
        "import sys\n"
        "import botkit.plugins.moderation\n"
        "from botkit.plugins.moderation.classifier import load_model\n"
        "assert load_model().score('you are a fucking idiot') > 0.9\n"
        f"print(','.join(sorted({{name.split('.')[0] for name in sys.modules}} & set({sorted(HEAVY)!r}))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def corrupt(data: bytes) -> dict[str, bytes]:
    magic, header, body = data.split(b"\n", 2)
    fields = json.loads(header)
    sizes = json.dumps({**fields, "tokens": fields["tokens"] - 1}).encode()
    return {
        "empty": b"",
        "another format": b"PK\x03\x04" + data[4:],
        "truncated": data[: len(data) // 2],
        "one number changed": data[:-3] + bytes([data[-3] ^ 0x40]) + data[-2:],
        "header not JSON": magic + b"\n{not json\n" + body,
        "header without a checksum": magic + b"\n" + json.dumps({"tokens": 3}).encode() + b"\n" + body,
        "sizes that do not add up": magic + b"\n" + sizes + b"\n" + body,
    }


@pytest.mark.parametrize("case", list(corrupt(SHIPPED.read_bytes())))
def test_a_corrupt_weights_file_is_refused_with_what_to_do(tmp_path, case):
    path = tmp_path / "profanity_weights.bin"
    path.write_bytes(corrupt(SHIPPED.read_bytes())[case])
    with pytest.raises(ClassifierUnavailable) as raised:
        load_weights(path)
    assert str(path) in str(raised.value)
    assert "reinstall botkit" in str(raised.value)


def test_a_missing_weights_file_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(ClassifierUnavailable, match="weights cannot be read .*; reinstall botkit"):
        load_weights(tmp_path / "profanity_weights.bin")


def test_an_intact_copy_reads_as_the_shipped_model(tmp_path):
    path = tmp_path / "copy.bin"
    path.write_bytes(SHIPPED.read_bytes())
    copy = load_weights(path)
    assert copy.weights == load_model().weights
    assert (copy.intercepts, copy.sigmoids) == (load_model().intercepts, load_model().sigmoids)
