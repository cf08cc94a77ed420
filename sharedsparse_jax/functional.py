"""SharePrefill as one function per layer, for the layer loop of your own model.

`shareprefill_attention` keeps the conventions of `jax.nn.dot_product_attention` (q [B, T, N, H],
k and v [B, S, K, H], GQA without repeating K/V) for causal self-attention over a prompt, or
over a chunk of one (its queries the last T of the S keys cached so far). The
sharing state is a value the caller threads from layer to layer (a loop variable or a scan
carry), started by `init_sharing_state`. Both are thin functions over `SharePrefillAttention`,
the object the `models` decoders call, so there is one implementation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.sharing import SharingState, SharingTable


def init_sharing_state(
    batch: int,
    num_queries: int,
    num_keys: int | None = None,
    *,
    config: SharePrefillConfig | None = None,
    table: SharingTable | None = None,
) -> SharingState:
    """The sharing state before layer 0 of a forward pass over B prompts end-padded to T tokens
    (or over a chunk of T queries after S - T cached keys).

    Args:
      batch: B.
      num_queries: T, the padded prompt or chunk length (q.shape[1]).
      num_keys: S, the keys attended over (k.shape[1]); None: S = T.
      config, table: the ones every `shareprefill_attention` call of the pass gets.

    Returns:
      A SharingState with one slot per shared cluster of `table` per prompt (no slots without a
      table, or when `config.method` is not "shareprefill"): bool[B, C] has_pivot,
      bool[B, C, Tb, Sb] pattern, and the pivots' profiles.
    """
    return _attention(config, table).init_state(batch, num_queries, num_keys)


def shareprefill_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    state: SharingState,
    *,
    layer: jax.Array | int,
    lengths: jax.Array | None = None,
    config: SharePrefillConfig | None = None,
    table: SharingTable | None = None,
    scale: float | None = None,
    implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, SharingState, dict[str, jax.Array]]:
    """Causal prefill attention of one layer over SharePrefill's block-sparse plan.

    Args:
      q: [B, T, N, H] queries after RoPE: the prompts end-padded to T, or a chunk of them
        (the last T of the S key positions; T and S - T multiples of the block size).
      k, v: [B, S, K, H] keys and values after RoPE (N a multiple of K).
      state: what the previous layer's call returned (`init_sharing_state` before layer 0).
      layer: this layer's index into the sharing table, an int or a traced int32 scalar (scan).
      lengths: int32[B] real tokens of each prompt among the S positions, in [1, S]; None:
        all S.
      config: the planner's config (None: SharePrefillConfig()).
      table: the sharing table calibrated for this model (None: no head shares a pattern).
      scale: softmax scale (None: 1 / sqrt(H)); another value rescales q before planning, so
        the plan sees the scores the attention uses.
      implementation: kernel implementation(s), as for pallas_kernels.block_sparse_attention
        (None: the best one for the backend).
      interpret: run Pallas kernels in interpret mode (CPU tests).

    Returns:
      out [B, T, N, H] in q's dtype (rows past a prompt's length are padding), the state for
      the next layer, and this layer's stats (`sharedsparse_jax.stats.layer_stats`): per prompt
      "num_<category>" int32[B] head counts, "density" float32[B], "share_reason" int32[B, N].
    """
    if q.ndim != 4:
        raise ValueError(f"expected q [B, T, N, H], got shape {q.shape}")
    batch, _, _, head_dim = q.shape
    if scale is not None:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be finite and positive, got {scale}")
        q = (q * (scale * math.sqrt(head_dim))).astype(q.dtype)
    if lengths is None:
        lengths = jnp.full((batch,), k.shape[1], jnp.int32)
    return _attention(config, table, implementation, interpret)(
        q, k, v, state, layer=layer, lengths=jnp.asarray(lengths)
    )


def _attention(config, table, implementation=None, interpret=False) -> SharePrefillAttention:
    return SharePrefillAttention(
        config=SharePrefillConfig() if config is None else config,
        table=table,
        implementation=implementation,
        interpret=interpret,
    )
