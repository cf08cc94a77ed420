"""Portable block-sparse attention in plain XLA.

Each loop step gathers one key block per (batch, head, query block) row and folds it into an
online softmax, so memory stays O(B N T H) whatever the density. Runs on every backend; it is
the fall-through when no Pallas kernel fits, and a second oracle for the kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.block_sparse_attention import common
from pallas_kernels.block_sparse_attention.layout import BlockGeometry, BlockLayout


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
    """See common.BackendResult for what is returned."""
    del interpret
    bs = geometry.block_size
    batch, _, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    num_q_blocks, num_k_blocks = geometry.num_q_blocks, geometry.num_k_blocks
    max_blocks = layout.max_blocks

    q_blocks = common.pad_queries(q, geometry).reshape(batch, num_q_blocks, bs, num_heads, head_dim)
    q_blocks = q_blocks.transpose(0, 3, 1, 2, 4)  # [B, N, Tb, bs, H]
    k_blocks = common.pad_keys(k, geometry).reshape(batch, num_k_blocks, bs, num_kv_heads, head_dim)
    v_blocks = common.pad_keys(v, geometry).reshape(batch, num_k_blocks, bs, num_kv_heads, head_dim)
    q_pos = common.query_positions(geometry).reshape(num_q_blocks, bs)
    batch_ix = jnp.arange(batch)[:, None, None]
    kv_head_ix = (jnp.arange(num_heads) // (num_heads // num_kv_heads))[None, :, None]
    compute_dtype = jnp.float32 if q.dtype == jnp.float32 else q.dtype
    precision = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else None

    def step(j, carry):
        m, l, acc, block_lse = carry
        kb = layout.kv_block_idx[..., j]  # [B, N, Tb]
        k_blk = k_blocks[batch_ix, kb, :, kv_head_ix, :]  # [B, N, Tb, bs, H]
        v_blk = v_blocks[batch_ix, kb, :, kv_head_ix, :]
        s = (
            jnp.einsum(
                "bnirh,bnich->bnirc",
                q_blocks.astype(compute_dtype),
                k_blk.astype(compute_dtype),
                preferred_element_type=jnp.float32,
                precision=precision,
            )
            * sm_scale
        )
        k_pos = kb[..., None] * bs + jnp.arange(bs)  # [B, N, Tb, bs]
        visible = (j < layout.kv_block_count)[..., None, None] & (
            k_pos[..., None, :] < geometry.num_keys
        )
        if causal:
            visible &= k_pos[..., None, :] <= q_pos[None, None, :, :, None]
        s = jnp.where(visible, s, common.MASK_VALUE)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.where(visible, jnp.exp(s - m_new[..., None]), 0.0)
        row_sum = p.sum(-1)
        alpha = jnp.exp(m - m_new)
        l = l * alpha + row_sum
        pv = jnp.einsum(
            "bnirc,bnich->bnirh",
            p.astype(compute_dtype),
            v_blk.astype(compute_dtype),
            preferred_element_type=jnp.float32,
            precision=precision,
        )
        acc = acc * alpha[..., None] + pv
        if block_lse is not None:
            # A NaN score makes row_sum NaN, which must be recorded, not masked.
            this = jnp.where(row_sum == 0, common.MASK_VALUE, m_new + jnp.log(row_sum))
            block_lse = block_lse.at[:, :, :, j].set(this)
        return m_new, l, acc, block_lse

    rows = (batch, num_heads, num_q_blocks, bs)
    init = (
        jnp.full(rows, common.MASK_VALUE, jnp.float32),
        jnp.zeros(rows, jnp.float32),
        jnp.zeros(rows + (head_dim,), jnp.float32),
        jnp.full((batch, num_heads, num_q_blocks, max_blocks, bs), common.MASK_VALUE, jnp.float32)
        if with_block_lse
        else None,
    )
    num_steps = jnp.minimum(jnp.max(layout.kv_block_count), max_blocks)
    m, l, acc, block_lse = jax.lax.fori_loop(0, num_steps, step, init)

    # l is 0 only in a row that sees no key (0 out, MASK_VALUE LSE); a NaN among a row's visible
    # scores makes l NaN, and the NaN must reach out and LSE.
    is_empty = l == 0
    safe_l = jnp.where(is_empty, 1.0, l)
    out = jnp.where(is_empty[..., None], 0.0, acc / safe_l[..., None])
    lse = jnp.where(is_empty, common.MASK_VALUE, m + jnp.log(safe_l))
    out = out.transpose(0, 2, 3, 1, 4).reshape(batch, geometry.padded_queries, num_heads, head_dim)
    lse = lse.reshape(batch, num_heads, geometry.padded_queries)
    return common.BackendResult(
        common.unpad_queries(out, geometry).astype(q.dtype),
        common.unpad_queries(lse, geometry, axis=2),
        block_lse,
    )
