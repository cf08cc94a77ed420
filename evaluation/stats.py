"""Confidence intervals for accuracy cells and for paired dense-versus-sparse comparisons.

A retrieval cell (task, length, method) is a set of per-sample scores. Its accuracy gets a Wilson
score interval (binary scores) or a bootstrap interval (fractional scores). Two methods run on
the *same* samples are compared pairwise: the difference of their accuracies gets Newcombe's
square-and-add interval for paired proportions (binary scores) or a paired bootstrap interval,
and McNemar's exact test says whether the discordant pairs are lopsided. Pairing matters: most
samples are solved by both or by neither, and only the discordant ones carry the difference.

What scipy.stats has is taken from it: the Wilson interval (`binomtest(...).proportion_ci`),
the exact McNemar test (`binomtest` on the discordant pairs) and the percentile bootstrap
(`bootstrap`, paired for differences). Newcombe's paired interval, which scipy lacks, is here.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import stats as scipy_stats

__all__ = [
    "Estimate",
    "bootstrap_mean",
    "mcnemar_exact_pvalue",
    "paired_difference",
    "proportion",
    "samples_for_halfwidth",
    "wilson_interval",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Estimate:
    """A point estimate with a confidence interval.

    Attributes:
      value: the estimate (a proportion, a mean, or a difference of them).
      low: lower end of the interval.
      high: upper end of the interval.
      confidence: the interval's nominal coverage, e.g. 0.95.
      n: number of samples (pairs, for a paired difference).
      method: how the interval was made (`wilson`, `bootstrap`, `newcombe`, ...).
    """

    value: float
    low: float
    high: float
    confidence: float
    n: int
    method: str

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of 0 (a difference is resolved)."""
        return self.low > 0 or self.high < 0


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(
    successes: int, trials: int, *, confidence: float = 0.95
) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (no continuity correction).

    Args:
      successes: number of successes, 0 <= successes <= trials.
      trials: number of trials, >= 1.
      confidence: nominal coverage.

    Returns:
      (low, high), inside [0, 1].
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    _z(confidence)
    interval = scipy_stats.binomtest(successes, trials).proportion_ci(
        confidence_level=confidence, method="wilson"
    )
    p = successes / trials
    # The interval always holds p; rounding can put a bound a hair inside it at p = 0 or 1.
    return max(0.0, min(p, float(interval.low))), min(1.0, max(p, float(interval.high)))


def proportion(successes: int, trials: int, *, confidence: float = 0.95) -> Estimate:
    """A proportion with its Wilson score interval.

    Args:
      successes: number of successes.
      trials: number of trials.
      confidence: nominal coverage.

    Returns:
      The estimate, method `wilson`.
    """
    low, high = wilson_interval(successes, trials, confidence=confidence)
    return Estimate(
        value=successes / trials,
        low=low,
        high=high,
        confidence=confidence,
        n=trials,
        method="wilson",
    )


def _as_scores(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has non-finite values")
    return array


def _percentile_bootstrap(
    samples: tuple[np.ndarray, ...], statistic, confidence: float, num_resamples: int, seed: int
) -> tuple[float, float]:
    """scipy's percentile bootstrap interval of `statistic` over resamples of the samples' pairs
    (one array: its values; several: the same indices for each)."""
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    if samples[0].size == 1:  # every resample is the sample itself
        value = float(statistic(*samples, axis=-1))
        return value, value
    result = scipy_stats.bootstrap(
        samples,
        statistic,
        n_resamples=num_resamples,
        paired=len(samples) > 1,
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    num_resamples: int = 10_000,
    seed: int = 0,
) -> Estimate:
    """Mean of per-sample scores with a percentile bootstrap interval.

    Args:
      values: per-sample scores (e.g. `string_match_all` fractions).
      confidence: nominal coverage.
      num_resamples: bootstrap resamples.
      seed: seed of the resampling (the interval is deterministic given it).

    Returns:
      The estimate, method `bootstrap`.
    """
    scores = _as_scores(values, "values")
    _z(confidence)
    low, high = _percentile_bootstrap((scores,), np.mean, confidence, num_resamples, seed)
    return Estimate(
        value=float(scores.mean()),
        low=low,
        high=high,
        confidence=confidence,
        n=scores.size,
        method="bootstrap",
    )


def _paired_table(candidate: np.ndarray, reference: np.ndarray) -> tuple[int, int, int, int]:
    """(both right, only candidate right, only reference right, both wrong) for 0/1 scores."""
    cand, ref = candidate.astype(bool), reference.astype(bool)
    return (
        int(np.sum(cand & ref)),
        int(np.sum(cand & ~ref)),
        int(np.sum(~cand & ref)),
        int(np.sum(~cand & ~ref)),
    )


def _newcombe_paired(
    both: int, only_candidate: int, only_reference: int, neither: int, confidence: float
) -> tuple[float, float, float]:
    """Newcombe's square-and-add interval for a difference of paired proportions.

    Newcombe (1998), Statistics in Medicine 17:2635, method 10: Wilson intervals for the two
    marginal proportions, combined with the continuity-corrected correlation between them.
    """
    n = both + only_candidate + only_reference + neither
    p1 = (both + only_candidate) / n
    p2 = (both + only_reference) / n
    l1, u1 = wilson_interval(both + only_candidate, n, confidence=confidence)
    l2, u2 = wilson_interval(both + only_reference, n, confidence=confidence)
    margins = (
        (both + only_candidate)
        * (only_reference + neither)
        * (both + only_reference)
        * (only_candidate + neither)
    )
    phi = 0.0
    if margins > 0:
        cross = both * neither - only_candidate * only_reference
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(margins)
        elif cross < 0:
            phi = cross / math.sqrt(margins)
    difference = (only_candidate - only_reference) / n  # p1 - p2 without the rounding
    below = math.sqrt(max((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2), 0))
    above = math.sqrt(max((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1), 0))
    return difference, max(-1.0, difference - below), min(1.0, difference + above)


def paired_difference(
    candidate: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    method: Literal["auto", "newcombe", "bootstrap"] = "auto",
    num_resamples: int = 10_000,
    seed: int = 0,
) -> Estimate:
    """Difference of mean scores, candidate minus reference, on the same samples.

    Typical use: `paired_difference(sparse_scores, dense_scores)`; a negative value is accuracy
    lost by the sparse method.

    Args:
      candidate: per-sample scores of the method under test.
      reference: per-sample scores of the reference on the same samples, same order.
      confidence: nominal coverage.
      method: `newcombe` (0/1 scores only: Newcombe's paired square-and-add interval),
        `bootstrap` (percentile bootstrap over pairs, any scores), or `auto` (newcombe when
        every score is 0 or 1, else bootstrap).
      num_resamples: bootstrap resamples.
      seed: bootstrap seed.

    Returns:
      The estimate of mean(candidate) - mean(reference), with `n` the number of pairs.
    """
    cand = _as_scores(candidate, "candidate")
    ref = _as_scores(reference, "reference")
    if cand.shape != ref.shape:
        raise ValueError(f"paired scores differ in length: {cand.size} and {ref.size}")
    is_binary = bool(np.all((cand == 0) | (cand == 1)) and np.all((ref == 0) | (ref == 1)))
    if method == "auto":
        method = "newcombe" if is_binary else "bootstrap"
    if method == "newcombe":
        if not is_binary:
            raise ValueError("the newcombe interval needs scores that are all 0 or 1")
        value, low, high = _newcombe_paired(*_paired_table(cand, ref), confidence)
    elif method == "bootstrap":
        _z(confidence)
        low, high = _percentile_bootstrap(
            (cand, ref), _mean_difference, confidence, num_resamples, seed
        )
        value = float((cand - ref).mean())
    else:
        raise ValueError(f"method must be 'auto', 'newcombe' or 'bootstrap', got {method!r}")
    return Estimate(
        value=value, low=low, high=high, confidence=confidence, n=cand.size, method=method
    )


def _mean_difference(candidate: np.ndarray, reference: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean of the paired differences (the paired bootstrap's statistic)."""
    return np.mean(candidate - reference, axis=axis)


def mcnemar_exact_pvalue(
    candidate: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray
) -> float:
    """Two-sided exact McNemar test that two methods are equally accurate on the same samples.

    Under the null, each discordant pair (one method right, the other wrong) is a fair coin;
    the p-value is the two-sided binomial tail of the smaller discordant count.

    Args:
      candidate: per-sample 0/1 scores of one method.
      reference: per-sample 0/1 scores of the other, same samples and order.

    Returns:
      The p-value in [0, 1] (1.0 when there are no discordant pairs).
    """
    cand = _as_scores(candidate, "candidate")
    ref = _as_scores(reference, "reference")
    if cand.shape != ref.shape:
        raise ValueError(f"paired scores differ in length: {cand.size} and {ref.size}")
    if not (np.all((cand == 0) | (cand == 1)) and np.all((ref == 0) | (ref == 1))):
        raise ValueError("McNemar's test needs scores that are all 0 or 1")
    _, only_candidate, only_reference, _ = _paired_table(cand, ref)
    discordant = only_candidate + only_reference
    if discordant == 0:
        return 1.0
    return float(scipy_stats.binomtest(only_candidate, discordant, 0.5).pvalue)


def samples_for_halfwidth(
    halfwidth: float, *, proportion: float = 0.5, confidence: float = 0.95
) -> int:
    """Samples needed for a proportion's interval to have about the given half-width.

    Uses the normal approximation n = z^2 p (1 - p) / halfwidth^2, worst case at p = 0.5: 97
    samples give +-0.10, 385 give +-0.05. For a paired difference only discordant pairs count,
    so use the expected discordance rate as `proportion` as a rough guide.

    Args:
      halfwidth: the wanted half-width, in (0, 1).
      proportion: the expected proportion.
      confidence: nominal coverage.

    Returns:
      The number of samples (rounded up).
    """
    if not 0 < halfwidth < 1 or not 0 <= proportion <= 1:
        raise ValueError(
            f"need 0 < halfwidth < 1 and 0 <= proportion <= 1, got {halfwidth}, {proportion}"
        )
    z = _z(confidence)
    return max(1, math.ceil(z * z * proportion * (1 - proportion) / (halfwidth * halfwidth)))
