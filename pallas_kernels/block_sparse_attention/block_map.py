"""Block-averaged attention maps from the kernels' per-block row log-sum-exps and the final LSE.

A[b, h, i, j] = mean over the real query rows r of block i of sum over keys c in block j of
softmax(q k)[r, c]. A query row is real when it is one of the T queries (not the kernels' block
padding) and its position is below the batch element's length (not end padding of the prompt).
The kernels record, for every listed block and row, the log-sum-exp of the row's scores inside
that block (block_lse); with the row's final LSE the block's mass is exp(block_lse - lse), exact
and overflow-free because block_lse <= lse.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.block_sparse_attention import common
from pallas_kernels.block_sparse_attention.layout import BlockGeometry, BlockLayout


def block_map_from_block_lse(
    block_lse: jax.Array,
    lse: jax.Array,
    layout: BlockLayout,
    geometry: BlockGeometry,
    lengths: jax.Array | None = None,
) -> jax.Array:
    """Finishes block-averaged maps.

    Args:
      block_lse: float32[B, N, Tb, M, bs], as returned by an implementation.
      lse: float32[B, N, T], the final natural-log LSE of the same call.
      layout: the call's layout, [B, N, Tb, M].
      geometry: the call's geometry.
      lengths: int32[B] or None: real tokens per batch element, the rest of the S positions
        being end padding; query rows at positions >= lengths[b] take no part. None: every
        position is real.

    Returns:
      float32[B, N, Tb, Sb], zero outside the listed blocks and in query blocks without a real
      row.
    """
    bs = geometry.block_size
    batch, num_heads, num_q_blocks, max_blocks = layout.kv_block_idx.shape
    lse_rows = common.pad_queries(lse, geometry, axis=2).reshape(
        batch, num_heads, num_q_blocks, 1, bs
    )
    positions = common.query_positions(geometry)  # [Tp]
    row_is_real = (positions >= geometry.query_offset) & (positions < geometry.num_keys)
    row_is_real = jnp.broadcast_to(row_is_real, (batch, geometry.padded_queries))
    if lengths is not None:
        row_is_real &= positions < lengths.astype(jnp.int32)[:, None]
    row_is_real = row_is_real.reshape(batch, 1, num_q_blocks, 1, bs)
    # where, not a product: padding rows may hold NaN or garbage block LSEs.
    mass = jnp.where(row_is_real, jnp.exp(block_lse - lse_rows), 0.0).sum(-1)  # [B, N, Tb, M]
    num_real_rows = row_is_real.sum(-1, dtype=jnp.int32)  # [B, 1, Tb, 1]
    mass = mass / jnp.maximum(num_real_rows, 1).astype(jnp.float32)
    slots = jnp.arange(max_blocks, dtype=jnp.int32)
    mass = jnp.where(slots < layout.kv_block_count[..., None], mass, 0.0)
    rows = batch * num_heads * num_q_blocks
    flat_columns = jnp.arange(rows, dtype=jnp.int32)[
        :, None
    ] * geometry.num_k_blocks + layout.kv_block_idx.reshape(rows, max_blocks)
    dense = jnp.zeros((rows * geometry.num_k_blocks,), jnp.float32)
    dense = dense.at[flat_columns.reshape(-1)].add(mass.reshape(-1), mode="promise_in_bounds")
    return dense.reshape(batch, num_heads, num_q_blocks, geometry.num_k_blocks)
