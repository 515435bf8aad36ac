"""The statistics a canary rollout is judged by: Wilson score intervals and the two-proportion z-test.

Small pure functions on counts, written out here (the standard normal
distribution from ``math.erfc``), so that judging a canary needs no scientific stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# z of a two-sided 95% interval: the default confidence of the intervals canary status shows.
Z_95 = 1.959963984540054


def normal_cdf(z: float) -> float:
    """P(Z <= z) for a standard normal Z."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / trials``; (0, 1) when there are no trials.

    Unlike the plain ``p ± z·se`` interval it stays inside [0, 1] and is honest for small
    counts and for proportions near 0 or 1, which is what a fresh canary has.
    """
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be between 0 and trials ({trials}), not {successes}")
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True, slots=True)
class ProportionTest:
    """A two-proportion z-test of ``first`` against ``second`` (pooled standard error).

    ``p_greater`` is the one-sided p-value of "the first proportion is greater";
    ``p_value`` the two-sided one.
    """

    z: float
    p_value: float
    p_greater: float


def two_proportion_test(
    first: int, first_trials: int, second: int, second_trials: int
) -> ProportionTest | None:
    """Test whether ``first / first_trials`` differs from ``second / second_trials``.

    ``None`` when it cannot be computed: an arm without trials, or both proportions 0 or
    both 1 (no variance to judge by).
    """
    for successes, trials in ((first, first_trials), (second, second_trials)):
        if not 0 <= successes <= trials:
            raise ValueError(f"successes must be between 0 and trials ({trials}), not {successes}")
    if first_trials == 0 or second_trials == 0:
        return None
    pooled = (first + second) / (first_trials + second_trials)
    variance = pooled * (1 - pooled) * (1 / first_trials + 1 / second_trials)
    if variance == 0:
        return None
    z = (first / first_trials - second / second_trials) / math.sqrt(variance)
    return ProportionTest(z=z, p_value=math.erfc(abs(z) / math.sqrt(2.0)), p_greater=1 - normal_cdf(z))
