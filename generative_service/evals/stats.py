"""The statistics of an A/B study: intervals, Bradley-Terry strengths, agreement, sample sizes.

Pure functions of vote counts (no Redis, no HTTP), so each is tested against known values.
Conventions: a *decisive* vote picks one image; ties count half a win to each side in the
Bradley-Terry fit and are reported apart from win rates; skips are left out everywhere.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import special
from scipy import stats as scipy_stats

BT_PSEUDO_WINS = (
    0.1  # per compared pair and direction: keeps strengths finite when an arm never wins
)
BT_MAX_ITERATIONS = 100
BT_TOLERANCE = 1e-9


def wilson_interval(successes: int, trials: int) -> tuple[float, float] | None:
    """Wilson score 95 % interval of a binomial proportion (no continuity correction); None if no trials."""
    if trials <= 0:
        return None
    interval = scipy_stats.binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    return float(interval.low), float(interval.high)


def binomial_p_value(successes: int, trials: int, p: float = 0.5) -> float | None:
    """Two-sided exact binomial test of `successes` in `trials` against `p`; None if no trials."""
    if trials <= 0:
        return None
    return float(scipy_stats.binomtest(successes, trials, p).pvalue)


def votes_needed(difference: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Decisive votes needed to tell a win rate of 0.5 + `difference` from 0.5 (two-sided test).

    The normal-approximation sample size of a one-sample test of a proportion:
    n = ((z_{1-alpha/2} * sqrt(p0 q0) + z_{power} * sqrt(p1 q1)) / (p1 - p0))^2, rounded up.
    """
    if not 0 < abs(difference) < 0.5:
        raise ValueError("difference must be between 0 and 0.5 (exclusive)")
    p0, p1 = 0.5, 0.5 + abs(difference)
    z_alpha = scipy_stats.norm.ppf(1 - alpha / 2)
    z_beta = scipy_stats.norm.ppf(power)
    root = z_alpha * math.sqrt(p0 * (1 - p0)) + z_beta * math.sqrt(p1 * (1 - p1))
    return math.ceil((root / (p1 - p0)) ** 2)


def bradley_terry(wins: np.ndarray, *, pseudo: float = BT_PSEUDO_WINS) -> np.ndarray:
    """Bradley-Terry strengths (summing to 1) from `wins[i, j]` = times i beat j.

    The maximum-likelihood fit over log-strengths by Newton's method with a backtracking line
    search (the log-likelihood is concave). `pseudo` wins are added in both directions for every
    pair that was compared at all, so an arm that never won gets a small finite strength.
    """
    wins = np.asarray(wins, dtype=float)
    wins = wins + pseudo * ((wins + wins.T) > 0)
    games = wins + wins.T

    def log_likelihood(theta: np.ndarray) -> float:
        # log P(i beats j) = -log(1 + exp(-(theta_i - theta_j)))
        return -float(np.sum(wins * np.logaddexp(0.0, theta[None, :] - theta[:, None])))

    theta = np.zeros(len(wins))
    current = log_likelihood(theta)
    for _ in range(BT_MAX_ITERATIONS):
        p = special.expit(theta[:, None] - theta[None, :])
        gradient = (wins - games * p).sum(axis=1)
        weight = games * p * p.T
        information = np.diag(weight.sum(axis=1)) - weight  # minus the Hessian; singular along 1
        step = np.linalg.lstsq(information, gradient, rcond=None)[0]
        scale = 1.0
        while scale > 1e-6:
            candidate = theta + scale * step
            if (value := log_likelihood(candidate)) >= current - 1e-12:
                break
            scale /= 2
        theta, current = candidate - candidate.mean(), value
        if np.max(np.abs(scale * step)) < BT_TOLERANCE:
            break
    strength = np.exp(theta - theta.max())
    return strength / strength.sum()


def bradley_terry_bootstrap(
    outcomes: Sequence[tuple[int, int, float]],
    arms: int,
    *,
    samples: int = 500,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strengths and percentile-bootstrap 95 % intervals from votes resampled with replacement.

    Args:
        outcomes: one (i, j, score) per vote: score 1.0 if arm i won, 0.0 if j won, 0.5 a tie.
        arms: number of arms.
    Returns:
        (strengths, lower, upper), each of length `arms`.
    """
    point = bradley_terry(_win_matrix(outcomes, arms))
    if not outcomes:
        return point, point.copy(), point.copy()
    rng = np.random.default_rng(seed)
    data = np.asarray(outcomes, dtype=float)
    draws = np.empty((samples, arms))
    for k in range(samples):
        sample = data[rng.integers(0, len(data), len(data))]
        draws[k] = bradley_terry(_win_matrix(sample, arms))
    lower, upper = np.percentile(draws, [2.5, 97.5], axis=0)
    return point, lower, upper


def _win_matrix(outcomes: np.ndarray | Sequence[tuple[int, int, float]], arms: int) -> np.ndarray:
    data = np.asarray(outcomes, dtype=float).reshape(-1, 3)
    first, second, score = data[:, 0].astype(int), data[:, 1].astype(int), data[:, 2]
    wins = np.zeros((arms, arms))
    np.add.at(wins, (first, second), score)
    np.add.at(wins, (second, first), 1.0 - score)
    return wins


def fleiss_kappa(ratings: Sequence[Sequence[str]]) -> float | None:
    """Fleiss' kappa for items rated by (possibly different numbers of) raters.

    Args:
        ratings: per item, the category each of its raters chose; items with fewer than two
            ratings carry no agreement information and are ignored.
    Returns:
        kappa, or None when fewer than one usable item or when chance agreement is 1.
    """
    items = [Counter(item) for item in ratings if len(item) >= 2]
    if not items:
        return None
    categories = sorted({category for item in items for category in item})
    observed = [
        (sum(c * c for c in item.values()) - n) / (n * (n - 1))
        for item in items
        for n in [sum(item.values())]
    ]
    total = sum(sum(item.values()) for item in items)
    shares = [sum(item[c] for item in items) / total for c in categories]
    expected = sum(share * share for share in shares)
    if expected >= 1.0:
        return None
    return (float(np.mean(observed)) - expected) / (1 - expected)


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' categories on the same items; None if undefined."""
    if len(first) != len(second) or not first:
        return None
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    left, right = Counter(first), Counter(second)
    expected = sum(left[c] * right[c] for c in set(left) | set(right)) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1 - expected)
