"""Block-averaged attention maps on the host: pooling, resampling to a fixed grid, features.

A block map A[..., r, c] (query block r, key block c) holds the mean over the real queries of
block r of their attention mass on key block c, so every causal row sums to 1. Resampling keeps
that meaning at any resolution: query rows are averaged (weighted by how many real queries each
holds), key mass is summed, so each resampled row still sums to 1.
"""

from __future__ import annotations

import numpy as np


def _overlap(num_in: int, num_out: int) -> np.ndarray:
    """[num_in, num_out]: the share of input interval i lying in output interval j (rows sum 1).

    Both axes cover [0, 1) in equal intervals.
    """
    edges_in = np.linspace(0.0, 1.0, num_in + 1)
    edges_out = np.linspace(0.0, 1.0, num_out + 1)
    lo = np.maximum(edges_in[:-1, None], edges_out[None, :-1])
    hi = np.minimum(edges_in[1:, None], edges_out[None, 1:])
    return np.clip(hi - lo, 0.0, None) * num_in


def resample_maps(
    block_maps: np.ndarray, grid: int, *, rows_per_block: np.ndarray | None = None
) -> np.ndarray:
    """Resamples block maps to a grid x grid map by area, keeping rows stochastic.

    An integer ratio Tb / grid is exact pooling; other ratios split blocks by their overlap.

    Args:
      block_maps: [..., Tb, Tb].
      grid: G, the output size.
      rows_per_block: optional [Tb] real queries per query block (default: all equal), the
        weights of the row average.

    Returns:
      float32[..., G, G].
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    block_maps = np.asarray(block_maps, np.float64)
    if block_maps.ndim < 2 or block_maps.shape[-1] != block_maps.shape[-2]:
        raise ValueError(f"block maps must be [..., Tb, Tb], got shape {block_maps.shape}")
    num_blocks = block_maps.shape[-1]
    share = _overlap(num_blocks, grid)  # [Tb, G]
    weights = np.ones(num_blocks) if rows_per_block is None else np.asarray(rows_per_block, float)
    if weights.shape != (num_blocks,):
        raise ValueError(f"rows_per_block must be [{num_blocks}], got shape {weights.shape}")
    row_weight = share * weights[:, None]  # [Tb, G]
    row_average = (row_weight / np.maximum(row_weight.sum(0, keepdims=True), 1e-30)).T  # [G, Tb]
    out = np.einsum("ir,...rc,cj->...ij", row_average, block_maps, share, optimize=True)
    return out.astype(np.float32)


def pool_maps(block_maps: np.ndarray, factor: int, length: int, block_size: int) -> np.ndarray:
    """Exactly pools maps of `block_size` blocks into blocks `factor` times larger.

    Args:
      block_maps: [..., Tb, Tb] for a prompt of `length` tokens in blocks of `block_size`.
      factor: how many fine blocks make one coarse block.
      length: the prompt's real length in tokens.
      block_size: tokens per fine block.

    Returns:
      float32[..., Tb', Tb'], Tb' = ceil(length / (factor * block_size)).
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    num_blocks = block_maps.shape[-1]
    if num_blocks != -(-length // block_size):
        raise ValueError(
            f"maps have {num_blocks} blocks but {length} tokens in blocks of {block_size} make"
            f" {-(-length // block_size)}"
        )
    coarse = -(-num_blocks // factor)
    pad = coarse * factor - num_blocks
    rows = np.clip(length - np.arange(num_blocks) * block_size, 0, block_size).astype(float)
    rows = np.pad(rows, (0, pad))
    maps = np.pad(
        np.asarray(block_maps, np.float64), [(0, 0)] * (block_maps.ndim - 2) + [(0, pad)] * 2
    )
    maps = maps.reshape(maps.shape[:-2] + (coarse, factor, coarse, factor))
    key_summed = maps.sum(-1)  # [..., Tb', f, Tb']
    row_weights = rows.reshape(coarse, factor)
    pooled = np.einsum("...ifj,if->...ij", key_summed, row_weights) / row_weights.sum(-1)[:, None]
    return pooled.astype(np.float32)


def map_features(grid_maps: np.ndarray) -> np.ndarray:
    """Unit-norm features of grid maps: the square roots of the entries, flattened.

    Each causal row of a map is a distribution, so the square root of a row has unit norm and
    the Euclidean distance between two features is sqrt(2) times the root-mean-square over rows
    of the rows' Hellinger distances (`hellinger_distances`). The square root also lifts the
    faint structure that the sink column and the diagonal would otherwise drown.

    Args:
      grid_maps: [..., G, G].

    Returns:
      float32[..., G * G], L2-normalised.
    """
    features = np.sqrt(np.clip(np.asarray(grid_maps, np.float64), 0.0, None))
    features = features.reshape(features.shape[:-2] + (-1,))
    norm = np.linalg.norm(features, axis=-1, keepdims=True)
    return (features / np.maximum(norm, 1e-30)).astype(np.float32)


def hellinger_distances(grid_maps: np.ndarray) -> np.ndarray:
    """Pairwise pattern distances: root-mean-square over rows of the rows' Hellinger distances.

    0 for identical maps, 1 for maps whose rows have disjoint supports.

    Args:
      grid_maps: [M, G, G].

    Returns:
      float32[M, M].
    """
    features = map_features(grid_maps).astype(np.float64)
    gram = np.clip(features @ features.T, -1.0, 1.0)
    return np.sqrt(np.clip(1.0 - gram, 0.0, None)).astype(np.float32)
