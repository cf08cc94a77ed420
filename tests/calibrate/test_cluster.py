"""Clustering recovers planted head groups with both embeddings; the autoencoder trains."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sharedsparse_jax.calibrate import (
    AutoencoderConfig,
    ClusterConfig,
    adjusted_rand_index,
    cluster_embeddings,
    cluster_heads,
    train_autoencoder,
)
from sharedsparse_jax.calibrate.cluster import renumber
from tests.calibrate import synthetic

FAST_AUTOENCODER = AutoencoderConfig(grid=16, latent_dim=8, steps=200, batch_size=32, eval_every=20)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    assignment = rng.integers(0, len(synthetic.ARCHETYPES), (8, 4))  # 8 layers x 4 heads
    grid_maps = synthetic.planted_maps(rng, assignment, num_samples=3, num_blocks=16)
    return assignment, grid_maps


def test_pooled_embedding_recovers_planted_clusters(planted):
    assignment, grid_maps = planted
    clustering = cluster_heads(grid_maps, ClusterConfig(embedding="pooled", distance_threshold=0.5))
    assert adjusted_rand_index(clustering.labels, assignment) == 1.0
    np.testing.assert_array_equal(clustering.labels.reshape(-1), renumber(assignment))


def test_autoencoder_embedding_recovers_planted_clusters(planted):
    assignment, grid_maps = planted
    config = ClusterConfig(
        embedding="autoencoder", distance_threshold=0.5, autoencoder=FAST_AUTOENCODER
    )
    clustering = cluster_heads(grid_maps, config)
    assert adjusted_rand_index(clustering.labels, assignment) == 1.0
    np.testing.assert_allclose(np.linalg.norm(clustering.embeddings, axis=-1), 1.0, atol=1e-5)


def test_autoencoder_learns_and_is_deterministic(planted):
    _, grid_maps = planted
    flat = grid_maps.reshape(-1, 16, 16)
    short = dataclasses.replace(FAST_AUTOENCODER, steps=120)  # loss 0.42x its start
    first = train_autoencoder(flat, short)
    again = train_autoencoder(flat, short)
    assert first.best_validation_loss < 0.5 * first.validation_losses[0]
    np.testing.assert_array_equal(first.encode(flat[:5]), again.encode(flat[:5]))
    assert first.encode(flat[:5]).shape == (5, 8)


def test_labels_are_numbered_by_first_member_and_the_threshold_cuts():
    points = np.array([[0.0, 0.0], [5.0, 0.0], [0.1, 0.0], [5.1, 0.0], [20.0, 0.0]])
    labels, _ = cluster_embeddings(points, threshold=1.0)
    np.testing.assert_array_equal(labels, [0, 1, 0, 1, 2])
    labels, _ = cluster_embeddings(points, threshold=100.0)
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 0])


def test_config_refusals():
    with pytest.raises(ValueError, match="embedding"):
        ClusterConfig(embedding="pca")
    with pytest.raises(ValueError, match="distance_threshold"):
        ClusterConfig(distance_threshold=0.0)
    with pytest.raises(ValueError, match="multiple of 4"):
        AutoencoderConfig(grid=30)
    with pytest.raises(ValueError, match="grid"):
        cluster_heads(
            np.zeros((1, 2, 2, 8, 8), np.float32),
            ClusterConfig(embedding="autoencoder", autoencoder=FAST_AUTOENCODER),
        )
