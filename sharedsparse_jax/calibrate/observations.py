"""The paper's two observations, measured: heads' patterns are similar within clusters (and
across layers), and the grouping is stable across inputs.

- `distance_summary`: distribution of pairwise pattern distances within clusters against all
  other pairs.
- `cross_coverage`: how much of head j's attention mass head i's gamma pattern covers, for every
  pair (what sharing i's pattern with j would keep).
- `adjusted_rand_index`: agreement of two clusterings of the same heads (1: identical, about 0:
  chance).
- `similarity_report`: observation 1 in numbers for a clustering.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sharedsparse_jax.calibrate.maps import hellinger_distances


def adjusted_rand_index(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Hubert and Arabie's adjusted Rand index between two labelings of the same items.

    Args:
      labels_a, labels_b: int arrays of one shape (any labels; only equality matters).

    Returns:
      ARI in [-1, 1]; 1.0 when both put every item in one cluster or are identical.
    """
    a, b = np.asarray(labels_a).reshape(-1), np.asarray(labels_b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in size: {a.shape} vs {b.shape}")
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), np.int64)
    np.add.at(table, (a, b), 1)

    def pairs(x):
        return (x * (x - 1) // 2).sum()

    index = pairs(table)
    rows, cols = pairs(table.sum(1)), pairs(table.sum(0))
    total = pairs(np.array([a.size]))
    expected = rows * cols / total if total else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


class DistanceSummary(NamedTuple):
    """Quantiles (10, 25, 50, 75, 90 %) of pairwise distances and how many pairs each holds.

    within: pairs in the same cluster; between: pairs in different clusters; nearest: each
    head's distance to its nearest other head (over the whole model).
    """

    within: np.ndarray
    between: np.ndarray
    nearest: np.ndarray
    num_within: int
    num_between: int


QUANTILES = (10, 25, 50, 75, 90)


def split_pairs(distances: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distances of pairs in one cluster, of pairs across clusters), each pair once."""
    upper = np.triu(np.ones(distances.shape, bool), k=1)
    same = labels[:, None] == labels[None, :]
    return distances[upper & same], distances[upper & ~same]


def distance_summary(distances: np.ndarray, labels: np.ndarray) -> DistanceSummary:
    """Summarises a pairwise distance matrix by cluster membership.

    Args:
      distances: [M, M] symmetric.
      labels: int[M] cluster of each item.

    Returns:
      The quantiles (NaN where a group has no pair).
    """
    distances = np.asarray(distances, np.float64)
    labels = np.asarray(labels).reshape(-1)
    within, between = split_pairs(distances, labels)
    off_diagonal = np.where(np.eye(len(labels), dtype=bool), np.inf, distances)
    nearest = off_diagonal.min(axis=1)

    def quantiles(x):
        return np.percentile(x, QUANTILES) if x.size else np.full(len(QUANTILES), np.nan)

    return DistanceSummary(
        quantiles(within), quantiles(between), quantiles(nearest), within.size, between.size
    )


def cross_coverage(block_maps: np.ndarray, block_patterns: np.ndarray) -> np.ndarray:
    """coverage[i, j]: the share of head j's attention mass inside head i's pattern.

    Args:
      block_maps: [M, Tb, Tb] exact block maps of M heads on one prompt.
      block_patterns: bool[M, Tb, Tb] their gamma patterns.

    Returns:
      float32[M, M] (the diagonal is each head's own coverage, >= gamma).
    """
    maps = np.asarray(block_maps, np.float32).reshape(len(block_maps), -1)
    masks = np.asarray(block_patterns, np.float32).reshape(len(block_patterns), -1)
    covered = masks @ maps.T  # [i, j]
    return (covered / maps.sum(-1)[None, :]).astype(np.float32)


def pair_groups(labels: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Off-diagonal entries of a pairwise matrix split into same-cluster and other pairs.

    Args:
      labels: int[M]; values: [M, M].

    Returns:
      (values of ordered pairs i != j in one cluster, values of pairs in different clusters).
    """
    labels = np.asarray(labels).reshape(-1)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    return values[same & off], values[~same]


def similarity_report(
    mean_grid_maps: np.ndarray,
    labels: np.ndarray,
    block_maps: np.ndarray,
    block_patterns: np.ndarray,
) -> dict[str, object]:
    """Observation 1 in numbers: how alike heads of one cluster are, against the whole model.

    Args:
      mean_grid_maps: [L, N, G, G] each head's grid map averaged over calibration prompts.
      labels: int[L, N] clusters.
      block_maps: [S, L, N, Tb, Tb] held-out prompts' exact maps at the planner's block size.
      block_patterns: bool[S, L, N, Tb, Tb] their gamma patterns.

    Returns:
      Quantiles (QUANTILES) of the RMS-row Hellinger distance between heads' mean maps, for
      pairs within a cluster, within a cluster but in different layers, across clusters, and
      to each head's nearest neighbour; the mean and quantiles of cross coverage (head j's mass
      inside head i's pattern, on the same prompt) within and across clusters; and how many
      clusters span more than one layer.
    """
    num_layers, num_heads = labels.shape
    flat = np.asarray(labels).reshape(-1)
    grid = mean_grid_maps.shape[-1]
    distances = hellinger_distances(mean_grid_maps.reshape(-1, grid, grid))
    summary = distance_summary(distances, flat)
    hellinger_within, hellinger_between = split_pairs(distances, flat)
    layer_of = np.repeat(np.arange(num_layers), num_heads)
    upper = np.triu(np.ones(distances.shape, bool), k=1)
    cross_layer = (flat[:, None] == flat[None, :]) & (layer_of[:, None] != layer_of[None, :])
    within, between = [], []
    tb = block_maps.shape[-1]
    for sample_maps, sample_patterns in zip(block_maps, block_patterns, strict=True):
        coverage = cross_coverage(
            sample_maps.reshape(-1, tb, tb), sample_patterns.reshape(-1, tb, tb)
        )
        same, other = pair_groups(flat, coverage)
        within.append(same)
        between.append(other)
    within, between = np.concatenate(within), np.concatenate(between)
    spans = [len(np.unique(layer_of[flat == c])) for c in range(flat.max() + 1)]

    def quantiles(x):
        return np.percentile(x, QUANTILES).round(4).tolist() if x.size else None

    return {
        "quantiles": list(QUANTILES),
        "hellinger_within": quantiles(hellinger_within),
        "hellinger_within_cross_layer": quantiles(distances[upper & cross_layer]),
        "hellinger_between": quantiles(hellinger_between),
        "hellinger_nearest": summary.nearest.round(4).tolist(),
        "pairs_within": summary.num_within,
        "pairs_between": summary.num_between,
        "cross_coverage_within_mean": round(float(within.mean()), 4) if within.size else None,
        "cross_coverage_between_mean": round(float(between.mean()), 4) if between.size else None,
        "cross_coverage_within": quantiles(within),
        "cross_coverage_between": quantiles(between),
        "clusters": len(spans),
        "clusters_spanning_layers": int(sum(span > 1 for span in spans)),
        "median_layers_per_cluster": float(np.median(spans)),
    }


def within_between_distances(
    mean_grid_maps: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """RMS-row Hellinger distances of head pairs in one cluster and across clusters (figures).

    Args:
      mean_grid_maps: [L, N, G, G]; labels: int[L, N].

    Returns:
      (within-cluster pair distances, across-cluster pair distances), each pair once.
    """
    grid = mean_grid_maps.shape[-1]
    distances = hellinger_distances(mean_grid_maps.reshape(-1, grid, grid))
    return split_pairs(distances, np.asarray(labels).reshape(-1))
