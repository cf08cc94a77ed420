"""Dense causal attention: the baseline every sparse method is measured against.

cuDNN's flash attention on GPU for bf16/f16 inputs, XLA elsewhere. SharePrefill runs it for
prompts shorter than `dense_below`, the models for their dense prefill, the benchmarks as the
reference time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = (None, "xla", "cudnn")


def dense_causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str | None = None
) -> jax.Array:
    """Causal attention of T queries, the last T of the S key positions (GQA without repeating).

    Args:
      q: [B, T, N, H]; k, v: [B, S, K, H] (N a multiple of K, S >= T).
      implementation: None (cuDNN on GPU for bf16/f16, else XLA), "xla" or "cudnn".

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
    # is_causal aligns query i with key i; a window reaching S - T keys to the right aligns the
    # queries with the end of the keys instead.
    window = (num_keys, num_keys - num_queries)
    return jax.nn.dot_product_attention(
        q, k, v, local_window_size=window, implementation=implementation
    )
