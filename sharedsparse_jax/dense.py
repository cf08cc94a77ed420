"""Dense causal attention, and `DenseAttention`, its prefill attention for the models' layer loop:
the baseline every sparse method is measured against.

cuDNN's flash attention on GPU for bf16/f16 inputs, XLA elsewhere. SharePrefill runs it for
prompts shorter than `dense_below`, the models for their dense prefill, the benchmarks as the
reference time. cuDNN aligns a causal mask with the first key only, so a chunk of queries over
a longer cache (T < S) runs the project's block-sparse kernel with every causal block instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels.block_sparse_attention import block_sparse_attention, layout_from_mask
from sharedsparse_jax.patterns import causal_blocks

IMPLEMENTATIONS = (None, "xla", "cudnn")
# Block sizes of the kernel that runs cuDNN's chunks, best first: the largest one the cached
# keys (S - T) split into.
CHUNK_BLOCK_SIZES = (128, 64, 32, 16)


def dense_causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str | None = None
) -> jax.Array:
    """Causal attention of T queries, the last T of the S key positions (GQA without repeating).

    Args:
      q: [B, T, N, H]; k, v: [B, S, K, H] (N a multiple of K, S >= T).
      implementation: None (cuDNN on GPU for bf16/f16, else XLA), "xla" or "cudnn". cuDNN
        serves whole prompts (T = S); a chunk (T < S) takes the block-sparse kernel with every
        causal block, and S - T must be a multiple of 16.

    Returns:
      [B, T, N, H] in q's dtype. End padding needs no mask: causality hides it from real rows.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r} is not one of {IMPLEMENTATIONS}")
    if implementation is None:
        is_half = q.dtype in (jnp.bfloat16, jnp.float16)
        implementation = "cudnn" if jax.default_backend() == "gpu" and is_half else "xla"
    num_queries, num_keys = q.shape[1], k.shape[1]
    if num_keys == num_queries:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
    if implementation == "cudnn":
        return _chunk_with_kernel(q, k, v)
    # is_causal aligns query i with key i; a window reaching S - T keys to the right aligns the
    # queries with the end of the keys instead (cuDNN refuses such a window).
    window = (num_keys, num_keys - num_queries)
    return jax.nn.dot_product_attention(
        q, k, v, local_window_size=window, implementation=implementation
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DenseAttention:
    """Dense causal attention: cuDNN flash attention on GPU for bf16/f16, XLA otherwise.

    Attributes:
      implementation: None picks per backend and dtype; "xla" or "cudnn" forces one.
    """

    implementation: str | None = None

    def __post_init__(self):
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation={self.implementation!r} is not one of {IMPLEMENTATIONS}"
            )

    def init_state(self, batch: int, num_queries: int, num_keys: int | None = None) -> Any:
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
        state: Any,
        *,
        layer: jax.Array,
        lengths: jax.Array,
    ) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        """Causal attention; padding sits after the real tokens, so causality already hides it.

        Args:
          q: [B, T, N, H]; k, v: [B, S, K, H] (GQA: N a multiple of K, never repeated).
          state: () (unused); layer, lengths: unused.

        Returns:
          out [B, T, N, H], the unchanged state, and no stats.
        """
        del layer, lengths
        return dense_causal_attention(q, k, v, implementation=self.implementation), state, {}


def _chunk_with_kernel(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """The last T of S positions attending causally, by the block-sparse kernel keeping every
    causal block (the backend's best implementation)."""
    batch, num_queries, num_heads, _ = q.shape
    num_keys = k.shape[1]
    fitting = [bs for bs in CHUNK_BLOCK_SIZES if (num_keys - num_queries) % bs == 0]
    if not fitting:
        raise ValueError(
            f"a chunk of {num_queries} queries over {num_keys} keys must start on a multiple of"
            f" {CHUNK_BLOCK_SIZES[-1]} tokens for cuDNN's dense attention (use"
            " implementation='xla')"
        )
    bs = fitting[0]
    tb, sb = -(-num_queries // bs), -(-num_keys // bs)
    mask = jnp.broadcast_to(causal_blocks(tb, sb), (batch, num_heads, tb, sb))
    return block_sparse_attention(q, k, v, layout_from_mask(mask, block_size=bs))
