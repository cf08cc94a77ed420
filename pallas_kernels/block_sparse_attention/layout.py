"""The block-list layout: which key blocks each (batch, query head, query block) attends to.

Blocks are aligned to absolute positions: key block j covers keys [j * bs, (j + 1) * bs), and the
T queries are the last T of the S positions, so query block i covers the absolute positions of
key block `first_q_block + i` (the first and last query blocks may be partial; the kernels pad
them). A causal layout therefore lists, for query block i, key blocks <= first_q_block + i.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class BlockGeometry:
    """How T queries at the end of S positions fall onto blocks of `block_size`."""

    num_queries: int  # T
    num_keys: int  # S
    block_size: int  # bs

    def __post_init__(self):
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if not 0 < self.num_queries <= self.num_keys:
            raise ValueError(
                "need 0 < T <= S (queries are the last T of S positions), got"
                f" T={self.num_queries}, S={self.num_keys}"
            )

    @property
    def query_offset(self) -> int:
        """Absolute position of the first query (S - T)."""
        return self.num_keys - self.num_queries

    @property
    def front_pad(self) -> int:
        """Padding rows placed before the first query so that query blocks align with key blocks."""
        return self.query_offset % self.block_size

    @property
    def first_q_block(self) -> int:
        """Absolute (key-block) index of query block 0."""
        return self.query_offset // self.block_size

    @property
    def num_q_blocks(self) -> int:  # Tb
        return math.ceil((self.front_pad + self.num_queries) / self.block_size)

    @property
    def num_k_blocks(self) -> int:  # Sb
        return math.ceil(self.num_keys / self.block_size)

    @property
    def padded_queries(self) -> int:
        return self.num_q_blocks * self.block_size

    @property
    def padded_keys(self) -> int:
        return self.num_k_blocks * self.block_size

    def diagonal_blocks(self) -> np.ndarray:
        """int32[Tb]: the absolute key-block index of each query block (its diagonal block)."""
        return np.arange(self.num_q_blocks, dtype=np.int32) + self.first_q_block

    def rows_per_q_block(self) -> np.ndarray:
        """int32[Tb]: how many real (unpadded) queries each query block holds."""
        starts = np.arange(self.num_q_blocks) * self.block_size - self.front_pad
        lo = np.clip(starts, 0, self.num_queries)
        hi = np.clip(starts + self.block_size, 0, self.num_queries)
        return (hi - lo).astype(np.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """Per-row lists of active key blocks.

    Attributes:
      kv_block_idx: int32[B, N, Tb, M], ascending key-block indices; entries at and past the count
        repeat the last valid one (so a pipeline re-pointing at them issues no new copy).
      kv_block_count: int32[B, N, Tb], number of valid entries, >= 1 for causal rows.
      block_size: static block size in tokens (query block == key block).
    """

    kv_block_idx: jax.Array
    kv_block_count: jax.Array
    block_size: int = dataclasses.field(metadata=dict(static=True))

    @property
    def max_blocks(self) -> int:  # M
        return self.kv_block_idx.shape[-1]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, N, Tb)."""
        return tuple(self.kv_block_count.shape)

    def to_mask(self, num_k_blocks: int) -> jax.Array:
        """bool[B, N, Tb, Sb]: the dense block mask this layout lists."""
        slots = jnp.arange(self.max_blocks, dtype=jnp.int32)
        is_valid = slots < self.kv_block_count[..., None]
        one_hot = self.kv_block_idx[..., None] == jnp.arange(num_k_blocks, dtype=jnp.int32)
        return jnp.any(one_hot & is_valid[..., None], axis=-2)

    def density(self, geometry: BlockGeometry) -> jax.Array:
        """float32[B, N]: listed blocks over causal blocks, per (batch, head)."""
        causal = jnp.asarray(geometry.diagonal_blocks() + 1, jnp.float32).sum()
        return self.kv_block_count.sum(-1).astype(jnp.float32) / causal


def causal_layout(batch: int, num_heads: int, geometry: BlockGeometry) -> BlockLayout:
    """The full causal layout: every query block lists every key block up to its diagonal."""
    diagonal = jnp.asarray(geometry.diagonal_blocks())
    slots = jnp.arange(geometry.num_k_blocks, dtype=jnp.int32)
    idx = jnp.minimum(slots[None, :], diagonal[:, None])  # [Tb, Sb], padded with the diagonal
    shape = (batch, num_heads, geometry.num_q_blocks)
    return BlockLayout(
        kv_block_idx=jnp.broadcast_to(idx, shape + idx.shape[-1:]),
        kv_block_count=jnp.broadcast_to(diagonal + 1, shape),
        block_size=geometry.block_size,
    )


def layout_from_mask(
    block_mask: jax.Array, *, block_size: int, max_blocks: int | None = None
) -> BlockLayout:
    """Compacts a boolean block mask into ascending per-row block lists.

    Jit-able; the result has a static M = `max_blocks` (default Sb, always enough). When the mask is
    concrete (not traced), a row with more than M blocks raises a ValueError; under jit such rows
    keep their first M blocks, so pass an M that bounds the rows.

    Args:
      block_mask: bool[B, N, Tb, Sb].
      block_size: tokens per block.
      max_blocks: M, the static capacity of each row's list.

    Returns:
      The BlockLayout. A row with no block gets count 0 and indices 0.
    """
    if block_mask.ndim != 4:
        raise ValueError(f"block_mask must be [B, N, Tb, Sb], got shape {block_mask.shape}")
    num_k_blocks = block_mask.shape[-1]
    m = num_k_blocks if max_blocks is None else max_blocks
    if not 1 <= m <= num_k_blocks:
        raise ValueError(f"max_blocks must be in [1, Sb={num_k_blocks}], got {max_blocks}")
    block_mask = block_mask.astype(bool)
    counts = block_mask.sum(-1, dtype=jnp.int32)
    if not isinstance(counts, jax.core.Tracer):
        worst = int(counts.max())
        if worst > m:
            row = np.unravel_index(int(np.argmax(np.asarray(counts))), counts.shape)
            raise ValueError(
                f"max_blocks M={m} is too small: row (b, n, i)={tuple(int(r) for r in row)} lists"
                f" {worst} blocks"
            )
    # Scatter each selected column to its rank within the row; ranks >= M land in a dump slot.
    rank = jnp.cumsum(block_mask, axis=-1, dtype=jnp.int32) - 1
    slot = jnp.where(block_mask & (rank < m), rank, m)
    rows = math.prod(block_mask.shape[:-1])
    flat_slot = jnp.arange(rows, dtype=jnp.int32)[:, None] * (m + 1) + slot.reshape(rows, -1)
    columns = jnp.broadcast_to(jnp.arange(num_k_blocks, dtype=jnp.int32), (rows, num_k_blocks))
    compact = (
        jnp.zeros((rows * (m + 1),), jnp.int32)
        .at[flat_slot.reshape(-1)]
        .set(columns.reshape(-1), unique_indices=True, mode="promise_in_bounds")
        .reshape(block_mask.shape[:-1] + (m + 1,))[..., :m]
    )
    counts = jnp.minimum(counts, m)
    return BlockLayout(
        kv_block_idx=_repeat_last_valid(compact, counts),
        kv_block_count=counts,
        block_size=block_size,
    )


def _repeat_last_valid(kv_block_idx: jax.Array, counts: jax.Array) -> jax.Array:
    """Replaces entries at and past each row's count with the row's last valid entry."""
    last = jnp.take_along_axis(kv_block_idx, jnp.maximum(counts - 1, 0)[..., None], axis=-1)
    slots = jnp.arange(kv_block_idx.shape[-1], dtype=jnp.int32)
    return jnp.where(slots < counts[..., None], kv_block_idx, last)


def validate_layout(
    layout: BlockLayout,
    geometry: BlockGeometry,
    *,
    batch: int,
    num_heads: int,
    causal: bool = True,
) -> None:
    """Raises a ValueError that says what is wrong with a layout, or returns None.

    Shape and dtype checks are static. Value checks (counts, ordering, causality, padding) read
    the arrays and run only when they are concrete: under jit there is nothing to read.
    """
    expected = (batch, num_heads, geometry.num_q_blocks)
    if layout.block_size != geometry.block_size:
        raise ValueError(
            f"layout block_size {layout.block_size} != kernel block size {geometry.block_size}"
        )
    if tuple(layout.kv_block_count.shape) != expected:
        raise ValueError(
            f"kv_block_count has shape {tuple(layout.kv_block_count.shape)}, expected (B, N, Tb) ="
            f" {expected} for T={geometry.num_queries}, S={geometry.num_keys},"
            f" block_size={geometry.block_size}"
        )
    if tuple(layout.kv_block_idx.shape[:3]) != expected or layout.kv_block_idx.ndim != 4:
        raise ValueError(
            f"kv_block_idx has shape {tuple(layout.kv_block_idx.shape)}, expected (B, N, Tb, M)"
            f" with (B, N, Tb) = {expected}"
        )
    for name, array in (
        ("kv_block_idx", layout.kv_block_idx),
        ("kv_block_count", layout.kv_block_count),
    ):
        if array.dtype != jnp.int32:
            raise ValueError(f"{name} must be int32, got {array.dtype}")
    if layout.max_blocks > geometry.num_k_blocks:
        raise ValueError(
            f"M={layout.max_blocks} exceeds the number of key blocks Sb={geometry.num_k_blocks}"
        )
    if isinstance(layout.kv_block_idx, jax.core.Tracer) or isinstance(
        layout.kv_block_count, jax.core.Tracer
    ):
        return
    idx = np.asarray(layout.kv_block_idx)
    count = np.asarray(layout.kv_block_count)
    m = layout.max_blocks

    def first_bad(bad: np.ndarray) -> tuple[int, ...]:
        return tuple(int(x) for x in np.argwhere(bad)[0])

    if (count < 1).any() or (count > m).any():
        where = first_bad((count < 1) | (count > m))
        raise ValueError(
            f"kv_block_count must be in [1, M={m}]; row (b, n, i)={where} has {count[where]}"
            + (" (M too small for this row?)" if count[where] > m else "")
        )
    slots = np.arange(m)
    is_valid = slots < count[..., None]
    if ((idx < 0) | (idx >= geometry.num_k_blocks)).any():
        where = first_bad((idx < 0) | (idx >= geometry.num_k_blocks))
        raise ValueError(
            f"kv_block_idx{where}={idx[where]} is outside [0, Sb={geometry.num_k_blocks})"
        )
    rising = np.diff(idx, axis=-1) > 0
    bad_order = ~rising & is_valid[..., 1:]
    if bad_order.any():
        where = first_bad(bad_order)
        raise ValueError(
            f"kv_block_idx must be strictly ascending within the count; row {where[:3]} has"
            f" {idx[where[:3]][: count[where[:3]]].tolist()}"
        )
    last = np.take_along_axis(idx, (count - 1)[..., None], axis=-1)
    bad_pad = ~is_valid & (idx != last)
    if bad_pad.any():
        where = first_bad(bad_pad)
        raise ValueError(
            f"kv_block_idx entries past the count must repeat the last valid one; row {where[:3]}"
            f" slot {where[3]} holds {idx[where]} instead of {last[where[:3]][0]}"
        )
    if causal:
        diagonal = geometry.diagonal_blocks()[None, None, :, None]
        above = is_valid & (idx > diagonal)
        if above.any():
            where = first_bad(above)
            raise ValueError(
                f"block index above the diagonal: row (b, n, i)={where[:3]} lists key block"
                f" {idx[where]} but its diagonal block is {int(diagonal[0, 0, where[2], 0])}"
            )
