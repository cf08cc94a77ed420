"""Portable implementation (any backend, float64 included): the scores materialised by XLA.

Also the oracle the Pallas version is tested against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def profiles(
    q: jax.Array, k: jax.Array, query_start: jax.Array, *, interpret: bool = False
) -> tuple[jax.Array, jax.Array]:
    """See api.query_block_profiles (`interpret` has no meaning here)."""
    del interpret
    batch, num_queries, num_heads, head_dim = q.shape
    num_keys, num_kv_heads = k.shape[1], k.shape[2]
    stats_dtype = jnp.promote_types(q.dtype, jnp.float32)
    grouped = q.reshape(batch, num_queries, num_kv_heads, num_heads // num_kv_heads, head_dim)
    precision = jax.lax.Precision.HIGHEST if q.dtype == stats_dtype else None
    scores = jnp.einsum(
        "bikgh,bjkh->bkgij", grouped, k, precision=precision, preferred_element_type=q.dtype
    ).reshape(batch, num_heads, num_queries, num_keys)
    q_pos = query_start[:, None] + jnp.arange(num_queries)  # [B, Q]
    keys = jnp.arange(num_keys)
    visible = (keys[None, None, :] <= q_pos[:, :, None])[:, None]  # [B, 1, Q, S]
    scores = jnp.where(visible, scores.astype(stats_dtype), -jnp.inf)
    lse = jax.nn.logsumexp(scores, axis=-1, keepdims=True)  # [B, N, Q, 1]
    # A key a query does not see has probability 0, also when a NaN made the query's LSE NaN.
    column = jnp.where(visible, jnp.exp(scores - lse), 0.0).mean(axis=2)
    return column, _diagonal_profile(scores, lse, query_start)


def _diagonal_profile(scores: jax.Array, lse: jax.Array, query_start: jax.Array) -> jax.Array:
    """[B, N, S]: mean over the queries of the probability at each diagonal offset.

    Query i sits at position start + i; offset d reads key start + i - d. Padding each row on
    the left by Q and re-reading the flat rows with a stride one longer lines up every diagonal
    in a column (no gather): column u holds the keys u - Q + i, which is offset d = start + Q - u
    for every row. Cells that run past a row's end land in the next row's left padding, which
    is -inf, so they add nothing.
    """
    batch, num_heads, num_queries, num_keys = scores.shape
    width = num_keys + num_queries
    padded = jnp.pad(scores, ((0, 0), (0, 0), (0, 0), (num_queries, 0)), constant_values=-jnp.inf)
    flat = padded.reshape(batch, num_heads, num_queries * width)
    flat = jnp.pad(flat, ((0, 0), (0, 0), (0, num_queries)), constant_values=-jnp.inf)
    skewed = flat.reshape(batch, num_heads, num_queries, width + 1)  # [.., i, u] = padded[i, u + i]
    # Cells a query does not see are -inf: probability 0, also where its LSE is NaN.
    probs = jnp.where(skewed == -jnp.inf, 0.0, jnp.exp(skewed - lse))
    by_column = probs.sum(axis=2) / num_queries  # [B, N, width + 1]
    # d = start + Q - u for d = 0 .. S - 1: u runs down from start + Q.
    by_column = jnp.pad(by_column, ((0, 0), (0, 0), (num_keys, 0)))
    first = query_start + num_queries + 1  # padded index of u = start + Q - (S - 1)
    window = jax.vmap(lambda x, s: jax.lax.dynamic_slice_in_dim(x, s, num_keys, axis=-1))(
        by_column, first
    )
    return window[..., ::-1]
