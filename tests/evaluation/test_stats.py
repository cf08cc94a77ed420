"""Intervals and tests against published values and exact computations."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from evaluation import stats


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857-872, worked examples, Wilson score.
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # All successes: the lower end is n / (n + z^2) in closed form.
        (29, 29, 29 / (29 + 1.959964**2), 1.0),
    ],
)
def test_wilson_matches_published_values(successes, trials, low, high):
    got = stats.wilson_interval(successes, trials)
    assert got == pytest.approx((low, high), abs=5e-5)
    estimate = stats.proportion(successes, trials)
    assert (estimate.low, estimate.high) == got and estimate.n == trials
    assert estimate.value == successes / trials and estimate.method == "wilson"


def test_wilson_interval_holds_the_proportion():
    """Including all-success and no-success cells, where rounding once put a bound inside p."""
    for trials in range(1, 121):
        for successes in range(trials + 1):
            low, high = stats.wilson_interval(successes, trials)
            assert 0.0 <= low <= successes / trials <= high <= 1.0, (successes, trials)


def test_wilson_properties():
    narrow = stats.wilson_interval(50, 100, confidence=0.8)
    wide = stats.wilson_interval(50, 100, confidence=0.99)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    assert stats.wilson_interval(50, 100)[0] == pytest.approx(1 - stats.wilson_interval(50, 100)[1])
    with pytest.raises(ValueError):
        stats.wilson_interval(5, 4)
    with pytest.raises(ValueError, match="confidence"):
        stats.wilson_interval(1, 4, confidence=1.0)


def _pairs(both, only_candidate, only_reference, neither):
    candidate = [1] * both + [1] * only_candidate + [0] * only_reference + [0] * neither
    reference = [1] * both + [0] * only_candidate + [1] * only_reference + [0] * neither
    return np.array(candidate), np.array(reference)


def test_newcombe_paired_matches_published_example():
    # Fagerland, Lydersen and Laake (2017), Statistical Analysis of Contingency Tables, ch. 8:
    # complete response before/after consolidation therapy (Cavo et al. 2012), table
    # [[59, 6], [16, 80]]: Newcombe square-and-add -0.0621 (95% CI -0.1186 to -0.0046).
    candidate, reference = _pairs(59, 6, 16, 80)
    estimate = stats.paired_difference(candidate, reference)
    assert estimate.method == "newcombe" and estimate.n == 161
    assert estimate.value == pytest.approx(-10 / 161)
    assert (estimate.low, estimate.high) == pytest.approx((-0.1186, -0.0046), abs=5e-5)
    assert estimate.excludes_zero
    flipped = stats.paired_difference(reference, candidate)
    assert (flipped.low, flipped.high) == pytest.approx((-estimate.high, -estimate.low))


def test_paired_identical_and_bootstrap():
    rng = np.random.default_rng(4)
    scores = (rng.random(200) < 0.7).astype(float)
    same = stats.paired_difference(scores, scores)
    assert same.value == 0.0 and same.low <= 0.0 <= same.high and not same.excludes_zero
    boot_same = stats.paired_difference(scores, scores, method="bootstrap")
    assert (boot_same.low, boot_same.high) == (0.0, 0.0)
    # Fractional scores go to the bootstrap; it agrees with Newcombe on a large binary sample.
    candidate, reference = _pairs(300, 20, 60, 120)
    newcombe = stats.paired_difference(candidate, reference)
    boot = stats.paired_difference(candidate, reference, method="bootstrap", seed=1)
    assert boot.value == pytest.approx(-40 / 500) and newcombe.value == pytest.approx(-40 / 500)
    assert (boot.low, boot.high) == pytest.approx((newcombe.low, newcombe.high), abs=0.01)
    assert boot == stats.paired_difference(candidate, reference, method="bootstrap", seed=1)
    partial = stats.paired_difference([0.5, 1.0, 0.25], [1.0, 1.0, 0.0])
    assert partial.method == "bootstrap" and partial.value == pytest.approx(-0.25 / 3)
    with pytest.raises(ValueError, match="0 or 1"):
        stats.paired_difference([0.5], [1.0], method="newcombe")
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_difference([1, 0], [1])


def test_bootstrap_mean():
    rng = np.random.default_rng(5)
    values = rng.random(400)
    estimate = stats.bootstrap_mean(values, seed=3)
    assert estimate.value == pytest.approx(values.mean())
    # Close to the normal-theory interval for a mean of 400 uniforms.
    half = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert estimate.high - estimate.low == pytest.approx(2 * half, rel=0.1)
    assert estimate.low < estimate.value < estimate.high


def test_mcnemar_exact():
    candidate, reference = _pairs(59, 6, 16, 80)
    expected = scipy_stats.binomtest(6, 22, 0.5).pvalue
    assert stats.mcnemar_exact_pvalue(candidate, reference) == pytest.approx(expected)
    assert stats.mcnemar_exact_pvalue(candidate, reference) == pytest.approx(0.0525, abs=1e-4)
    assert stats.mcnemar_exact_pvalue(*_pairs(5, 3, 3, 5)) == 1.0
    assert stats.mcnemar_exact_pvalue(*_pairs(5, 0, 0, 5)) == 1.0
    assert stats.mcnemar_exact_pvalue(*_pairs(0, 0, 6, 0)) == pytest.approx(2 / 64)


def test_samples_for_halfwidth():
    assert stats.samples_for_halfwidth(0.1) == 97  # 1.96^2 / (4 * 0.01) = 96.04
    assert stats.samples_for_halfwidth(0.05) == 385
    assert stats.samples_for_halfwidth(0.05, proportion=0.1) == 139


def _numpy_percentile_bootstrap(values, statistic, seed, num_resamples=10_000, confidence=0.95):
    """The percentile bootstrap restated in NumPy: resample indices with one generator (in
    chunks of 512 rows, as scipy draws the same stream), take the quantiles of the statistic."""
    rng = np.random.default_rng(seed)
    size = len(values[0])
    estimates = []
    for start in range(0, num_resamples, 512):
        picks = rng.integers(0, size, size=(min(512, num_resamples - start), size))
        estimates.append(statistic(*(v[picks] for v in values)))
    tail = (1 - confidence) / 2
    return tuple(np.quantile(np.concatenate(estimates), [tail, 1 - tail]))


@pytest.mark.parametrize("size", [2, 9, 150])
def test_bootstrap_intervals_equal_a_numpy_restatement(size):
    rng = np.random.default_rng(size)
    values, other = rng.random(size), rng.random(size)
    estimate = stats.bootstrap_mean(values, seed=3)
    want = _numpy_percentile_bootstrap((values,), lambda v: v.mean(axis=1), seed=3)
    assert (estimate.low, estimate.high) == pytest.approx(want, abs=1e-12)
    paired = stats.paired_difference(values, other, method="bootstrap", seed=1)
    want = _numpy_percentile_bootstrap((values, other), lambda a, b: (a - b).mean(axis=1), seed=1)
    assert (paired.low, paired.high) == pytest.approx(want, abs=1e-12)
    single = stats.bootstrap_mean([0.25])
    assert (single.low, single.high) == (0.25, 0.25)


def test_mcnemar_equals_the_binomial_tail_sum():
    rng = np.random.default_rng(9)
    for _ in range(50):
        size = int(rng.integers(1, 40))
        candidate, reference = rng.integers(0, 2, size), rng.integers(0, 2, size)
        only_candidate = int(np.sum(candidate > reference))
        discordant = int(np.sum(candidate != reference))
        smaller = min(only_candidate, discordant - only_candidate)
        tail = sum(math.comb(discordant, k) for k in range(smaller + 1)) / 2**discordant
        want = min(1.0, 2 * tail) if discordant else 1.0
        assert stats.mcnemar_exact_pvalue(candidate, reference) == pytest.approx(want, abs=1e-12)
