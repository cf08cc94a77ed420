"""Block-averaged attention maps from the kernels' per-block row log-sum-exps and the final LSE.

A[b, h, i, j] = mean over the real query rows r of block i of sum over keys c in block j of
softmax(q k)[r, c]. The kernels record, for every listed block and row, the log-sum-exp of the
row's scores inside that block (block_lse); with the row's final LSE the block's mass is
exp(block_lse - lse), exact and overflow-free because block_lse <= lse.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.block_sparse_attention import common
from pallas_kernels.block_sparse_attention.layout import BlockGeometry, BlockLayout


def block_map_from_block_lse(
    block_lse: jax.Array, lse: jax.Array, layout: BlockLayout, geometry: BlockGeometry
) -> jax.Array:
    """Finishes block-averaged maps.

    Args:
      block_lse: float32[B, N, Tb, M, bs], as returned by an implementation.
      lse: float32[B, N, T], the final natural-log LSE of the same call.
      layout: the call's layout, [B, N, Tb, M].
      geometry: the call's geometry.

    Returns:
      float32[B, N, Tb, Sb], zero outside the listed blocks.
    """
    bs = geometry.block_size
    batch, num_heads, num_q_blocks, max_blocks = layout.kv_block_idx.shape
    lse_rows = common.pad_queries(lse, geometry, axis=2).reshape(
        batch, num_heads, num_q_blocks, 1, bs
    )
    positions = common.query_positions(geometry)
    row_is_real = (positions >= geometry.query_offset) & (positions < geometry.num_keys)
    row_is_real = row_is_real.reshape(num_q_blocks, 1, bs)
    mass = jnp.where(row_is_real, jnp.exp(block_lse - lse_rows), 0.0).sum(-1)  # [B, N, Tb, M]
    mass = mass / jnp.asarray(geometry.rows_per_q_block(), jnp.float32)[:, None]
    slots = jnp.arange(max_blocks, dtype=jnp.int32)
    mass = jnp.where(slots < layout.kv_block_count[..., None], mass, 0.0)
    rows = batch * num_heads * num_q_blocks
    flat_columns = jnp.arange(rows, dtype=jnp.int32)[
        :, None
    ] * geometry.num_k_blocks + layout.kv_block_idx.reshape(rows, max_blocks)
    dense = jnp.zeros((rows * geometry.num_k_blocks,), jnp.float32)
    dense = dense.at[flat_columns.reshape(-1)].add(mass.reshape(-1), mode="promise_in_bounds")
    return dense.reshape(batch, num_heads, num_q_blocks, geometry.num_k_blocks)
