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
    """Causal attention of the T queries over the first T keys (GQA without repeating k, v).

    Args:
      q: [B, T, N, H]; k, v: [B, T, K, H] (N a multiple of K).
      implementation: None (cuDNN on GPU for bf16/f16, else XLA), "xla" or "cudnn".

    Returns:
      [B, T, N, H] in q's dtype. End padding needs no mask: causality hides it from real rows.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r} is not one of {IMPLEMENTATIONS}")
    if implementation is None:
        is_half = q.dtype in (jnp.bfloat16, jnp.float16)
        implementation = "cudnn" if jax.default_backend() == "gpu" and is_half else "xla"
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
