"""How ``botkit finetune train`` batches an epoch: length grouping changes the order, never what is learned."""

from __future__ import annotations

import random

import pytest

from botkit.finetune.train import epoch_batches


def mixed_lengths(count: int, seed: int = 3) -> list[int]:
    """Example lengths as a chat export has them: mostly short, some long histories."""
    rng = random.Random(seed)
    return [
        rng.choice([rng.randint(30, 120), rng.randint(120, 400), rng.randint(400, 1000)])
        for _ in range(count)
    ]


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1 - sum(lengths) / padded


@pytest.mark.parametrize("grouped", [False, True])
def test_every_epoch_sees_every_example_once_in_full_batches(grouped):
    lengths = mixed_lengths(1001)
    for epoch in range(3):
        batches = epoch_batches(lengths, 4, seed=epoch, group_by_length=grouped)
        assert sorted(i for batch in batches for i in batch) == list(range(1001))
        assert sorted(len(batch) for batch in batches)[1:] == [4] * 250  # one batch holds the remainder


def test_the_order_is_fixed_by_the_seed_and_changes_with_it():
    lengths = mixed_lengths(400)
    first = epoch_batches(lengths, 4, seed=7, group_by_length=True)
    assert epoch_batches(lengths, 4, seed=7, group_by_length=True) == first
    assert epoch_batches(lengths, 4, seed=8, group_by_length=True) != first


def test_grouping_cuts_the_padding_of_mixed_lengths():
    lengths = mixed_lengths(2000)
    plain = padding_fraction(epoch_batches(lengths, 4, seed=0, group_by_length=False), lengths)
    grouped = padding_fraction(epoch_batches(lengths, 4, seed=0, group_by_length=True), lengths)
    assert plain > 0.4  # random batches of mixed lengths pad much
    assert grouped < 0.05 and grouped < plain / 10


def test_the_batch_with_the_longest_example_comes_first():
    lengths = mixed_lengths(600)
    batches = epoch_batches(lengths, 4, seed=0, group_by_length=True)
    assert max(lengths[i] for i in batches[0]) == max(lengths)
    # The batches are shuffled, not sorted: a long one may follow a short one.
    tops = [max(lengths[i] for i in batch) for batch in batches[1:]]
    assert tops != sorted(tops) and tops != sorted(tops, reverse=True)
