"""The study statistics against published values and independent implementations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as scipy_stats
from sklearn.metrics import cohen_kappa_score

from generative_service.evals import stats

# Newcombe (1998), "Two-sided confidence intervals for the single proportion", table I, method 3.
NEWCOMBE_WILSON = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
]


@pytest.mark.parametrize(("k", "n", "low", "high"), NEWCOMBE_WILSON)
def test_wilson_interval_matches_newcombe(k: int, n: int, low: float, high: float) -> None:
    got = stats.wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_without_votes_is_none() -> None:
    assert stats.wilson_interval(0, 0) is None


def test_votes_needed_gives_the_asked_power() -> None:
    n = stats.votes_needed(0.1)
    assert n == 194  # (1.96 * 0.5 + 0.8416 * sqrt(0.24))^2 / 0.1^2 = 193.9
    # The exact binomial test at that n rejects 0.5 with about 80 % power when the truth is 0.6.
    critical = scipy_stats.binom.ppf(0.975, n, 0.5)
    power = scipy_stats.binom.sf(critical, n, 0.6) + scipy_stats.binom.cdf(n - critical - 1, n, 0.6)
    assert 0.75 < power < 0.85
    assert stats.votes_needed(0.2) < n < stats.votes_needed(0.05)
    with pytest.raises(ValueError):
        stats.votes_needed(0.5)


def test_bradley_terry_of_two_arms_is_the_win_share() -> None:
    strengths = stats.bradley_terry(np.array([[0, 30], [10, 0]]), pseudo=0.0)
    assert strengths == pytest.approx([0.75, 0.25], abs=1e-6)


def test_bradley_terry_is_the_maximum_likelihood_fit() -> None:
    wins = np.array([[0, 8, 5], [3, 0, 7], [4, 2, 0]], dtype=float)

    def negative_log_likelihood(log_s: np.ndarray) -> float:
        s = np.exp(log_s)
        return -sum(
            wins[i, j] * np.log(s[i] / (s[i] + s[j])) for i in range(3) for j in range(3) if i != j
        )

    fit = optimize.minimize(negative_log_likelihood, np.zeros(3), method="BFGS", tol=1e-12)
    expected = np.exp(fit.x) / np.exp(fit.x).sum()
    assert stats.bradley_terry(wins, pseudo=0.0) == pytest.approx(expected, abs=1e-5)


def test_bradley_terry_stays_finite_when_an_arm_never_wins() -> None:
    strengths = stats.bradley_terry(np.array([[0, 5, 5], [0, 0, 3], [0, 2, 0]]))
    assert np.all(strengths > 0) and strengths[0] > 0.8


def test_bootstrap_interval_brackets_the_strength() -> None:
    outcomes = [(0, 1, 1.0)] * 20 + [(0, 1, 0.0)] * 5 + [(1, 2, 1.0)] * 15 + [(0, 2, 0.5)] * 4
    point, lower, upper = stats.bradley_terry_bootstrap(outcomes, 3, samples=200)
    assert np.all(lower <= point) and np.all(point <= upper)
    assert point.argmax() == 0 and point.argmin() == 2
    assert upper[2] < lower[0]  # 0 is clearly stronger than 2


def test_fleiss_kappa_matches_fleiss_1971_example() -> None:
    # The worked example of Fleiss' kappa (10 subjects, 14 raters, 5 categories): kappa = 0.210.
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]  # fmt: skip
    ratings = [[str(c) for c, count in enumerate(row) for _ in range(count)] for row in table]
    assert stats.fleiss_kappa(ratings) == pytest.approx(0.20993, abs=1e-4)


def test_fleiss_kappa_of_perfect_agreement_is_one() -> None:
    assert stats.fleiss_kappa([["a", "a"], ["b", "b", "b"], ["a", "a"]]) == pytest.approx(1.0)
    assert stats.fleiss_kappa([["a"]]) is None


def test_cohen_kappa_matches_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    first = rng.choice(["first", "second", "tie"], 60).tolist()
    second = [
        a if rng.random() < 0.6 else str(rng.choice(["first", "second", "tie"])) for a in first
    ]
    assert stats.cohen_kappa(first, second) == pytest.approx(cohen_kappa_score(first, second))
