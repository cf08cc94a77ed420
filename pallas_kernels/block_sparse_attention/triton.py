"""Block-sparse flash attention on the Pallas Triton backend (any CUDA GPU; CPU interpret mode).

One program per (query head, query tile, batch). It walks its row's key-block list with a
runtime trip count, loading each listed K/V block through a dynamic slice of the whole-sequence
ref (a base pointer, no copy), and keeps an exp2-domain online softmax. Blocks strictly below
the diagonal run without a mask; only the tail block that crosses the diagonal (or the end of
the keys) is masked. GQA is native: query head h reads kv head h // G.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from pallas_kernels.block_sparse_attention import common
from pallas_kernels.block_sparse_attention.layout import BlockGeometry, BlockLayout

SUPPORTED_HEAD_DIMS = (32, 64, 128, 256)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TritonConfig:
    """Launch parameters. block_q query rows per program (divides the layout block size)."""

    block_q: int = 128
    num_warps: int = 8
    num_stages: int = 3

    def __post_init__(self):
        if self.block_q < 16 or self.block_q & (self.block_q - 1):
            raise ValueError(f"block_q must be a power of two >= 16, got {self.block_q}")


def default_config(head_dim: int, block_size: int, dtype=jnp.bfloat16) -> TritonConfig:
    """The measured best launch for a head dim and dtype on the H200 (docs/results.md).

    16-bit inputs: 128 query rows, 8 warps, 3 stages (the sweep's best). float32 tiles are
    twice as large: at bs = H = 128 no 128-row launch fits the H200's shared memory (measured),
    so float32 uses 64 rows and one stage.
    """
    if jnp.dtype(dtype).itemsize >= 4:
        return TritonConfig(block_q=min(block_size, 64), num_warps=4, num_stages=1)
    block_q = min(block_size, 64 if head_dim > 128 else 128)
    return TritonConfig(block_q=block_q, num_warps=8 if block_q >= 128 else 4, num_stages=3)


# Recording block LSEs needs more shared memory: 3 stages exceed the H200's 227 KB at
# bq = bs = H = 128 in bf16 (measured), 2 fit.
RECORDING_MAX_STAGES = 2


def check_supported(q: jax.Array, block_size: int, interpret: bool) -> None:
    """Raises NotImplementedError with the reason when this backend cannot run the call."""
    head_dim = q.shape[-1]
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise NotImplementedError(
            f"triton backend supports head dims {SUPPORTED_HEAD_DIMS}, got {head_dim}"
        )
    if block_size < 16 or block_size & (block_size - 1):
        raise NotImplementedError(
            f"triton backend needs a power-of-two block size >= 16, got {block_size}"
        )
    if not interpret and jax.default_backend() != "gpu":
        raise NotImplementedError("triton backend needs a GPU (or interpret=True)")


def _kernel(
    idx_ref,
    count_ref,
    q_ref,
    k_ref,
    v_ref,
    o_ref,
    lse_ref,
    *block_lse_refs,
    qk_scale: float,
    block_size: int,
    block_q: int,
    num_q_tiles: int,
    first_q_pos: int,
    num_keys: int,
    causal: bool,
    precision,
):
    block_lse_ref = block_lse_refs[0] if block_lse_refs else None
    # Heavier (later) query tiles launch first: causal rows grow with the tile index.
    tile = num_q_tiles - 1 - pl.program_id(1)
    q_start = first_q_pos + tile * block_q
    q_pos = q_start + jax.lax.broadcasted_iota(jnp.int32, (block_q, block_size), 0)
    k_offsets = jax.lax.broadcasted_iota(jnp.int32, (block_q, block_size), 1)
    q = q_ref[...]
    head_dim = q.shape[-1]
    count = count_ref[0]

    def needs_mask(kb):
        block_end = kb * block_size + block_size
        tail = block_end > num_keys
        return (block_end - 1 > q_start) | tail if causal else tail

    last = idx_ref[jnp.maximum(count - 1, 0)]
    num_unmasked = jnp.where(needs_mask(last) & (count > 0), count - 1, count)

    def body(j, carry, *, masked):
        m, l, acc = carry
        kb = idx_ref[j]
        start = pl.multiple_of(kb * block_size, block_size)
        k = k_ref[pl.ds(start, block_size), :]
        v = v_ref[pl.ds(start, block_size), :]
        s = (
            jax.lax.dot_general(
                q,
                k,
                (((1,), (1,)), ((), ())),
                preferred_element_type=jnp.float32,
                precision=precision,
            )
            * qk_scale
        )
        if masked:
            k_pos = start + k_offsets
            visible = k_pos < num_keys
            if causal:
                visible &= k_pos <= q_pos
            s = jnp.where(visible, s, common.MASK_VALUE)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.exp2(s - m_new[:, None])
        row_sum = jnp.sum(p, axis=1)
        alpha = jnp.exp2(m - m_new)
        if block_lse_ref is not None:
            # row_sum is 0 only by underflow (every row sees a key of each listed block): the
            # mask value then, not log(0); a NaN passes through.
            block_lse = jnp.where(
                row_sum == 0, common.MASK_VALUE, (m_new + jnp.log2(row_sum)) * common.LN_2
            )
            block_lse_ref[pl.ds(j, 1), :] = block_lse[None, :]
        acc = acc * alpha[:, None] + jnp.dot(
            p.astype(v.dtype), v, preferred_element_type=jnp.float32, precision=precision
        )
        return m_new, l * alpha + row_sum, acc

    carry = (
        jnp.full((block_q,), common.MASK_VALUE, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
        jnp.zeros((block_q, head_dim), jnp.float32),
    )
    carry = jax.lax.fori_loop(0, num_unmasked, functools.partial(body, masked=False), carry)
    m, l, acc = jax.lax.fori_loop(num_unmasked, count, functools.partial(body, masked=True), carry)
    # l is 0 only in a row that sees no key (acc is 0 there too); a NaN among a row's visible
    # scores makes l NaN, and the NaN must reach out and LSE.
    is_empty = l == 0
    safe_l = jnp.where(is_empty, 1.0, l)
    o_ref[...] = (acc / safe_l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(is_empty, common.MASK_VALUE, (m + jnp.log2(safe_l)) * common.LN_2)


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
    config: TritonConfig | None = None,
) -> common.BackendResult:
    """See common.BackendResult for what is returned."""
    bs = geometry.block_size
    # First: default_config builds no launch for a block size this backend cannot tile.
    check_supported(q, bs, interpret)
    config = config or default_config(q.shape[-1], bs, q.dtype)
    if bs % config.block_q:
        raise NotImplementedError(
            f"block_q={config.block_q} must divide the layout block size {bs}"
        )
    if with_block_lse:
        config = dataclasses.replace(
            config, num_stages=min(config.num_stages, RECORDING_MAX_STAGES)
        )
    batch, _, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    group = num_heads // num_kv_heads
    block_q = config.block_q
    num_q_tiles = geometry.padded_queries // block_q
    tiles_per_block = bs // block_q
    max_blocks = layout.max_blocks

    q_padded = common.pad_queries(q, geometry)
    k_padded = common.pad_keys(k, geometry)
    v_padded = common.pad_keys(v, geometry)
    padded_keys = geometry.padded_keys

    def tile_of(i):
        return num_q_tiles - 1 - i

    in_specs = [
        pl.BlockSpec(
            (None, None, None, max_blocks), lambda h, i, b: (b, h, tile_of(i) // tiles_per_block, 0)
        ),
        pl.BlockSpec(
            (None, None, None, 1), lambda h, i, b: (b, h, tile_of(i) // tiles_per_block, 0)
        ),
        pl.BlockSpec((None, block_q, None, head_dim), lambda h, i, b: (b, tile_of(i), h, 0)),
        pl.BlockSpec((None, padded_keys, None, head_dim), lambda h, i, b: (b, 0, h // group, 0)),
        pl.BlockSpec((None, padded_keys, None, head_dim), lambda h, i, b: (b, 0, h // group, 0)),
    ]
    out_specs = [
        pl.BlockSpec((None, block_q, None, head_dim), lambda h, i, b: (b, tile_of(i), h, 0)),
        pl.BlockSpec((None, None, block_q), lambda h, i, b: (b, h, tile_of(i))),
    ]
    out_shape = [
        jax.ShapeDtypeStruct(q_padded.shape, q.dtype),
        jax.ShapeDtypeStruct((batch, num_heads, geometry.padded_queries), jnp.float32),
    ]
    if with_block_lse:
        out_specs.append(
            pl.BlockSpec(
                (None, None, None, max_blocks, block_q),
                lambda h, i, b: (
                    b,
                    h,
                    tile_of(i) // tiles_per_block,
                    0,
                    tile_of(i) % tiles_per_block,
                ),
            )
        )
        out_shape.append(
            jax.ShapeDtypeStruct(
                (batch, num_heads, geometry.num_q_blocks, max_blocks, bs), jnp.float32
            )
        )
    kernel = functools.partial(
        _kernel,
        qk_scale=sm_scale * common.LOG2_E,
        block_size=bs,
        block_q=block_q,
        num_q_tiles=num_q_tiles,
        first_q_pos=geometry.first_q_block * bs,
        num_keys=geometry.num_keys,
        causal=causal,
        precision=jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else None,
    )
    outs = pl.pallas_call(
        kernel,
        grid=(num_heads, num_q_tiles, batch),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=pl_triton.CompilerParams(
            num_warps=config.num_warps, num_stages=config.num_stages
        ),
        interpret=interpret,
        name="block_sparse_attention",
    )(layout.kv_block_idx, layout.kv_block_count[..., None], q_padded, k_padded, v_padded)
    out, lse = outs[0], outs[1]
    return common.BackendResult(
        common.unpad_queries(out, geometry),
        common.unpad_queries(lse, geometry, axis=2),
        outs[2] if with_block_lse else None,
    )
