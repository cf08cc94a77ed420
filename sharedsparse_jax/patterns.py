"""Block patterns as boolean masks [..., Tb, Sb] (query block r, key block c): how each kind of
head chooses its blocks. Every builder works on all heads at once and returns causal masks.

The Tb query blocks are the last Tb of the Sb key blocks (a whole prompt: Tb = Sb; a chunk of
a longer prompt: the chunk's rows over every key so far), so query block r sits at key block
r + Sb - Tb: its diagonal block, and the end of what it may see.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sharedsparse_jax import coverage
from sharedsparse_jax.estimate import block_mean_keys, compute_dtype


def causal_blocks(num_q_blocks: int, num_k_blocks: int | None = None) -> jax.Array:
    """bool[Tb, Sb]: c <= r + Sb - Tb (Sb defaults to Tb)."""
    return block_offsets(num_q_blocks, num_k_blocks) >= 0


def block_offsets(num_q_blocks: int, num_k_blocks: int | None = None) -> jax.Array:
    """int32[Tb, Sb]: the diagonal offset r + Sb - Tb - c of every block (negative: future)."""
    num_k_blocks = num_q_blocks if num_k_blocks is None else num_k_blocks
    first_row = num_k_blocks - num_q_blocks
    return first_row + jnp.arange(num_q_blocks)[:, None] - jnp.arange(num_k_blocks)[None, :]


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
      vertical, slash: [..., Sb] profiles over key blocks and block offsets; num_vertical,
        num_slash: int32[...]; nb: int32 key blocks of the prompt, of a shape that broadcasts
        against the leading dims.

    Returns:
      bool[..., Sb] vertical and slash selections.
    """
    tb = vertical.shape[-1]
    is_real = jnp.arange(tb) < nb[..., None]
    forced = jnp.arange(tb) == 0

    def pick(profile, count):
        profile = jnp.where(forced, jnp.inf, jnp.where(is_real, profile, -jnp.inf))
        return coverage.top_k_mask(profile, jnp.minimum(count, nb)) & is_real

    return pick(vertical, num_vertical), pick(slash, num_slash)


def expand_vertical_slash(
    vertical_sel: jax.Array, slash_sel: jax.Array, num_q_blocks: int | None = None
) -> jax.Array:
    """bool[..., Tb, Sb]: block (r, c) is kept if column c or its diagonal offset is kept.

    Args:
      vertical_sel, slash_sel: bool[..., Sb] selected key blocks and block offsets.
      num_q_blocks: Tb, the query blocks (the last Tb of the Sb); default Sb.
    """
    sb = vertical_sel.shape[-1]
    offset = block_offsets(sb if num_q_blocks is None else num_q_blocks, sb)
    on_slash = jnp.take(slash_sel, jnp.clip(offset, 0, sb - 1), axis=-1)  # [..., Tb, Sb]
    return (vertical_sel[..., None, :] | on_slash) & (offset >= 0)


def streaming_mask(
    num_q_blocks: int, num_k_blocks: int, sink_blocks: int, window_blocks: int
) -> jax.Array:
    """bool[Tb, Sb]: the first `sink_blocks` columns and the last `window_blocks` diagonals."""
    offset = block_offsets(num_q_blocks, num_k_blocks)
    is_sink = jnp.arange(num_k_blocks)[None, :] < sink_blocks
    return (is_sink | (offset < window_blocks)) & (offset >= 0)


def query_aware_selection(
    q: jax.Array,
    k: jax.Array,
    lengths: jax.Array,
    block_size: int,
    gamma: float,
    *,
    quirks: bool,
) -> jax.Array:
    """bool[B, N, Tb, Sb]: FlexPrefill's pooled selection for every head.

    Block-mean queries against block-mean keys, softmax over the causal blocks of each row; the
    largest entries of the whole map are kept while their running sum stays <= gamma times the
    number of real rows (the entry that crosses is not kept).

    Args:
      q: [B, T, N, H], the last T of the S key positions; k: [B, S, K, H].
      lengths: int32[B] real tokens of each prompt (of the S positions).
      block_size, gamma, quirks: as in the planner's config.
    """
    batch, num_queries, num_heads, head_dim = q.shape
    num_keys, num_kv_heads = k.shape[1], k.shape[2]
    dtype = compute_dtype(q.dtype)
    tb, sb = -(-num_queries // block_size), -(-num_keys // block_size)
    nb = (lengths + block_size - 1) // block_size
    rows = jnp.clip(lengths - (num_keys - num_queries), 0, num_queries)  # real rows in q
    query_mean = block_mean_keys(q.astype(dtype), rows, block_size)  # [B, Tb, N, H]
    key_mean = block_mean_keys(k.astype(dtype), lengths, block_size)  # [B, Sb, K, H]
    query_mean = query_mean.reshape(batch, tb, num_kv_heads, num_heads // num_kv_heads, head_dim)
    logits = (
        jnp.einsum("brkgh,bckh->bkgrc", query_mean, key_mean, precision=jax.lax.Precision.HIGHEST)
        * head_dim**-0.5
    )
    logits = logits.reshape(batch, num_heads, tb, sb)
    row_is_real = jnp.arange(tb)[None, :] + sb - tb < nb[:, None]  # [B, Tb]
    key_is_real = jnp.arange(sb)[None, :] < nb[:, None]  # [B, Sb]
    allowed = causal_blocks(tb, sb)[None] & row_is_real[:, :, None] & key_is_real[:, None, :]
    probs = jax.nn.softmax(jnp.where(allowed[:, None], logits, -jnp.inf), axis=-1)
    probs = jnp.where(allowed[:, None], probs, 0.0).reshape(batch, num_heads, tb * sb)
    real_rows = row_is_real.sum(axis=1).astype(probs.dtype)[:, None]
    target = coverage.mass_target(gamma, real_rows, quirks=quirks)
    valid = jnp.broadcast_to(allowed[:, None], (batch, num_heads, tb, sb)).reshape(probs.shape)
    keep = coverage.keep_within_mass(probs, target, valid)  # the crossing entry is not kept
    return keep.reshape(batch, num_heads, tb, sb)


def row_coverage_pattern(
    block_map: jax.Array, nb: jax.Array, gamma: float, *, quirks: bool
) -> jax.Array:
    """bool[..., Tb, Sb]: per row, the fewest blocks whose mass reaches gamma (a pivot pattern).

    The entry that crosses gamma is kept. A row that never reaches gamma (rounding, gamma = 1)
    keeps all its blocks; with `quirks` it keeps only its largest, as the reference does.
    gamma = 1 keeps every block (coverage.mass_target).
    Block (0, 0) is always kept (the reference pads with flat index 0).

    Args:
      block_map: [..., Tb, Sb] block-averaged maps (rows: the last Tb of the Sb key blocks).
      nb: int32 key blocks of the prompt, broadcasting against the leading dims.
      gamma, quirks: as in the planner's config.
    """
    tb, sb = block_map.shape[-2:]
    count = coverage.count_to_reach(block_map, coverage.mass_target(gamma, quirks=quirks))
    never_reached = block_map.sum(axis=-1) < gamma
    count = jnp.where(never_reached, 1 if quirks else sb, count)
    keep = coverage.top_k_mask(block_map, count) & (block_map > 0)
    first = (jnp.arange(tb)[:, None] == 0) & (jnp.arange(sb)[None, :] == 0)
    row_is_real = jnp.arange(tb) + sb - tb < nb[..., None]  # [..., Tb]
    return (keep | first) & row_is_real[..., :, None]


def vertical_slash_coverage(
    block_map: jax.Array, vertical_sel: jax.Array, slash_sel: jax.Array, *, quirks: bool
) -> jax.Array:
    """[...]: the share of a pivot's map its own vertical-slash pattern covers (vs_ratio).

    Default: the mass of the unique, causal blocks the pattern lists, over the map's total.
    With `quirks`, the reference's count: it sums the map over its un-deduplicated list, where
    each of a vertical c's c rows above the diagonal and each of a slash d's d rows past the end
    reads block (0, 0), whose mass is 1; the result can exceed 1 (whole prompts only: Tb = Sb).

    Args:
      block_map: [..., Tb, Sb] a pivot's block-averaged map.
      vertical_sel, slash_sel: bool[..., Sb] its own vertical-slash selection.
    """
    total = block_map.sum(axis=(-1, -2))
    tb = block_map.shape[-2]
    if not quirks:
        pattern = expand_vertical_slash(vertical_sel, slash_sel, tb)
        covered = jnp.where(pattern, block_map, 0.0)
        return covered.sum(axis=(-1, -2)) / total
    if block_map.shape[-1] != tb:
        raise ValueError("reference_quirks reproduces whole-prompt planning only (Tb = Sb)")
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
