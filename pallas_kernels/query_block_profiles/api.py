"""Public call: input validation and the implementation registry (as block_sparse_attention)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from pallas_kernels import registry
from pallas_kernels.query_block_profiles import triton, xla

IMPLEMENTATIONS: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
    "xla": xla.profiles,
    "triton": triton.profiles,
}

DEFAULT_IMPLEMENTATIONS: dict[str, tuple[str, ...]] = {"gpu": ("triton", "xla")}


def query_block_profiles(
    q: jax.Array,
    k: jax.Array,
    query_start: jax.Array,
    *,
    implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """How one block of consecutive queries spreads its causal attention over the keys.

    Scores are q . k in the inputs' precision (16-bit inputs give 16-bit scores, float32 and
    float64 inputs full-precision ones); the softmax statistics are float32 (float64 for float64
    inputs). Query i of batch element b sits at position query_start[b] + i and sees keys
    0 .. query_start[b] + i.

    Args:
      q: [B, Q, N, H], already scaled (the scores are q . k).
      k: [B, S, K, H] in q's dtype, N a multiple of K (query head n reads kv head n // (N // K)).
      query_start: int32[B].
      implementation: "xla", "triton", a sequence tried in order (falling through on
        NotImplementedError), or None: triton then xla on GPU, xla elsewhere.
      interpret: run Pallas kernels in interpret mode (CPU testing).

    Returns:
      column [B, N, S]: each key's softmax probability, averaged over the Q queries.
      diagonal [B, N, S]: entry d is the probability at offset d (query i reading key
        query_start + i - d), averaged over the Q queries; zero where that key would be < 0.
    """
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(f"expected q [B, Q, N, H] and k [B, S, K, H], got {q.shape}, {k.shape}")
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"q {q.shape} and k {k.shape} disagree on batch or head dim")
    if q.shape[2] % k.shape[2]:
        raise ValueError(
            f"query heads N={q.shape[2]} must be a multiple of kv heads K={k.shape[2]}"
        )
    if q.dtype != k.dtype or not jnp.issubdtype(q.dtype, jnp.floating):
        raise ValueError(f"q and k must share a float dtype, got {q.dtype} and {k.dtype}")
    if query_start.shape != (q.shape[0],):
        raise ValueError(f"query_start must be int[B={q.shape[0]}], got {query_start.shape}")
    names = registry.candidates(implementation, IMPLEMENTATIONS, DEFAULT_IMPLEMENTATIONS)
    return registry.first_that_runs(names, IMPLEMENTATIONS, q, k, query_start, interpret=interpret)
