"""Block patterns as boolean masks [..., Tb, Tb] (query block r, key block c): how each kind of
head chooses its blocks. Every builder works on all heads at once and returns causal masks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sharedsparse_jax import coverage
from sharedsparse_jax.estimate import block_mean_keys, compute_dtype


def causal_blocks(num_blocks: int) -> jax.Array:
    """bool[Tb, Tb]: c <= r."""
    r = jnp.arange(num_blocks)
    return r[None, :] <= r[:, None]


def vertical_slash_selection(
    vertical: jax.Array,
    slash: jax.Array,
    num_vertical: jax.Array,
    num_slash: jax.Array,
    nb: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Which key blocks (verticals) and block offsets (slashes) a head keeps.

    The sink column (block 0) and the diagonal (offset 0) are always kept; a head keeps its
    `num_vertical` best columns and `num_slash` best offsets among the prompt's nb.

    Args:
      vertical, slash: [..., Tb] profiles; num_vertical, num_slash: int32[...]; nb: int32 of a
        shape that broadcasts against the leading dims.

    Returns:
      bool[..., Tb] vertical and slash selections.
    """
    tb = vertical.shape[-1]
    is_real = jnp.arange(tb) < nb[..., None]
    forced = jnp.arange(tb) == 0

    def pick(profile, count):
        profile = jnp.where(forced, jnp.inf, jnp.where(is_real, profile, -jnp.inf))
        return coverage.top_k_mask(profile, jnp.minimum(count, nb)) & is_real

    return pick(vertical, num_vertical), pick(slash, num_slash)


def expand_vertical_slash(vertical_sel: jax.Array, slash_sel: jax.Array) -> jax.Array:
    """bool[..., Tb, Tb]: block (r, c) is kept if column c or offset r - c is kept, c <= r."""
    tb = vertical_sel.shape[-1]
    offset = jnp.arange(tb)[:, None] - jnp.arange(tb)[None, :]  # [r, c] -> r - c
    on_slash = jnp.take(slash_sel, jnp.clip(offset, 0, tb - 1), axis=-1)  # [..., Tb, Tb]
    return (vertical_sel[..., None, :] | on_slash) & causal_blocks(tb)


def streaming_mask(num_blocks: int, sink_blocks: int, window_blocks: int) -> jax.Array:
    """bool[Tb, Tb]: the first `sink_blocks` columns and the last `window_blocks` diagonals."""
    r = jnp.arange(num_blocks)
    offset = r[:, None] - r[None, :]
    return ((r[None, :] < sink_blocks) | (offset < window_blocks)) & (offset >= 0)


def query_aware_selection(
    q: jax.Array,
    k: jax.Array,
    lengths: jax.Array,
    block_size: int,
    gamma: float,
    *,
    quirks: bool,
) -> jax.Array:
    """bool[B, N, Tb, Tb]: FlexPrefill's pooled selection for every head.

    Block-mean queries against block-mean keys, softmax over c <= r per row; the largest
    entries of the whole map are kept while their running sum stays <= gamma * nb (the entry
    that crosses is not kept).
    """
    batch, num_queries, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    dtype = compute_dtype(q.dtype)
    tb = -(-num_queries // block_size)
    nb = (lengths + block_size - 1) // block_size
    query_mean = block_mean_keys(q.astype(dtype), lengths, block_size)  # [B, Tb, N, H]
    key_mean = block_mean_keys(k.astype(dtype), lengths, block_size)  # [B, Tb, K, H]
    query_mean = query_mean.reshape(batch, tb, num_kv_heads, num_heads // num_kv_heads, head_dim)
    logits = (
        jnp.einsum("brkgh,bckh->bkgrc", query_mean, key_mean, precision=jax.lax.Precision.HIGHEST)
        * head_dim**-0.5
    )
    logits = logits.reshape(batch, num_heads, tb, tb)
    is_real = jnp.arange(tb)[None, :] < nb[:, None]  # [B, Tb]
    allowed = causal_blocks(tb)[None] & is_real[:, :, None] & is_real[:, None, :]
    probs = jax.nn.softmax(jnp.where(allowed[:, None], logits, -jnp.inf), axis=-1)
    probs = jnp.where(allowed[:, None], probs, 0.0).reshape(batch, num_heads, tb * tb)
    target = coverage.mass_target(gamma, nb.astype(probs.dtype)[:, None], quirks=quirks)
    valid = jnp.broadcast_to(allowed[:, None], (batch, num_heads, tb, tb)).reshape(probs.shape)
    keep = coverage.keep_within_mass(probs, target, valid)  # the crossing entry is not kept
    return keep.reshape(batch, num_heads, tb, tb)


def row_coverage_pattern(
    block_map: jax.Array, nb: jax.Array, gamma: float, *, quirks: bool
) -> jax.Array:
    """bool[..., Tb, Tb]: per row, the fewest blocks whose mass reaches gamma (a pivot pattern).

    The entry that crosses gamma is kept. A row that never reaches gamma (rounding, gamma = 1)
    keeps all its blocks; with `quirks` it keeps only its largest, as the reference does.
    gamma = 1 keeps every block (coverage.mass_target).
    Block (0, 0) is always kept (the reference pads with flat index 0).
    """
    tb = block_map.shape[-1]
    count = coverage.count_to_reach(block_map, coverage.mass_target(gamma, quirks=quirks))
    never_reached = block_map.sum(axis=-1) < gamma
    count = jnp.where(never_reached, 1 if quirks else tb, count)
    keep = coverage.top_k_mask(block_map, count) & (block_map > 0)
    rows = jnp.arange(tb)
    first = (rows[:, None] == 0) & (rows[None, :] == 0)
    row_is_real = rows < nb[..., None]  # [..., Tb]
    return (keep | first) & row_is_real[..., :, None]


def vertical_slash_coverage(
    block_map: jax.Array, vertical_sel: jax.Array, slash_sel: jax.Array, *, quirks: bool
) -> jax.Array:
    """[...]: the share of a pivot's map its own vertical-slash pattern covers (vs_ratio).

    Default: the mass of the unique, causal blocks the pattern lists, over the map's total.
    With `quirks`, the reference's count: it sums the map over its un-deduplicated list, where
    each of a vertical c's c rows above the diagonal and each of a slash d's d rows past the end
    reads block (0, 0), whose mass is 1; the result can exceed 1.
    """
    total = block_map.sum(axis=(-1, -2))
    if not quirks:
        covered = jnp.where(expand_vertical_slash(vertical_sel, slash_sel), block_map, 0.0)
        return covered.sum(axis=(-1, -2)) / total
    tb = block_map.shape[-1]
    column_mass = block_map.sum(axis=-2)  # [..., Tb]
    key_of = jnp.arange(tb)[:, None] - jnp.arange(tb)[None, :]  # [r, d] -> c = r - d
    skewed = jnp.take_along_axis(
        block_map, jnp.broadcast_to(jnp.maximum(key_of, 0), block_map.shape), axis=-1
    )
    diagonal_mass = jnp.where(key_of >= 0, skewed, 0.0).sum(axis=-2)  # [..., Tb] per offset d
    index = jnp.arange(tb, dtype=block_map.dtype)
    sink = block_map[..., 0, 0][..., None]
    covered = jnp.where(vertical_sel, column_mass + index * sink, 0.0).sum(-1) + jnp.where(
        slash_sel, diagonal_mass + index * sink, 0.0
    ).sum(-1)
    return covered / total
