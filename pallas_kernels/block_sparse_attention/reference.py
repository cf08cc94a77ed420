"""Dense masked attention in float32: the oracle every other implementation is checked against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.block_sparse_attention import common
from pallas_kernels.block_sparse_attention.layout import BlockGeometry, BlockLayout


def token_mask(layout: BlockLayout, geometry: BlockGeometry, *, causal: bool) -> jax.Array:
    """bool[B, N, T, S]: which keys each query may see under the layout (and causality)."""
    bs = geometry.block_size
    block_mask = layout.to_mask(geometry.num_k_blocks)  # [B, N, Tb, Sb]
    q_pos = common.query_positions(geometry)  # [Tp]
    k_pos = jnp.arange(geometry.padded_keys)
    q_block = (q_pos - geometry.first_q_block * bs) // bs
    mask = block_mask[:, :, q_block][:, :, :, k_pos // bs]  # [B, N, Tp, Sp]
    visible = k_pos[None, :] < geometry.num_keys
    if causal:
        visible &= k_pos[None, :] <= q_pos[:, None]
    mask &= visible
    rows = slice(geometry.front_pad, geometry.front_pad + geometry.num_queries)
    return mask[:, :, rows, : geometry.num_keys]


def scores(q: jax.Array, k: jax.Array, sm_scale: float) -> jax.Array:
    """float32[B, N, T, S] = sm_scale * q . k, GQA without repeating k."""
    batch, num_queries, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    qg = q.astype(jnp.float32).reshape(
        batch, num_queries, num_kv_heads, num_heads // num_kv_heads, head_dim
    )
    s = jnp.einsum(
        "btkgh,bskh->bkgts", qg, k.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    )
    return s.reshape(batch, num_heads, num_queries, k.shape[1]) * sm_scale


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    layout: BlockLayout,
    *,
    sm_scale: float,
    causal: bool,
    geometry: BlockGeometry,
    with_block_lse: bool,
    interpret: bool = False,
) -> common.BackendResult:
    """Dense masked attention over the layout's blocks, in float32.

    Returns out in q's dtype, natural-log lse float32[B, N, T] and, when asked, the per-block
    row log-sum-exp float32[B, N, Tb, M, bs] (see common.BackendResult). A row that sees no key
    gets 0 out and an LSE of MASK_VALUE; a NaN among a row's visible scores gives NaN out and LSE.
    """
    del interpret
    batch, num_queries, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    mask = token_mask(layout, geometry, causal=causal)
    s = jnp.where(mask, scores(q, k, sm_scale), common.MASK_VALUE)
    # An empty row's scores are all MASK_VALUE: its softmax would spread over every key.
    has_keys = mask.any(-1)  # [B, N, T]
    lse = jnp.where(has_keys, jax.nn.logsumexp(s, axis=-1), common.MASK_VALUE)
    p = jnp.where(has_keys[..., None], jnp.exp(s - lse[..., None]), 0.0)
    p = p.reshape(batch, num_kv_heads, num_heads // num_kv_heads, num_queries, -1)
    out = jnp.einsum(
        "bkgts,bskh->btkgh", p, v.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    ).reshape(batch, num_queries, num_heads, head_dim)
    block_lse = None
    if with_block_lse:
        block_lse = _block_lse(s, layout, geometry)
    return common.BackendResult(out.astype(q.dtype), lse, block_lse)


def _block_lse(s: jax.Array, layout: BlockLayout, geometry: BlockGeometry) -> jax.Array:
    """float32[B, N, Tb, M, bs]: log-sum-exp of each row's scores inside each listed block."""
    bs = geometry.block_size
    pad_rows = (
        geometry.front_pad,
        geometry.padded_queries - geometry.front_pad - geometry.num_queries,
    )
    pad_keys = geometry.padded_keys - geometry.num_keys
    s = jnp.pad(s, ((0, 0), (0, 0), pad_rows, (0, pad_keys)), constant_values=common.MASK_VALUE)
    batch, num_heads = s.shape[:2]
    s = s.reshape(batch, num_heads, geometry.num_q_blocks, bs, geometry.num_k_blocks, bs)
    per_block = jax.nn.logsumexp(s, axis=-1)  # [B, N, Tb, bs, Sb]
    picked = jnp.take_along_axis(per_block, layout.kv_block_idx[:, :, :, None, :], axis=-1)
    return jnp.swapaxes(picked, -1, -2)  # [B, N, Tb, M, bs]
