"""Embedding every (layer, query head)'s pooled map and clustering the heads hierarchically.

Two embeddings of each head's mean grid map over the calibration prompts:
- `autoencoder` (the paper's): its latent code from a small convolutional autoencoder trained
  on all calibration maps (`autoencoder.py`);
- `pooled`: the map itself (`maps.map_features`: square roots, flattened; Euclidean distances
  between these are sqrt(2) x the RMS row Hellinger distance between the maps).
Both are centred over the model's heads and then L2-normalised, so one distance scale (chord
distance of unit vectors, in [0, 2]) serves both. Centring matters: raw autoencoder latents
share a large common offset, so their unit vectors crowd into a narrow cone, and raw pooled
features are all non-negative and likewise close together.
Heads are then clustered over all layers at once with scipy's hierarchical clustering, cut at a
distance threshold.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
from scipy.cluster import hierarchy

from sharedsparse_jax.calibrate import maps
from sharedsparse_jax.calibrate.autoencoder import AutoencoderConfig, train_autoencoder

EMBEDDINGS = ("autoencoder", "pooled")
LINKAGES = ("average", "complete", "single", "ward")

# The default embedding and thresholds, chosen by the sweep of sharedsparse-calibrate on SmolLM2 and
# Qwen2.5-Coder (docs/calibration.md): only pooled clusterings shared any cluster (SmolLM2 at
# 0.3-0.6); 0.4 was the most stable of those; 0.6 was the autoencoder's most stable cut across
# disjoint texts on both models.
DEFAULT_EMBEDDING = "pooled"
DEFAULT_THRESHOLDS = {"autoencoder": 0.6, "pooled": 0.4}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """How heads are embedded and clustered.

    Attributes:
      embedding: "autoencoder" or "pooled" (default: DEFAULT_EMBEDDING).
      distance_threshold: fcluster's distance criterion on the L2-normalised embeddings (None:
        the embedding's default from DEFAULT_THRESHOLDS).
      linkage: scipy linkage method.
      autoencoder: the autoencoder's settings (its grid is the maps' grid).
    """

    embedding: str = DEFAULT_EMBEDDING
    distance_threshold: float | None = None
    linkage: str = "average"
    autoencoder: AutoencoderConfig = dataclasses.field(default_factory=AutoencoderConfig)

    def __post_init__(self):
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.linkage not in LINKAGES:
            raise ValueError(f"linkage must be one of {LINKAGES}, got {self.linkage!r}")
        if self.distance_threshold is not None and self.distance_threshold <= 0:
            raise ValueError(f"distance_threshold must be > 0, got {self.distance_threshold}")

    @property
    def threshold(self) -> float:
        """The distance threshold in use."""
        if self.distance_threshold is None:
            return DEFAULT_THRESHOLDS[self.embedding]
        return self.distance_threshold


class HeadClustering(NamedTuple):
    """Clusters of every (layer, query head).

    labels: int32[L, N], cluster index 0..C-1, numbered in order of each cluster's first member
      in (layer, head) order.
    embeddings: float32[L, N, E], the L2-normalised embeddings that were clustered.
    linkage: scipy's linkage matrix over the L * N heads (row-major (layer, head) order).
    """

    labels: np.ndarray
    embeddings: np.ndarray
    linkage: np.ndarray

    @property
    def num_clusters(self) -> int:
        return int(self.labels.max()) + 1


def normalize(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    embeddings = np.asarray(embeddings, np.float64)
    norm = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return (embeddings / np.maximum(norm, 1e-30)).astype(np.float32)


def embed_heads(grid_maps: np.ndarray, config: ClusterConfig) -> np.ndarray:
    """L2-normalised embeddings of every head, from its maps over the calibration samples.

    Args:
      grid_maps: [S, L, N, G, G] every sample's grid maps.
      config: which embedding (and autoencoder settings).

    Returns:
      float32[L, N, E].
    """
    grid_maps = np.asarray(grid_maps, np.float32)
    if grid_maps.ndim != 5 or grid_maps.shape[-1] != grid_maps.shape[-2]:
        raise ValueError(f"expected grid maps [S, L, N, G, G], got shape {grid_maps.shape}")
    _, num_layers, num_heads, grid, _ = grid_maps.shape
    mean_maps = grid_maps.mean(axis=0).reshape(num_layers * num_heads, grid, grid)
    if config.embedding == "pooled":
        embedding = maps.map_features(mean_maps)
    else:
        if config.autoencoder.grid != grid:
            raise ValueError(
                f"autoencoder grid {config.autoencoder.grid} differs from the maps' grid {grid}"
            )
        trained = train_autoencoder(grid_maps.reshape(-1, grid, grid), config.autoencoder)
        embedding = trained.encode(mean_maps)
    embedding = embedding - embedding.mean(axis=0, keepdims=True)
    return normalize(embedding).reshape(num_layers, num_heads, -1)


def cluster_embeddings(
    embeddings: np.ndarray, threshold: float, linkage: str = "average"
) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical clustering cut at a distance threshold.

    Args:
      embeddings: [M, E].
      threshold: fcluster's "distance" criterion.
      linkage: scipy linkage method (Euclidean distances).

    Returns:
      int32[M] labels 0..C-1 numbered by first appearance, and the linkage matrix.
    """
    embeddings = np.asarray(embeddings, np.float64)
    if len(embeddings) < 2:
        return np.zeros(len(embeddings), np.int32), np.zeros((0, 4))
    tree = hierarchy.linkage(embeddings, method=linkage, metric="euclidean")
    raw = hierarchy.fcluster(tree, t=threshold, criterion="distance")
    return renumber(raw), tree


def renumber(labels: np.ndarray) -> np.ndarray:
    """int32 labels 0..C-1 in order of first appearance."""
    labels = np.asarray(labels).reshape(-1)
    _, first = np.unique(labels, return_index=True)
    order = labels[np.sort(first)]
    mapping = {value: index for index, value in enumerate(order)}
    return np.array([mapping[v] for v in labels], np.int32)


def cluster_embedded(
    embeddings: np.ndarray, threshold: float, linkage: str = "average"
) -> HeadClustering:
    """Clusters all heads of a model across layers from their embeddings.

    Args:
      embeddings: [L, N, E] L2-normalised embeddings (`embed_heads`).
      threshold: fcluster's distance criterion.
      linkage: scipy linkage method.

    Returns:
      The clustering.
    """
    num_layers, num_heads, _ = embeddings.shape
    labels, tree = cluster_embeddings(
        embeddings.reshape(num_layers * num_heads, -1), threshold, linkage
    )
    return HeadClustering(labels.reshape(num_layers, num_heads), embeddings, tree)


def cluster_heads(grid_maps: np.ndarray, config: ClusterConfig) -> HeadClustering:
    """Embeds and clusters all heads of a model across layers.

    Args:
      grid_maps: [S, L, N, G, G] every calibration sample's grid maps.
      config: embedding and clustering settings.

    Returns:
      The clustering.
    """
    return cluster_embedded(embed_heads(grid_maps, config), config.threshold, config.linkage)
