"""Map resampling, pooling, features and distances against direct NumPy computations."""

from __future__ import annotations

import numpy as np
import pytest

from sharedsparse_jax.calibrate import maps
from tests.calibrate import synthetic
from tests.oracle import numpy_attention


def token_attention(rng: np.random.Generator, length: int) -> np.ndarray:
    """float64[T, T] causal softmax attention of random logits."""
    return numpy_attention.causal_softmax(2.0 * rng.standard_normal((length, length)))


def block_average(probs: np.ndarray, block_size: int) -> np.ndarray:
    """The oracle: mean over a block's real rows of the mass on each key block."""
    return numpy_attention.block_map(probs[None, None], probs.shape[0], block_size)[0, 0]


@pytest.mark.parametrize("length", [96, 100, 77])
def test_pool_maps_equals_block_average_at_the_coarse_size(length):
    probs = token_attention(np.random.default_rng(length), length)
    fine = block_average(probs, 8)
    pooled = maps.pool_maps(fine, 3, length, 8)
    np.testing.assert_allclose(pooled, block_average(probs, 24), atol=1e-6)


def test_resample_integer_ratio_is_exact_pooling_and_rows_stay_stochastic():
    rng = np.random.default_rng(1)
    fine = synthetic.noisy(synthetic.archetype_map("band", 24), rng, 0.5)
    grid = maps.resample_maps(fine, 8)
    np.testing.assert_allclose(grid, maps.pool_maps(fine, 3, 24 * 5, 5), atol=1e-6)
    for size in (5, 7, 13, 40):  # down and up, non-integer ratios
        np.testing.assert_allclose(maps.resample_maps(fine, size).sum(-1), 1.0, atol=1e-5)


def test_resample_weights_rows_by_real_queries():
    length, block_size = 70, 16  # last block holds 6 real rows
    probs = token_attention(np.random.default_rng(2), length)
    fine = block_average(probs, block_size)
    rows = np.clip(length - np.arange(5) * block_size, 0, block_size)
    coarse = maps.resample_maps(fine, 1, rows_per_block=rows)
    np.testing.assert_allclose(coarse[0, 0], 1.0, atol=1e-6)
    # Whole-prompt mean of row masses on the first half of the key blocks, weighted by rows.
    half = maps.resample_maps(fine[:4, :4], 2)
    np.testing.assert_allclose(half, block_average(probs[:64, :64], 32), atol=1e-6)


def test_hellinger_distances_match_the_definition():
    rng = np.random.default_rng(3)
    grid = np.stack(
        [synthetic.noisy(synthetic.archetype_map(k, 12), rng, 0.3) for k in synthetic.ARCHETYPES]
    )
    got = maps.hellinger_distances(grid)
    for i in range(len(grid)):
        for j in range(len(grid)):
            rows = 0.5 * ((np.sqrt(grid[i]) - np.sqrt(grid[j])) ** 2).sum(-1)
            np.testing.assert_allclose(got[i, j], np.sqrt(rows.mean()), atol=2e-4)
    features = maps.map_features(grid)
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, atol=1e-5)
