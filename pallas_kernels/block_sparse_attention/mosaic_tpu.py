"""Block-sparse flash attention for TPU (Pallas Mosaic TPU, scalar prefetch).

The grid is (B, N, Tb, M). The block lists and counts are scalar-prefetched into SMEM, and the
K/V index maps read them to DMA the listed block of each step. Steps at or past a row's count
re-point at the row's last valid block, which is already resident, so the pipeline issues no
copy for them (splash attention's 'immediate revisiting'), and a `pl.when` skips their compute.
Only blocks that cross the diagonal (or the end of the keys) are masked.

Verified in TPU interpret mode on the CPU only; no TPU was available to this project yet.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.block_sparse_attention import common
from pallas_kernels.block_sparse_attention.layout import BlockGeometry, BlockLayout

NUM_LANES = 128
# Scalar-prefetched lists live in SMEM (1 MiB on v5p); keep well under it.
SMEM_BUDGET_BYTES = 512 * 1024


def check_supported(q: jax.Array, layout: BlockLayout, interpret: bool) -> None:
    """Raises NotImplementedError with the reason when this backend cannot run the call."""
    if not interpret and jax.default_backend() != "tpu":
        raise NotImplementedError("mosaic_tpu needs a TPU (or interpret=True)")
    if interpret:
        return
    head_dim = q.shape[-1]
    if head_dim % NUM_LANES:
        raise NotImplementedError(
            f"mosaic_tpu needs a head dim multiple of {NUM_LANES}, got {head_dim}"
        )
    if layout.block_size % NUM_LANES:
        raise NotImplementedError(
            f"mosaic_tpu needs a block size multiple of {NUM_LANES}, got {layout.block_size}"
        )
    smem = layout.kv_block_idx.size * 4 + layout.kv_block_count.size * 4
    if smem > SMEM_BUDGET_BYTES:
        raise NotImplementedError(
            f"block lists take {smem} bytes of SMEM, over the {SMEM_BUDGET_BYTES}-byte budget"
        )


def _kernel(
    idx_ref,
    count_ref,
    q_ref,
    k_ref,
    v_ref,
    o_ref,
    lse_ref,
    *refs,
    sm_scale: float,
    block_size: int,
    max_blocks: int,
    first_q_block: int,
    num_keys: int,
    causal: bool,
    with_block_lse: bool,
):
    if with_block_lse:
        block_lse_ref, m_ref, l_ref, acc_ref = refs
    else:
        block_lse_ref, (m_ref, l_ref, acc_ref) = None, refs
    b, h, i, j = (pl.program_id(axis) for axis in range(4))
    count = count_ref[b, h, i]

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, common.MASK_VALUE, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    kb = idx_ref[b, h, i, j]
    block_end = kb * block_size + block_size
    crosses = block_end > num_keys
    if causal:
        crosses |= kb >= first_q_block + i

    def accumulate(masked: bool):
        q = q_ref[...]
        s = (
            jax.lax.dot_general(
                q, k_ref[...], (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
            )
            * sm_scale
        )
        if masked:
            shape = s.shape
            q_pos = (first_q_block + i) * block_size + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
            k_pos = kb * block_size + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
            visible = k_pos < num_keys
            if causal:
                visible &= k_pos <= q_pos
            s = jnp.where(visible, s, common.MASK_VALUE)
        m_prev = m_ref[...]  # [bs, 128], lanes equal
        m_next = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
        p = jnp.exp(s - m_next[:, :1])
        row_sum = p.sum(axis=-1, keepdims=True)
        alpha = jnp.exp(m_prev - m_next)
        m_ref[...] = m_next
        l_ref[...] = alpha * l_ref[...] + row_sum
        acc_ref[...] = alpha[:, :1] * acc_ref[...] + jax.lax.dot_general(
            p.astype(v_ref.dtype),
            v_ref[...],
            (((1,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        if block_lse_ref is not None:
            # row_sum is 0 only by underflow: the mask value then, not log(0); a NaN passes.
            column = jnp.where(row_sum == 0, common.MASK_VALUE, m_next + jnp.log(row_sum))
            block_lse_ref[pl.ds(j, 1), :] = column.T[:1, :]  # column: [bs, 128], lanes equal

    @pl.when((j < count) & crosses)
    def _masked():
        accumulate(masked=True)

    @pl.when((j < count) & ~crosses)
    def _unmasked():
        accumulate(masked=False)

    @pl.when(j == max_blocks - 1)
    def _finish():
        # l is 0 only in a row that sees no key (acc is 0 there too); a NaN among a row's
        # visible scores makes l NaN, and the NaN must reach out and LSE.
        l = l_ref[...]
        is_empty = l == 0
        safe_l = jnp.where(is_empty, 1.0, l)
        o_ref[...] = (acc_ref[...] / safe_l[:, :1]).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(is_empty, common.MASK_VALUE, m_ref[...] + jnp.log(safe_l))


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
    check_supported(q, layout, interpret)
    bs = geometry.block_size
    batch, _, num_heads, head_dim = q.shape
    group = num_heads // k.shape[2]
    max_blocks = layout.max_blocks
    # Heads-major layout so that every block is a (rows, head_dim) tile.
    q_t = common.pad_queries(q, geometry).transpose(0, 2, 1, 3)  # [B, N, Tp, H]
    k_t = common.pad_keys(k, geometry).transpose(0, 2, 1, 3)  # [B, K, Sp, H]
    v_t = common.pad_keys(v, geometry).transpose(0, 2, 1, 3)

    def kv_index(b, h, i, j, idx_ref, count_ref):
        slot = jnp.minimum(j, jnp.maximum(count_ref[b, h, i] - 1, 0))
        return b, h // group, idx_ref[b, h, i, slot], 0

    def row_index(b, h, i, j, idx_ref, count_ref):
        return b, h, i, 0

    in_specs = [
        pl.BlockSpec((None, None, bs, head_dim), row_index),
        pl.BlockSpec((None, None, bs, head_dim), kv_index),
        pl.BlockSpec((None, None, bs, head_dim), kv_index),
    ]
    out_specs = [
        pl.BlockSpec((None, None, bs, head_dim), row_index),
        pl.BlockSpec((None, None, bs, NUM_LANES), row_index),
    ]
    out_shape = [
        jax.ShapeDtypeStruct(q_t.shape, q.dtype),
        jax.ShapeDtypeStruct((batch, num_heads, geometry.padded_queries, NUM_LANES), jnp.float32),
    ]
    if with_block_lse:
        out_specs.append(
            pl.BlockSpec((None, None, None, max_blocks, bs), lambda b, h, i, j, *_: (b, h, i, 0, 0))
        )
        out_shape.append(
            jax.ShapeDtypeStruct(
                (batch, num_heads, geometry.num_q_blocks, max_blocks, bs), jnp.float32
            )
        )
    kernel = functools.partial(
        _kernel,
        sm_scale=sm_scale,
        block_size=bs,
        max_blocks=max_blocks,
        first_q_block=geometry.first_q_block,
        num_keys=geometry.num_keys,
        causal=causal,
        with_block_lse=with_block_lse,
    )
    outs = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(batch, num_heads, geometry.num_q_blocks, max_blocks),
            in_specs=in_specs,
            out_specs=out_specs,
            scratch_shapes=[
                pltpu.VMEM((bs, NUM_LANES), jnp.float32),
                pltpu.VMEM((bs, NUM_LANES), jnp.float32),
                pltpu.VMEM((bs, head_dim), jnp.float32),
            ],
        ),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        ),
        interpret=pltpu.InterpretParams() if interpret else False,
        name="block_sparse_attention_tpu",
    )(layout.kv_block_idx, layout.kv_block_count, q_t, k_t, v_t)
    out = common.unpad_queries(outs[0].transpose(0, 2, 1, 3), geometry)
    lse = common.unpad_queries(outs[1][..., 0], geometry, axis=2)
    return common.BackendResult(out, lse, outs[2] if with_block_lse else None)
