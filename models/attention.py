"""The prefill attention protocol the decoder calls, its dense implementation, and decode attention.

The decoder never knows which attention it runs: it calls an object implementing
`PrefillAttention` once per layer inside the scanned layer loop, threading the object's state
through the scan carry and stacking its per-layer stats.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from sharedsparse_jax.dense import IMPLEMENTATIONS as DENSE_IMPLEMENTATIONS
from sharedsparse_jax.dense import dense_causal_attention

PyTree = Any

# Finite mask value (DESIGN.md section 3): never -inf, so fully masked rows stay finite.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


class PrefillAttention(Protocol):
    """Causal self-attention over a whole (padded) prompt, one layer at a time."""

    def init_state(self, batch: int, num_queries: int, num_keys: int | None = None) -> PyTree:
        """The state carried through the layer loop (scan carry) before layer 0.

        Args:
          batch: B.
          num_queries: T, the padded prompt length (static), so states can be sized per block.
          num_keys: S, the keys the queries attend over when they are a chunk of a longer
            prompt (the last T of S positions); None: S = T.
        """
        ...

    def check_model(self, num_layers: int, num_heads: int) -> None:
        """Raises a ValueError if this attention was made for another model shape.

        Args:
          num_layers: L, the decoder's layer count.
          num_heads: N, query heads per layer.
        """
        ...

    def __call__(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        state: PyTree,
        *,
        layer: jax.Array,
        lengths: jax.Array,
    ) -> tuple[jax.Array, PyTree, dict[str, jax.Array]]:
        """Attends one layer.

        Args:
          q: [B, T, N, H] queries after RoPE: the last T of the S positions.
          k, v: [B, S, K, H] keys and values after RoPE (S == T for a whole prompt, S > T for
            a chunk over the keys cached before it).
          state: the carried state.
          layer: int32 scalar, the (traced) layer index.
          lengths: int32[B] real (unpadded) tokens per sequence; padding is at the end.

        Returns:
          out [B, T, N, H], the new state, and per-layer stats (stacked to [L, ...] by the scan).
        """
        ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class DenseAttention:
    """Dense causal attention: cuDNN flash attention on GPU for bf16/f16, XLA otherwise.

    Attributes:
      implementation: None picks per backend and dtype; "xla" or "cudnn" forces one.
    """

    implementation: str | None = None

    def __post_init__(self):
        if self.implementation not in DENSE_IMPLEMENTATIONS:
            raise ValueError(
                f"implementation={self.implementation!r} is not one of {DENSE_IMPLEMENTATIONS}"
            )

    def init_state(self, batch: int, num_queries: int, num_keys: int | None = None) -> PyTree:
        """Dense attention carries nothing between layers."""
        del batch, num_queries, num_keys
        return ()

    def check_model(self, num_layers: int, num_heads: int) -> None:
        """Dense attention fits every model."""
        del num_layers, num_heads

    def __call__(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        state: PyTree,
        *,
        layer: jax.Array,
        lengths: jax.Array,
    ) -> tuple[jax.Array, PyTree, dict[str, jax.Array]]:
        """Causal attention; padding sits after the real tokens, so causality already hides it.

        Args:
          q: [B, T, N, H]; k, v: [B, S, K, H] (GQA: N a multiple of K, never repeated).
          state: () (unused); layer, lengths: unused.

        Returns:
          out [B, T, N, H], the unchanged state, and no stats.
        """
        del layer, lengths
        return dense_causal_attention(q, k, v, implementation=self.implementation), state, {}


def decode_attention(
    q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, lengths: jax.Array
) -> jax.Array:
    """One new query per sequence attending to the first `lengths` cached keys (dense, f32 softmax).

    Args:
      q: [B, 1, N, H] the new token's queries after RoPE.
      k_cache, v_cache: [B, S, K, H] including the new token's key and value.
      lengths: int32[B] valid cache entries per sequence (the new token included).

    Returns:
      [B, 1, N, H] in q's dtype.
    """
    batch, _, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    q = q.reshape(batch, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = jnp.einsum("bkgh,bskh->bkgs", q, k_cache, preferred_element_type=jnp.float32) * (
        head_dim**-0.5
    )
    is_valid = jnp.arange(k_cache.shape[1])[None, :] < lengths[:, None]  # [B, S]
    scores = jnp.where(is_valid[:, None, None, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum(
        "bkgs,bskh->bkgh", probs.astype(v_cache.dtype), v_cache, preferred_element_type=jnp.float32
    )
    return out.reshape(batch, 1, num_heads, head_dim).astype(q.dtype)
