"""Adjusted Rand index, distance summaries and cross coverage against direct definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np

from sharedsparse_jax.calibrate import observations


def ari_by_pairs(a, b) -> float:
    """The ARI from its definition over item pairs (quadratic, for small tests)."""
    n = len(a)
    both = sum(1 for i, j in itertools.combinations(range(n), 2) if a[i] == a[j] and b[i] == b[j])
    same_a = sum(1 for i, j in itertools.combinations(range(n), 2) if a[i] == a[j])
    same_b = sum(1 for i, j in itertools.combinations(range(n), 2) if b[i] == b[j])
    expected = same_a * same_b / math.comb(n, 2)
    return (both - expected) / (0.5 * (same_a + same_b) - expected)


def test_adjusted_rand_index_matches_the_pair_definition():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 4, 30)
        b = np.where(rng.random(30) < 0.6, a, rng.integers(0, 5, 30))
        np.testing.assert_allclose(
            observations.adjusted_rand_index(a, b), ari_by_pairs(a, b), atol=1e-12
        )
    a = rng.integers(0, 6, 50)
    assert observations.adjusted_rand_index(a, (a + 3) % 6 + 10) == 1.0  # names do not matter


def test_distance_summary_splits_pairs_by_cluster():
    labels = np.array([0, 0, 1, 1, 1])
    points = np.array([0.0, 0.1, 5.0, 5.2, 5.5])
    distances = np.abs(points[:, None] - points[None, :])
    summary = observations.distance_summary(distances, labels)
    assert summary.num_within == 1 + 3 and summary.num_between == 6
    assert summary.within[-1] < summary.between[0]
    np.testing.assert_allclose(summary.nearest[2], 0.2)  # median of [.1, .1, .2, .2, .3]


def test_cross_coverage_is_the_masked_share():
    rng = np.random.default_rng(1)
    block_maps = rng.random((3, 4, 4)) * np.tril(np.ones((4, 4)))
    block_maps /= block_maps.sum(-1, keepdims=True)
    masks = rng.random((3, 4, 4)) < 0.5
    got = observations.cross_coverage(block_maps, masks)
    for i in range(3):
        for j in range(3):
            want = (block_maps[j] * masks[i]).sum() / block_maps[j].sum()
            np.testing.assert_allclose(got[i, j], want, atol=1e-6)
