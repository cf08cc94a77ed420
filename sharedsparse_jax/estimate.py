"""Estimation from the last query block: vertical and slash profiles, budgets, query-aware test.

All heads and batch elements at once. `lengths` (the real token counts) are traced, so block
counts are bounded by the static Sb = ceil(S / bs) and masked beyond each prompt's own nb. The
queries may be a chunk (the last T of S key positions): profiles are over the S keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels.query_block_profiles import query_block_profiles
from sharedsparse_jax import coverage
from sharedsparse_jax.config import SharePrefillConfig


class LastBlockEstimate(NamedTuple):
    """Per (batch, query head) estimates.

    vertical: [B, N, Sb] block-pooled mean attention of the last block's queries to each key
      block (zero past the prompt).
    slash: [B, N, Sb] block-pooled mass per block diagonal offset d (offset 0 = the diagonal).
    num_vertical, num_slash: int32[B, N] budgets in blocks, clipped to [b_min, b_max].
    query_aware: bool[B, N], the pooled estimate agrees with the true last-block attention.
    """

    vertical: jax.Array
    slash: jax.Array
    num_vertical: jax.Array
    num_slash: jax.Array
    query_aware: jax.Array


def compute_dtype(dtype) -> jnp.dtype:
    """float32, or float64 for float64 inputs (used by exact parity tests under x64)."""
    return jnp.promote_types(dtype, jnp.float32)


def num_blocks(lengths: jax.Array, block_size: int) -> jax.Array:
    """int32[B]: nb = ceil(n / bs)."""
    return (lengths + block_size - 1) // block_size


def sqrt_js_distance(p: jax.Array, q: jax.Array, valid: jax.Array, *, quirks: bool) -> jax.Array:
    """Square-root Jensen-Shannon distance over the last axis, natural log.

    Entries where `valid` is False take no part. With `quirks`, p * log(p / m) is NaN at p = 0
    and NaN decides (every comparison with it is False), as in the reference; otherwise
    0 * log 0 = 0 and rounding below zero is clipped, so no NaN decides anything.
    """
    m = 0.5 * (p + q)
    if quirks:
        terms = p * jnp.log(p / m) + q * jnp.log(q / m)
        divergence = 0.5 * jnp.sum(jnp.where(valid, terms, 0.0), axis=-1)
        return jnp.sqrt(divergence)
    safe_m = jnp.where(m > 0, m, 1.0)

    def kl_term(x):
        return jnp.where(valid & (x > 0), x * jnp.log(jnp.where(x > 0, x, 1.0) / safe_m), 0.0)

    divergence = 0.5 * jnp.sum(kl_term(p) + kl_term(q), axis=-1)
    return jnp.sqrt(jnp.maximum(divergence, 0.0))


def estimate_last_block(
    q: jax.Array,
    k: jax.Array,
    lengths: jax.Array,
    config: SharePrefillConfig,
    *,
    implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
) -> LastBlockEstimate:
    """Estimates every head's attention from its prompt's last `block_size` queries.

    Args:
      q: [B, T, N, H] (RoPE applied): the prompt padded at the end, or a chunk of it (the last
        T of the S key positions) holding at least one block of real queries.
      k: [B, S, K, H].
      lengths: int32[B] real prompt lengths n (of the S positions), each at least one block.
      config: the planner's config.
      implementation, interpret: how the last block's profiles are computed, as for
        pallas_kernels.query_block_profiles (None: the best for the backend).

    Returns:
      The LastBlockEstimate.
    """
    batch, num_queries, num_heads, head_dim = q.shape
    num_keys, num_kv_heads = k.shape[1], k.shape[2]
    bs = config.block_size
    sb = -(-num_keys // bs)
    dtype = compute_dtype(q.dtype)
    nb = num_blocks(lengths, bs)
    start = jnp.maximum(lengths - bs, 0)  # n >= dense_below >= bs whenever this is used
    first_query = num_keys - num_queries  # the absolute position of q's first row
    in_q = jnp.clip(start - first_query, 0, num_queries - bs)

    last_q = jax.vmap(lambda x, s: jax.lax.dynamic_slice_in_dim(x, s, bs, axis=0))(q, in_q)
    last_q = last_q.astype(dtype) * (head_dim**-0.5)  # [B, bs, N, H]
    # Scores in the inputs' precision (bf16 inputs: bf16 scores, as the reference), softmax
    # statistics in float32 (float64 under x64).
    scores_dtype = q.dtype if q.dtype in (jnp.bfloat16, jnp.float16) else dtype
    vertical_tokens, slash_tokens = query_block_profiles(
        last_q.astype(scores_dtype),
        k.astype(scores_dtype),
        start,
        implementation=implementation,
        interpret=interpret,
    )  # [B, N, T] each: by key position, by diagonal offset

    b_min = config.min_blocks
    b_max = nb if config.max_blocks is None else jnp.minimum(config.max_blocks, nb)
    b_max = b_max[:, None]

    # The reference's profiles hold n entries (positions, or offsets, 0..n-1).
    in_prompt = (jnp.arange(num_keys)[None, :] < lengths[:, None])[:, None, :]

    def budget(tokens):  # tokens to reach gamma (the crossing one included), in blocks
        target = coverage.mass_target(config.gamma, quirks=config.reference_quirks)
        blocks = coverage.count_to_reach(tokens, target, in_prompt) // bs + 1
        return jnp.minimum(jnp.maximum(blocks, b_min), b_max)

    vertical = _sum_pool(vertical_tokens, bs, sb)
    slash = _pool_slash(slash_tokens, lengths, nb, bs, sb, quirks=config.reference_quirks)

    block_is_real = jnp.arange(sb)[None, :] < nb[:, None]  # [B, Sb]
    key_mean = block_mean_keys(k.astype(dtype), lengths, bs)  # [B, Sb, K, H]
    query_mean = last_q.mean(axis=1).reshape(
        batch, num_kv_heads, num_heads // num_kv_heads, head_dim
    )
    pooled_logits = jnp.einsum(
        "bkgh,bckh->bkgc", query_mean, key_mean, precision=jax.lax.Precision.HIGHEST
    ).reshape(batch, num_heads, sb)
    pooled = jax.nn.softmax(jnp.where(block_is_real[:, None], pooled_logits, -jnp.inf), axis=-1)
    pooled = jnp.where(block_is_real[:, None], pooled, 0.0)
    distance = sqrt_js_distance(
        pooled, vertical, block_is_real[:, None], quirks=config.reference_quirks
    )
    return LastBlockEstimate(
        vertical=vertical,
        slash=slash,
        num_vertical=budget(vertical_tokens),
        num_slash=budget(slash_tokens),
        query_aware=distance < config.tau_qa,
    )


def block_mean_keys(k: jax.Array, lengths: jax.Array, block_size: int) -> jax.Array:
    """[B, Tb, K, H]: mean of each block's real keys (the partial last block by its own count)."""
    batch, num_keys, num_kv_heads, head_dim = k.shape
    tb = -(-num_keys // block_size)
    is_real = jnp.arange(num_keys)[None, :] < lengths[:, None]
    k = jnp.where(is_real[:, :, None, None], k, 0.0)
    k = jnp.pad(k, ((0, 0), (0, tb * block_size - num_keys), (0, 0), (0, 0)))
    sums = k.reshape(batch, tb, block_size, num_kv_heads, head_dim).sum(axis=2)
    counts = jnp.clip(lengths[:, None] - jnp.arange(tb)[None, :] * block_size, 0, block_size)
    return sums / jnp.maximum(counts, 1)[:, :, None, None]


def _sum_pool(x: jax.Array, block_size: int, num_out: int) -> jax.Array:
    """Sums the last axis in consecutive bins of block_size (zero-padded at the end)."""
    pad = num_out * block_size - x.shape[-1]
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return x.reshape(x.shape[:-1] + (num_out, block_size)).sum(-1)


def _pool_slash(slash_tokens, lengths, nb, block_size, num_out, *, quirks):
    """[B, N, Tb] slash mass per block diagonal offset.

    Exact mapping: token offset delta falls in block offset delta // bs. With `quirks`, the
    reference's binning: it pools the profile indexed by t = n - 1 - delta from t = 0, and reads
    bin c as block offset nb - 1 - c, which shifts the bins when n is not a multiple of bs.
    """
    if not quirks:
        return _sum_pool(slash_tokens, block_size, num_out)
    num_tokens = slash_tokens.shape[-1]
    t = jnp.arange(num_tokens)
    offset_of_t = lengths[:, None] - 1 - t[None, :]  # [B, T]
    by_t = jnp.take_along_axis(slash_tokens, jnp.maximum(offset_of_t, 0)[:, None, :], axis=-1)
    by_t = jnp.where((offset_of_t >= 0)[:, None], by_t, 0.0)
    bins = _sum_pool(by_t, block_size, num_out)  # bin c <-> block offset nb - 1 - c
    c_of_offset = nb[:, None] - 1 - jnp.arange(num_out)[None, :]  # [B, Tb]
    pooled = jnp.take_along_axis(bins, jnp.maximum(c_of_offset, 0)[:, None, :], axis=-1)
    return jnp.where((c_of_offset >= 0)[:, None], pooled, 0.0)
