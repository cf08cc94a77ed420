"""Cross-head steps of a layer when its heads are split over a mesh axis.

Inside `jax.shard_map` each device holds N_local = N / m consecutive query heads (and their kv
heads) of the layer. The planner's per-head work stays local; its few cross-head steps (which
head of a cluster comes first, the pivot's profiles and pattern, the stats) go through these
helpers, which are collectives over `axis` or, with `axis=None` (all heads on one device), the
identity. Both give the same numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def head_offset(axis: str | None, num_local_heads: int) -> jax.Array | int:
    """Global index of this device's first query head."""
    if axis is None:
        return 0
    return jax.lax.axis_index(axis) * num_local_heads


def sum_over_heads(x: jax.Array, axis: str | None) -> jax.Array:
    """The sum of `x` over every shard's heads (x already summed over the local ones)."""
    return x if axis is None else jax.lax.psum(x, axis)


def count_in_earlier_shards(x: jax.Array, axis: str | None) -> jax.Array:
    """The sum of `x` over the shards before this one (heads of lower global index)."""
    if axis is None:
        return jnp.zeros_like(x)
    every = jax.lax.all_gather(x, axis)  # [m, ...]
    before = jnp.arange(every.shape[0]) < jax.lax.axis_index(axis)
    return jnp.sum(jnp.where(before.reshape((-1,) + (1,) * x.ndim), every, 0), axis=0)


def gather_heads(x: jax.Array, axis: str | None, head_dim: int = 1) -> jax.Array:
    """Every shard's heads of `x` side by side along `head_dim` (global head order)."""
    return x if axis is None else jax.lax.all_gather(x, axis, axis=head_dim, tiled=True)


def from_one_shard(x: jax.Array, axis: str | None) -> jax.Array:
    """The value held by the one shard where `x` is nonzero (booleans: packed to bits first),
    replicated to every shard."""
    if axis is None:
        return x
    if x.dtype == jnp.bool_:
        packed = jnp.packbits(x, axis=-1)  # 8 blocks per byte on the wire
        return jnp.unpackbits(jax.lax.psum(packed, axis), axis=-1, count=x.shape[-1]).astype(bool)
    return jax.lax.psum(x, axis)
