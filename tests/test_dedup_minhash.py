"""The export's numpy MinHash and LSH tuning against datasketch: same signatures, same bands, same exports.

datasketch is installed by the ``testing`` extra for these tests only; the
export itself must not import it (nor the SciPy that datasketch imports).
"""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH
from datasketch.lsh import _optimal_param
from export_helpers import SEED_CONFIG, read_records, settle, talk

from botkit.finetune import curate
from botkit.finetune.curate import Curation
from botkit.finetune.dedup import (
    NUM_PERM,
    NearDuplicateIndex,
    lsh_parameters,
    minhash,
    minhash_permutations,
    normalise,
    shingle_hashes,
)
from botkit.finetune.export import ExportOptions, SystemPrompts, run_export


def datasketch_signature(text: str, num_perm: int = NUM_PERM) -> np.ndarray:
    """What the export computed with datasketch before: ``MinHash(num_perm, hashfunc=int).update_batch``."""
    reference = MinHash(num_perm=num_perm, hashfunc=int)
    reference.update_batch([int(h) for h in shingle_hashes(normalise(text).encode("utf-8"))])
    return reference.hashvalues


def varied_texts(count: int, seed: int = 15) -> list[str]:
    """Short, long (past one 1,024-shingle chunk), empty, multilingual, emoji, repeated texts."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz     ,.?!0123456789éüßłçñ日本語中文한국어Ωλπ🙂👍🏽\t\n"
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(1, 9))) for _ in range(500)]
    texts = [
        "",
        " ",
        "a",
        "abcd",
        "abcde",
        "ABCDE",
        "abcdef",
        "   spaced    out   ",
        "🙂",
        "日本語のテキスト",
    ]
    while len(texts) < count:
        kind = rng.random()
        if kind < 0.4:
            texts.append(" ".join(rng.choices(words, k=rng.randint(1, 80))))
        elif kind < 0.7:
            texts.append("".join(rng.choices(alphabet, k=rng.randint(1, 400))))
        elif kind < 0.85:
            texts.append(" ".join(rng.choices(words, k=rng.randint(400, 1500))))  # several chunks
        else:
            texts.append(rng.choice(words) * rng.randint(1, 50))  # few distinct shingles
    return texts


def test_signatures_equal_datasketchs_for_varied_texts():
    permutations = minhash_permutations(NUM_PERM)
    for text in varied_texts(300):
        ours = minhash(shingle_hashes(normalise(text).encode("utf-8")), *permutations)
        assert ours.dtype == np.uint32
        np.testing.assert_array_equal(ours, datasketch_signature(text), err_msg=repr(text[:60]))


@pytest.mark.parametrize("num_perm", [16, 64, 128, 256])
def test_permutations_and_signatures_equal_datasketchs_for_other_sizes(num_perm):
    multipliers, increments = minhash_permutations(num_perm)
    reference = MinHash(num_perm=num_perm, hashfunc=int)
    np.testing.assert_array_equal(multipliers, reference.permutations[0])
    np.testing.assert_array_equal(increments, reference.permutations[1])
    for text in varied_texts(20, seed=num_perm):
        ours = minhash(shingle_hashes(normalise(text).encode("utf-8")), multipliers, increments)
        np.testing.assert_array_equal(ours, datasketch_signature(text, num_perm))


def test_the_arithmetic_wraps_modulo_2_32_as_datasketchs_does():
    """The documented behaviour: the finaliser and ``a * h + b`` overflow uint32 and wrap, in Python ints too."""
    multipliers, increments = minhash_permutations(NUM_PERM)
    hashes = [0xFFFFFFFF, 0xDEADBEEF, 12345, 0]
    word = (1 << 32) - 1

    def finalised(h: int) -> int:  # MurmurHash3's fmix32
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & word
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & word
        return h ^ (h >> 16)

    signature = minhash(np.array(hashes), multipliers, increments).tolist()
    for a, b, value in zip(multipliers.tolist(), increments.tolist(), signature, strict=True):
        assert value == min((a * finalised(h) + b) & word for h in hashes)
    assert max(multipliers.tolist()) * 0xFFFFFFFF > word  # the products do overflow 32 bits


def test_bands_and_rows_equal_datasketchs_for_every_threshold():
    for threshold in [round(0.05 * step, 2) for step in range(2, 20)]:  # 0.1 .. 0.95
        tuned = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        index = NearDuplicateIndex(threshold)
        assert (index.bands, index.rows) == (tuned.b, tuned.r), threshold
    # The whole range the CLI accepts, finely; datasketch's own tuning, as MinHashLSH refuses
    # the one-band answer above about 0.98.
    thresholds = [step / 1000 for step in range(1, 1000, 7)] + [0.001, 0.333, 0.667, 0.875, 0.99, 0.999]
    for threshold in thresholds:
        assert lsh_parameters(threshold, NUM_PERM) == _optimal_param(threshold, NUM_PERM, 0.5, 0.5), threshold


@pytest.mark.parametrize("num_perm", [32, 256])
def test_bands_and_rows_equal_datasketchs_for_other_sizes(num_perm):
    for threshold in (0.3, 0.5, 0.7, 0.8, 0.9):
        tuned = MinHashLSH(threshold=threshold, num_perm=num_perm)
        assert lsh_parameters(threshold, num_perm) == (tuned.b, tuned.r), threshold


class DatasketchIndex(NearDuplicateIndex):
    """The export's index as it was: datasketch's band tuning and MinHash, everything else shared."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM) -> None:
        super().__init__(threshold, num_perm)
        tuned = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.bands, self.rows = tuned.b, tuned.r
        self._num_perm = num_perm

    def signature(self, text: str) -> np.ndarray:
        return datasketch_signature(text, self._num_perm)


async def near_duplicate_corpus(bot) -> None:
    """Answers edited a few words at a time: similarities from well below to well above 0.8."""
    rng = random.Random(8)
    words = [f"{rng.choice('bcdfgklmnprst')}{rng.choice('aeiou')}{rng.choice('nrst')}{n}" for n in range(400)]
    for base in range(6):
        answer = " ".join(rng.choices(words, k=80))
        for variant in range(8):  # similarity to the first from 1.0 down to about 0.65
            edited = answer.split()
            for _ in range(2 * variant):
                edited[rng.randrange(len(edited))] = rng.choice(words)
            question = f"Question {base} asked the {variant}th way?"
            await talk(bot, question, " ".join(edited), channel=f"c{base}-{variant}")
    await settle(bot)


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9])
async def test_exports_keep_and_remove_the_same_examples_as_with_datasketch(
    make_bot, tmp_path, monkeypatch, threshold
):
    prompts = SystemPrompts(fixed="Be brief.")
    curation = Curation(near_duplicates=threshold)
    async with make_bot({**SEED_CONFIG, "storage": {"data_dir": str(tmp_path / "data")}}) as bot:
        await near_duplicate_corpus(bot)
        options = {"formats": ("alpaca-jsonl",), "validation_fraction": 0.0, "curation": curation}
        ours = await run_export(bot.db, ExportOptions(out=tmp_path / "numpy", **options), prompts)
        monkeypatch.setattr(curate, "NearDuplicateIndex", DatasketchIndex)
        theirs = await run_export(bot.db, ExportOptions(out=tmp_path / "datasketch", **options), prompts)

    removed = ours.counts.steps["near duplicates"].removed
    assert 0 < removed < 42  # some variants are near duplicates at this threshold, not all of them
    assert removed == theirs.counts.steps["near duplicates"].removed
    kept = read_records(tmp_path / "numpy" / "alpaca-jsonl" / "train.jsonl")
    assert kept == read_records(tmp_path / "datasketch" / "alpaca-jsonl" / "train.jsonl")
    assert len(kept) == 48 - removed


def test_near_duplicate_removal_imports_neither_datasketch_nor_scipy():
    probe = (
        "import sys\n"
        "from botkit.finetune.dedup import NearDuplicateIndex\n"
        "index = NearDuplicateIndex(0.8)\n"
        "assert not index.seen_or_add('the quick brown fox jumps over the lazy dog')\n"
        "assert index.seen_or_add('The quick brown fox  jumps over the lazy dog')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'datasketch', 'scipy'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_thresholds_that_give_one_band_work():
    """Above about 0.98 the tuning gives one band of 128 rows, which datasketch's MinHashLSH refused."""
    index = NearDuplicateIndex(0.99)
    text = "the quick brown fox jumps over the lazy dog " * 5
    assert (index.bands, index.rows) == (1, 128)
    assert not index.seen_or_add(text)
    assert index.seen_or_add(text.upper())  # the same once normalised
    assert not index.seen_or_add(text + "and then some more")
