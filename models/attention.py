"""The prefill attention protocol the decoder calls, and decode attention.

The decoder never knows which attention it runs: it calls an object implementing
`PrefillAttention` once per layer inside the scanned layer loop, threading the object's state
through the scan carry and stacking its per-layer stats. `DenseAttention` (from
`sharedsparse_jax.dense`) is the dense implementation.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp

from sharedsparse_jax.dense import DenseAttention

__all__ = ["DenseAttention", "PrefillAttention", "bucket_attention", "decode_attention"]

PyTree = Any

# Finite mask value (DESIGN.md section 3): never -inf, so fully masked rows stay finite.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


class PrefillAttention(Protocol):
    """Causal self-attention over a whole (padded) prompt, one layer at a time.

    An attention may also define `for_bucket`, with the arguments of `bucket_attention`, where
    it runs differently per padded length.
    """

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


def bucket_attention(
    attention: PrefillAttention,
    lengths: jax.Array,
    *,
    num_layers: int,
    num_heads: int,
    num_queries: int,
    num_keys: int,
) -> tuple[PrefillAttention, dict[str, jax.Array] | None]:
    """The attention the layer loop runs for prompts padded to T queries over S keys, and every
    layer's stats where they are known before the loop runs.

    An attention that plans nothing at some lengths (SharePrefill below its crossover) answers
    through its `for_bucket` method with a dense stand-in, so the loop compiles to the dense
    model's program, and the stats it would have stacked layer by layer; any other attention
    runs as it is.

    Args:
      attention: the prefill attention.
      lengths: int32[B] real tokens per sequence.
      num_layers, num_heads: L and N of the model.
      num_queries, num_keys: T and S of the bucket (S = T for a whole prompt).

    Returns:
      The attention to call per layer, and {name: [L, ...]} stats or None (the loop stacks the
      per-layer ones).
    """
    for_bucket = getattr(attention, "for_bucket", None)
    if for_bucket is None:
        return attention, None
    return for_bucket(
        lengths,
        num_layers=num_layers,
        num_heads=num_heads,
        num_queries=num_queries,
        num_keys=num_keys,
    )


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
