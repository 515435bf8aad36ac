"""The filters of ``botkit finetune synth``: the prefix-indexed ROUGE-L filter keeps what the exhaustive one keeps."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from rouge_score import rouge_scorer
from synth_data import synthetic_instructions

from botkit.finetune.synth_filter import (
    ExhaustiveRouge,
    InstructionFilter,
    PrefixRouge,
    min_overlap,
    rouge_tokenizer,
)

SAMPLE = 2_000


@pytest.fixture(scope="module")
def sample() -> list[list[str]]:
    tokenizer = rouge_tokenizer()
    return [tokenizer.tokenize(text) for text in synthetic_instructions(SAMPLE)]


def test_the_exhaustive_reference_scores_as_rouge_score_does(sample):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    texts = synthetic_instructions(SAMPLE)
    reference = ExhaustiveRouge()
    kept = [index for index in range(300) if not reference.similar_or_add(sample[index])]
    draw = random.Random(1)
    close = 0
    for index in draw.sample(range(300, SAMPLE), 60):
        scores = reference.scores(sample[index])
        for position, kept_index in enumerate(kept):
            expected = scorer.score(texts[kept_index], texts[index])["rougeL"].fmeasure
            assert scores[position] == expected, (texts[kept_index], texts[index])
            close += expected >= 0.5
    assert close > 0  # the sample has pairs near the threshold, not only unrelated ones


def test_prefix_filter_keeps_exactly_what_comparing_every_pair_keeps(sample):
    seeds = [rouge_tokenizer().tokenize(t) for t in synthetic_instructions(175, seed=99)]
    counts = Counter(t for tokens in seeds for t in tokens)
    fast, reference = PrefixRouge(rank_counts=counts), ExhaustiveRouge()
    fast_kept = [not fast.similar_or_add(tokens) for tokens in sample]
    reference_kept_flags = [not reference.similar_or_add(tokens) for tokens in sample]
    assert fast_kept == reference_kept_flags
    rejected = SAMPLE - sum(fast_kept)
    assert 100 < rejected < SAMPLE // 2  # the threshold really decides on many instructions
    # ROUGE-L was computed for a small share of the pairs the exhaustive filter scores.
    pairs = sum(index for index, _ in enumerate(fast.kept))
    assert fast.comparisons < pairs / 50


def test_the_order_of_the_prefix_only_changes_how_many_candidates_there_are(sample):
    # No token counts at all (every token ranked by its hash): the same kept set.
    ranked, unranked = PrefixRouge(rank_counts=None), ExhaustiveRouge()
    subset = sample[:600]
    assert [ranked.similar_or_add(t) for t in subset] == [unranked.similar_or_add(t) for t in subset]


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9, 1.0])
def test_min_overlap_is_a_lower_bound_for_every_pair_at_the_threshold(threshold):
    # The lemma the prefix rests on, checked on all length pairs up to 60 tokens:
    # F = 2 L / (m + n) >= t with L <= min(m, n) implies L >= min_overlap(m).
    for m in range(1, 61):
        for n in range(1, 61):
            for lcs in range(0, min(m, n) + 1):
                if 2 * lcs / (m + n) >= threshold:
                    assert lcs >= min_overlap(m, threshold), (m, n, lcs)


def test_each_filter_names_its_reason():
    checks = InstructionFilter()
    checks.seed(["Write a haiku about autumn leaves falling in the park."])
    assert checks.reason("Hi there") == "too short"
    assert checks.reason("word " * 151) == "too long"
    assert checks.reason("Describe the image below in three sentences.") == "unsuitable"
    assert checks.reason("Plot the sales figures of last year as a bar chart.") == "unsuitable"
    assert checks.reason("Give three reasons why people enjoy hiking in mountains.") is None
    assert checks.reason("give three reasons why people  enjoy hiking in mountains.") == "exact duplicate"
    assert checks.reason("Give three reasons why people enjoy hiking in mountains!!") == "near duplicate"
    assert checks.reason("Write a haiku about autumn leaves falling in the garden.") == "similar (ROUGE-L)"
    assert checks.reason("Explain how a bicycle gear system works to a child.") is None
    assert dict(checks.rejected) == {
        "too short": 1,
        "too long": 1,
        "unsuitable": 2,
        "exact duplicate": 1,
        "near duplicate": 1,
        "similar (ROUGE-L)": 1,
    }
