"""Constants and padding helpers shared by every implementation."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.block_sparse_attention.layout import BlockGeometry

# One finite mask value everywhere: exp(MASK_VALUE - m) underflows to 0 without the NaNs that
# -inf produces in rows whose first block is fully masked.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
LOG2_E = 1.4426950408889634
LN_2 = 0.6931471805599453


class BackendResult(NamedTuple):
    """What every implementation returns.

    out: [B, T, N, H] in q's dtype.
    lse: float32[B, N, T], natural log.
    block_lse: float32[B, N, Tb, M, bs] or None: for each listed block (slot m of the row's list)
      and each padded query row r of the block, the natural-log log-sum-exp of that row's visible
      scores inside the block. exp(block_lse - lse) summed over a block's keys is the attention
      mass the row puts on that block, which is what the block-averaged map needs.
    """

    out: jax.Array
    lse: jax.Array
    block_lse: jax.Array | None


def query_positions(geometry: BlockGeometry) -> jax.Array:
    """int32[Tp]: absolute position of every padded query row."""
    start = geometry.first_q_block * geometry.block_size
    return start + jnp.arange(geometry.padded_queries, dtype=jnp.int32)


def pad_queries(x: jax.Array, geometry: BlockGeometry, axis: int = 1) -> jax.Array:
    """Pads the query axis from T to Tp rows (front pad aligns blocks, back pad fills the last)."""
    back = geometry.padded_queries - geometry.front_pad - geometry.num_queries
    if geometry.front_pad == 0 and back == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (geometry.front_pad, back)
    return jnp.pad(x, widths)


def pad_keys(x: jax.Array, geometry: BlockGeometry, axis: int = 1) -> jax.Array:
    """Pads the key axis from S to Sp rows."""
    back = geometry.padded_keys - geometry.num_keys
    if back == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, back)
    return jnp.pad(x, widths)


def unpad_queries(x: jax.Array, geometry: BlockGeometry, axis: int = 1) -> jax.Array:
    """Inverse of pad_queries."""
    if geometry.padded_queries == geometry.num_queries:
        return x
    return jax.lax.slice_in_dim(
        x, geometry.front_pad, geometry.front_pad + geometry.num_queries, axis=axis
    )
