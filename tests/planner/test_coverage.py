"""Cumulative-mass selection by radix search against the reference's sort-and-cumsum rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharedsparse_jax import coverage

# Jitted, as the planner runs them: eager calls of the unrolled search made this file 7x
# slower on a CPU.
keep_within_mass = jax.jit(coverage.keep_within_mass)
count_to_reach = jax.jit(coverage.count_to_reach)


def _reference_keep(x, target):
    order = np.argsort(-x, kind="stable")
    running = np.cumsum(x[order])
    keep = np.zeros(x.shape, bool)
    keep[order[running <= target]] = True
    return keep


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_keep_within_mass_matches_sorting(dtype):
    rng = np.random.default_rng(0)
    with jax.enable_x64(dtype == jnp.float64):
        for _ in range(20):
            x = rng.dirichlet(np.full(300, rng.uniform(0.05, 2.0))) * rng.uniform(1, 4)
            target = rng.uniform(0.1, 0.99) * x.sum()
            got = np.asarray(keep_within_mass(jnp.asarray(x, dtype), target))
            np.testing.assert_array_equal(got, _reference_keep(x.astype(dtype), target))
            count = int(count_to_reach(jnp.asarray(x, dtype), target))
            assert count == _reference_keep(x.astype(dtype), target).sum() + 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_every_radix_finds_the_same_threshold(dtype):
    """The radix changes how many candidates a pass tests, never the cut (ties and zeros too)."""
    rng = np.random.default_rng(1)
    x = rng.dirichlet(np.full(257, 0.3), size=6)
    x[:, :40] = np.round(x[:, :40], 3)  # ties
    x[:, 40:80] = 0.0
    target = rng.uniform(0.2, 0.999, size=6)
    with jax.enable_x64(dtype == jnp.float64):
        thresholds = [
            np.asarray(
                jax.jit(coverage.mass_threshold, static_argnames="radix")(
                    jnp.asarray(x, dtype), jnp.asarray(target, dtype), radix=radix
                )
            )
            for radix in (2, 4, 16, 64)
        ]
    for got in thresholds[1:]:
        np.testing.assert_array_equal(got, thresholds[0])
    with pytest.raises(ValueError, match="power of two"):
        coverage.mass_threshold(jnp.asarray(x[0]), 0.5, radix=12)


def test_valid_mask_and_edges():
    x = jnp.asarray([0.5, 0.3, 0.1, 0.1, 9.0])
    valid = jnp.asarray([True, True, True, True, False])
    np.testing.assert_array_equal(
        keep_within_mass(x, 0.85, valid), [True, True, False, False, False]
    )
    # Everything fits: every valid entry is kept, zeros included.
    np.testing.assert_array_equal(
        keep_within_mass(x, jnp.inf, valid), [True, True, True, True, False]
    )
    assert int(count_to_reach(x, 0.0, valid)) == 1
    assert coverage.mass_target(1.0, quirks=False) == jnp.inf
    assert coverage.mass_target(1.0, 4.0, quirks=True) == 4.0


def test_top_k_mask_per_row_counts():
    x = jnp.asarray([[3.0, 1.0, 2.0], [0.1, 0.3, 0.2]])
    got = coverage.top_k_mask(x, jnp.asarray([2, 5]))
    np.testing.assert_array_equal(got, [[True, False, True], [True, True, True]])
    np.testing.assert_array_equal(coverage.top_k_mask(x, jnp.asarray([0, 1]))[0], False)


def test_top_k_mask_breaks_ties_by_index():
    """A run of equal values fills the count, lowest index first, and no more."""
    x = jnp.asarray([[0.9, 0.0, 0.0, 0.0, 0.0, 0.0], [0.2, 0.5, 0.2, 0.2, 0.0, 0.2]])
    got = coverage.top_k_mask(x, jnp.asarray([3, 3]))
    np.testing.assert_array_equal(
        got, [[True, True, True, False, False, False], [True, True, True, False, False, False]]
    )
    rng = np.random.default_rng(5)
    values = rng.integers(0, 4, size=(50, 17)).astype(np.float32)  # many ties
    counts = rng.integers(0, 20, size=50)
    got = np.asarray(coverage.top_k_mask(jnp.asarray(values), jnp.asarray(counts)))
    for row, k, kept in zip(values, counts, got, strict=True):
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))
        want = np.zeros(len(row), bool)
        want[order[:k]] = True
        np.testing.assert_array_equal(kept, want)
