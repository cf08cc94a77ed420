"""Synthetic block maps with known structure, for calibration tests.

A map is row-stochastic over causal blocks (row r spreads its mass over key blocks c <= r).
Archetypes are the shapes heads are known to take; a head's map is its archetype mixed with a
little per-sample noise, so heads of one archetype are near-copies wherever they sit.
"""

from __future__ import annotations

import numpy as np

ARCHETYPES = ("sink_local", "stripes", "uniform", "previous", "band")


def archetype_map(kind: str, num_blocks: int) -> np.ndarray:
    """float64[Tb, Tb] causal, each row summing to 1."""
    weights = np.zeros((num_blocks, num_blocks))
    for r in range(num_blocks):
        if kind == "sink_local":
            weights[r, 0] += 1.0
            weights[r, r] += 1.0
        elif kind == "stripes":
            for c in (0, num_blocks // 3, (2 * num_blocks) // 3):
                if c <= r:
                    weights[r, c] += 1.0
        elif kind == "uniform":
            weights[r, : r + 1] = 1.0
        elif kind == "previous":
            weights[r, max(r - 1, 0)] += 3.0
            weights[r, r] += 1.0
        elif kind == "band":
            weights[r, max(r - 4, 0) : r + 1] = 1.0
        else:
            raise ValueError(kind)
    return weights / weights.sum(1, keepdims=True)


def noisy(base: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """base mixed with a random causal row-stochastic map (weight `noise`)."""
    num_blocks = base.shape[-1]
    causal = np.tril(np.ones((num_blocks, num_blocks)))
    random = rng.gamma(0.3, size=base.shape) * causal + 1e-12 * causal
    random /= random.sum(-1, keepdims=True)
    return (1 - noise) * base + noise * random


def planted_maps(
    rng: np.random.Generator,
    assignment: np.ndarray,
    *,
    num_samples: int,
    num_blocks: int,
    noise: float = 0.08,
) -> np.ndarray:
    """float32[S, L, N, Tb, Tb]: head (l, n) follows archetype ARCHETYPES[assignment[l, n]]."""
    num_layers, num_heads = assignment.shape
    bases = [archetype_map(kind, num_blocks) for kind in ARCHETYPES]
    out = np.zeros((num_samples, num_layers, num_heads, num_blocks, num_blocks))
    for s in range(num_samples):
        for layer in range(num_layers):
            for head in range(num_heads):
                out[s, layer, head] = noisy(bases[assignment[layer, head]], rng, noise)
    return out.astype(np.float32)


def vertical_slash_profiles(block_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The last query block's vertical (per key block) and slash (per block offset) profiles."""
    last = block_map[..., -1, :]
    num_blocks = block_map.shape[-1]
    slash = last[..., ::-1]  # offset d = (Tb - 1) - c
    del num_blocks
    return last, slash
