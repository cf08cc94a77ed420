"""Shared-cluster selection accepts planted shareable clusters and rejects the others.

Three planted clusters over 8 layers x 3 heads (head n of every layer is in cluster n):
  0. shareable: every member attends to the same scattered blocks (a few earlier blocks per row
     that no vertical or slash captures), and its vertical-slash fallback is wide: the pivot's
     pattern covers members well with fewer blocks;
  1. dissimilar: each member has its own scattered blocks, so the pivot's pattern misses them;
  2. vertical-slash friendly: sink plus diagonal, which the fallback explains in few blocks, so
     the pivot's dense row costs more than sharing could save.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sharedsparse_jax.calibrate import SelectionConfig, SharingSample, simulate_sharing
from sharedsparse_jax.config import SharePrefillConfig
from tests.calibrate import synthetic

NUM_LAYERS, NUM_BLOCKS = 8, 16
PLANNER = SharePrefillConfig(block_size=16, min_budget=32, dense_below=16)  # floor: 2 blocks


def scattered_map(rng: np.random.Generator) -> np.ndarray:
    """Each row r: 0.45 on two random earlier blocks, 0.1 on its diagonal block."""
    out = np.zeros((NUM_BLOCKS, NUM_BLOCKS))
    out[0, 0] = 1.0
    for r in range(1, NUM_BLOCKS):
        picks = rng.choice(r, size=min(2, r), replace=False)
        out[r, picks] += 0.9 / len(picks)
        out[r, r] += 0.1
    return out


def planted_sample(rng: np.random.Generator, shared_layout: np.ndarray) -> SharingSample:
    maps = np.zeros((NUM_LAYERS, 3, NUM_BLOCKS, NUM_BLOCKS))
    sink_local = synthetic.archetype_map("sink_local", NUM_BLOCKS)
    for layer in range(NUM_LAYERS):
        maps[layer, 0] = synthetic.noisy(shared_layout, rng, 0.02)
        maps[layer, 1] = synthetic.noisy(scattered_map(rng), rng, 0.02)
        maps[layer, 2] = synthetic.noisy(sink_local, rng, 0.02)
    vertical, slash = synthetic.vertical_slash_profiles(maps)
    budgets = np.tile(np.array([6, 6, 1], np.int32), (NUM_LAYERS, 1))
    query_aware = np.zeros((NUM_LAYERS, 3), bool)
    query_aware[0, 0] = True  # the pivot of cluster 0 must move to layer 1
    return SharingSample(
        block_maps=maps.astype(np.float32),
        vertical=vertical.astype(np.float32),
        slash=slash.astype(np.float32),
        num_vertical=budgets,
        num_slash=budgets,
        query_aware=query_aware,
    )


def gamma_pattern(block_map: np.ndarray, gamma: float) -> np.ndarray:
    """NumPy oracle of a pivot's pattern: per row, the largest blocks until gamma is reached."""
    keep = np.zeros(block_map.shape, bool)
    for r, row in enumerate(block_map):
        order = np.argsort(-row, kind="stable")
        count = int(np.searchsorted(np.cumsum(row[order]), gamma)) + 1
        keep[r, order[:count]] = True
    keep[0, 0] = True
    return keep


@pytest.fixture(scope="module")
def outcome():
    rng = np.random.default_rng(0)
    layout = scattered_map(rng)
    samples = [planted_sample(rng, layout) for _ in range(2)]
    labels = np.tile(np.arange(3), (NUM_LAYERS, 1))
    config = SelectionConfig(
        planner=PLANNER, min_coverage=0.9, min_coverage_gain=0.02, min_saving=0.0
    )
    return samples, labels, simulate_sharing(labels, samples, config)


def test_planted_shareable_cluster_is_accepted_and_the_others_rejected(outcome):
    samples, labels, sharing = outcome
    np.testing.assert_array_equal(sharing.is_shared, [True, False, False])
    assert sharing.coverage[0] > 0.9 > sharing.coverage[1]  # dissimilar: coverage too low
    assert sharing.saving[0] > 0 and sharing.share_rate[0] == 1.0
    assert sharing.coverage_gain[0] > 0.02
    # Friendly: the pattern transfers, but the fallback already covers as much, sharing is
    # switched off online (tau_fb) and the pivot's dense row is pure cost.
    assert sharing.coverage[2] > 0.9 and sharing.coverage_gain[2] < 0.02
    assert sharing.saving[2] < 0 and sharing.disabled_rate[2] == 1.0
    lax = SelectionConfig(
        planner=PLANNER, min_coverage=0.9, min_coverage_gain=0.02, min_saving=-1.0
    )
    np.testing.assert_array_equal(
        simulate_sharing(labels, samples, lax).is_shared, [True, False, False]
    )  # the gain bar alone rejects the friendly cluster
    assert 0 < sharing.model_saving < sharing.saving[0]


def test_pivot_is_the_first_member_that_is_not_query_aware(outcome):
    _, _, sharing = outcome
    np.testing.assert_array_equal(sharing.pivot, [[1, 0], [0, 1], [0, 2]])


def test_coverage_and_saving_match_direct_computation(outcome):
    samples, _, sharing = outcome
    coverages = []
    for sample in samples:
        pattern = gamma_pattern(sample.block_maps[1, 0].astype(np.float64), PLANNER.gamma)
        for layer in range(2, NUM_LAYERS):
            member = sample.block_maps[layer, 0]
            coverages.append((member * pattern).sum() / member.sum())
    np.testing.assert_allclose(sharing.coverage[0], np.mean(coverages), atol=1e-6)
    # Cluster 2: nothing shares; the pivot runs 136 causal blocks instead of 31 (sink +
    # diagonal), against a fallback of 31 blocks for each of the 8 members.
    np.testing.assert_allclose(sharing.saving[2], (31 - 136) / (8 * 31), atol=1e-9)


def test_refusals():
    with pytest.raises(ValueError, match="min_coverage"):
        SelectionConfig(min_coverage=1.5)
    with pytest.raises(ValueError, match="min_size"):
        SelectionConfig(min_size=1)
    rng = np.random.default_rng(1)
    sample = planted_sample(rng, scattered_map(rng))
    with pytest.raises(ValueError, match="layers, heads"):
        simulate_sharing(np.zeros((NUM_LAYERS, 4), int), [sample], SelectionConfig(planner=PLANNER))
    with pytest.raises(ValueError, match="held-out"):
        simulate_sharing(np.zeros((NUM_LAYERS, 3), int), [], SelectionConfig(planner=PLANNER))


def test_a_cluster_whose_members_never_share_online_is_not_shared(outcome):
    """tau_fb so low that every pivot is explained by its own fallback: the pattern would
    transfer (coverage, gain), but online no member shares, so the pivot's dense row is pure
    cost; the share-rate bar refuses it, and only it."""
    samples, labels, _ = outcome
    planner = dataclasses.replace(PLANNER, tau_fb=0.01)

    def shared(min_share_rate):
        config = SelectionConfig(
            planner=planner, min_coverage=0.9, min_coverage_gain=0.02, min_saving=-1.0,
            min_share_rate=min_share_rate,
        )  # fmt: skip
        return simulate_sharing(labels, samples, config)

    never = shared(0.5)
    assert never.disabled_rate[0] == 1.0 and never.share_rate[0] == 0.0
    np.testing.assert_array_equal(never.is_shared, [False, False, False])
    np.testing.assert_array_equal(shared(0.0).is_shared, [True, False, False])
