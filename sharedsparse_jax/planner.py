"""One layer's plan: every (batch, query head)'s category and block mask, from q, k and the state.

No Python loops over heads, clusters or batch elements and no host syncs: the reference's
per-head loop becomes reductions over the head axis (which head of a cluster comes first, which
cluster a head's pivot belongs to), so the whole layer is one traced computation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sharedsparse_jax import estimate, heads, patterns
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.sharing import SharingState, SharingTable

# Head categories, in the order stats report them.
CATEGORIES = ("dense", "pivot", "shared", "query_aware", "vertical_slash", "streaming")
DENSE, PIVOT, SHARED, QUERY_AWARE, VERTICAL_SLASH, STREAMING = range(len(CATEGORIES))


# Why each head of a shared cluster did or did not take its pivot's pattern, in the order
# stats report them: the head is the pivot or shares; it is dense (short prompt) or
# query-aware, so not eligible; its cluster's pivot was chosen in this layer (the pattern
# reaches later layers); the pivot's own vertical-slash pattern covers >= tau_fb of its map;
# its vertical or slash profile is tau_sim or more from the pivot's. `not_shared` heads are in
# no cluster that shares at the prompt's length.
SHARE_REASONS = (
    "not_shared",
    "pivot",
    "shared",
    "dense_prompt",
    "query_aware",
    "pivot_this_layer",
    "fallback_covers",
    "vertical_far",
    "slash_far",
)
NOT_SHARED = SHARE_REASONS.index("not_shared")


class SharingDecisions(NamedTuple):
    """Per (batch, query head): why it shares or not, and the values the rules compared.

    reason: int32[B, N], an index into SHARE_REASONS.
    vertical_distance, slash_distance: float32[B, N], square-root Jensen-Shannon distance of
      the head's profiles to its cluster's pivot's (NaN where no pivot was there to compare).
    fallback_coverage: float32[B, N], the vs_ratio of the head's cluster's pivot (NaN where
      none).
    """

    reason: jax.Array
    vertical_distance: jax.Array
    slash_distance: jax.Array
    fallback_coverage: jax.Array

    @classmethod
    def none(cls, batch: int, num_heads: int) -> SharingDecisions:
        """No head is in a shared cluster."""
        nan = jnp.full((batch, num_heads), jnp.nan, jnp.float32)
        return cls(jnp.full((batch, num_heads), NOT_SHARED, jnp.int32), nan, nan, nan)


class LayerPlan(NamedTuple):
    """block_mask: bool[B, N, Tb, Sb] (the Tb query blocks are the last Tb of the Sb key
    blocks); category: int32[B, N] (an index into CATEGORIES); decisions: the sharing decisions
    of every head."""

    block_mask: jax.Array
    category: jax.Array
    decisions: SharingDecisions


def plan_layer(
    q: jax.Array,
    k: jax.Array,
    state: SharingState,
    *,
    layer: jax.Array | int,
    lengths: jax.Array,
    config: SharePrefillConfig,
    table: SharingTable | None,
    profile_implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
    head_axis: str | None = None,
) -> tuple[LayerPlan, SharingState]:
    """Plans one layer for all heads and batch elements.

    Args:
      q: [B, T, N, H] after RoPE: the prompt padded at the end to T, or a chunk of it (the last
        T of the S keys so far; T and S - T multiples of the block size); k: [B, S, K, H].
      state: the sharing state left by earlier layers.
      layer: this layer's index (traced inside a scan over layers).
      lengths: int32[B] real prompt lengths (tokens of the S positions).
      config: the planner's config.
      table: the sharing table (None: no clusters).
      profile_implementation, interpret: how the estimation computes the last block's
        profiles (pallas_kernels.query_block_profiles; None: the best for the backend).
      head_axis: inside shard_map, the mesh axis the query heads are split over (q holds this
        shard's consecutive heads); None: q holds every head.

    Returns:
      The plan, and the state with this layer's new pivots entered (their patterns arrive with
      `absorb_pivot_maps` once the layer's attention has run).
    """
    batch, num_queries, num_heads, _ = q.shape
    num_keys = k.shape[1]
    lengths = jnp.asarray(lengths)
    check_lengths(lengths, batch, num_keys)
    if table is not None and not isinstance(layer, jax.core.Tracer):
        if not 0 <= int(layer) < table.num_layers:
            raise ValueError(
                f"layer {int(layer)} is outside the sharing table's {table.num_layers} layers"
            )
    bs = config.block_size
    tb, sb = -(-num_queries // bs), -(-num_keys // bs)
    nb = estimate.num_blocks(lengths, bs)
    causal = patterns.causal_blocks(tb, sb)
    full = jnp.broadcast_to(causal, (batch, num_heads, tb, sb))

    # Every prompt padded to fewer than dense_below tokens is shorter than that: plan dense
    # without estimating (which also needs one full block of queries).
    no_sharing = SharingDecisions.none(batch, num_heads)
    if config.method == "dense" or num_keys < config.dense_below:
        plan = LayerPlan(full, jnp.full((batch, num_heads), DENSE, jnp.int32), no_sharing)
    elif config.method == "streaming":
        mask = patterns.streaming_mask(
            tb, sb, -(-config.streaming_sink // bs), -(-config.streaming_window // bs)
        )
        plan = LayerPlan(
            jnp.broadcast_to(mask, full.shape),
            jnp.full((batch, num_heads), STREAMING, jnp.int32),
            no_sharing,
        )
    else:
        est = estimate.estimate_last_block(
            q, k, lengths, config, implementation=profile_implementation, interpret=interpret
        )
        plan, state = _plan_estimated(
            q, k, est, state, layer, lengths, nb, config, table, head_axis
        )

    is_short = _runs_dense(lengths, num_queries, num_keys, config)[:, None]
    rows_are_real = (jnp.arange(tb)[None, :] + sb - tb < nb[:, None])[:, None, :, None]
    diagonal_only = patterns.block_offsets(tb, sb) == 0
    mask = jnp.where(is_short[..., None, None], full, plan.block_mask)
    mask = jnp.where(rows_are_real, mask, diagonal_only)  # padding rows: cheapest valid row
    category = jnp.where(is_short, DENSE, plan.category)
    return LayerPlan(mask, category, plan.decisions), state


def _runs_dense(lengths, num_queries: int, num_keys: int, config) -> jax.Array:
    """bool[B]: prompts shorter than dense_below, and chunks holding less than one block of real
    queries (too few to estimate from; their few rows cost little)."""
    real_rows = lengths - (num_keys - num_queries)
    return (lengths < config.dense_below) | (real_rows < config.block_size)


def check_lengths(lengths: jax.Array, batch: int, num_keys: int) -> None:
    """Raises a ValueError unless lengths is int[B] with 1 <= lengths <= S where it is concrete.

    Traced lengths (under jit) are checked for shape and dtype only.
    """
    if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(
            f"lengths must be int[B] = int[{batch}], got {lengths.dtype}{list(lengths.shape)}"
        )
    if isinstance(lengths, jax.core.Tracer):
        return
    values = np.asarray(lengths)
    if (values < 1).any() or (values > num_keys).any():
        raise ValueError(
            f"lengths must be in [1, T={num_keys}] (real tokens of each end-padded prompt),"
            f" got {values.tolist()}"
        )


def _plan_estimated(q, k, est, state, layer, lengths, nb, config, table, head_axis):
    """The vertical_slash, flexprefill and shareprefill methods (they all estimate)."""
    batch, num_queries, num_heads, _ = q.shape
    num_keys = k.shape[1]
    tb, sb = -(-num_queries // config.block_size), -(-num_keys // config.block_size)
    causal = patterns.causal_blocks(tb, sb)
    quirks = config.reference_quirks
    nb_heads = nb[:, None]
    decisions = SharingDecisions.none(batch, num_heads)
    if config.method == "vertical_slash":
        vertical_sel, slash_sel = patterns.vertical_slash_selection(
            est.vertical, est.slash, est.num_vertical, est.num_slash, nb_heads
        )
        mask = patterns.expand_vertical_slash(vertical_sel, slash_sel, tb)
        category = jnp.full((batch, num_heads), VERTICAL_SLASH, jnp.int32)
        return LayerPlan(mask, category, decisions), state

    query_aware = est.query_aware
    is_pivot = is_shared = jnp.zeros((batch, num_heads), bool)
    is_short = _runs_dense(lengths, num_queries, num_keys, config)[:, None]
    shares = config.method == "shareprefill" and table is not None and table.num_shared > 0
    if shares:
        slot = _local_slots(table, layer, num_heads, head_axis)  # [N], -1: no shared cluster
        member = slot[:, None] == jnp.arange(table.num_shared)[None, :]  # [N, C]
        # The length band of each prompt decides which clusters share.
        band = jnp.searchsorted(jnp.asarray(table.band_min_tokens), lengths, side="right") - 1
        slot_shares = jnp.asarray(table.slot_shared_by_band)[band]  # [B, C]
        in_shared_cluster = (slot >= 0)[None, :] & jnp.take_along_axis(
            slot_shares, jnp.broadcast_to(jnp.clip(slot, 0)[None, :], (batch, num_heads)), axis=1
        )  # [B, N]
        eligible = ~query_aware & in_shared_cluster & ~is_short
        per_slot = eligible[:, :, None] & member[None]  # [B, N, C]
        # The first eligible member of a cluster without a pivot becomes its pivot.
        earlier = jnp.cumsum(per_slot, axis=1) - per_slot
        earlier += heads.count_in_earlier_shards(per_slot.sum(axis=1), head_axis)[:, None, :]
        becomes_pivot = per_slot & (earlier == 0) & ~state.has_pivot[:, None, :]  # [B, N, C]
        is_pivot = becomes_pivot.any(axis=-1)

        def of_own_cluster(x):  # [B, C, ...] -> [B, N, ...], the value of each head's cluster
            index = jnp.clip(slot, 0)[None, :].reshape((1, num_heads) + (1,) * (x.ndim - 2))
            return jnp.take_along_axis(
                x, jnp.broadcast_to(index, (batch,) + index.shape[1:]), axis=1
            )

        block_is_real = (jnp.arange(sb)[None, :] < nb_heads)[:, None, :]
        vertical_distance = estimate.sqrt_js_distance(
            of_own_cluster(state.vertical), est.vertical, block_is_real, quirks=quirks
        )
        slash_distance = estimate.sqrt_js_distance(
            of_own_cluster(state.slash), est.slash, block_is_real, quirks=quirks
        )
        vertical_near = vertical_distance < config.tau_sim
        slash_near = slash_distance < config.tau_sim
        fallback_coverage = of_own_cluster(state.vs_ratio)
        below_fallback = config.below_fallback_coverage(fallback_coverage)
        has_pivot = of_own_cluster(state.has_pivot)
        is_shared = eligible & has_pivot & vertical_near & slash_near & below_fallback
        decisions = _sharing_decisions(
            in_shared_cluster,
            is_pivot=is_pivot,
            is_shared=is_shared,
            is_short=is_short,
            query_aware=query_aware,
            has_pivot=has_pivot,
            below_fallback=below_fallback,
            vertical_near=vertical_near,
            vertical_distance=vertical_distance,
            slash_distance=slash_distance,
            fallback_coverage=fallback_coverage,
        )

    # Query-aware and shared heads keep the fewest verticals and slashes; every other head (a
    # pivot among them) its own budgets, so a pivot's selection here is its own pattern.
    b_min = config.min_blocks
    at_floor = query_aware | is_shared
    vertical_sel, slash_sel = patterns.vertical_slash_selection(
        est.vertical,
        est.slash,
        jnp.where(at_floor, b_min, est.num_vertical),
        jnp.where(at_floor, b_min, est.num_slash),
        nb_heads,
    )
    mask = patterns.expand_vertical_slash(vertical_sel, slash_sel, tb)
    mask |= is_pivot[..., None, None] & causal
    if shares:
        state = _enter_pivots(state, becomes_pivot, est, vertical_sel, slash_sel, head_axis)
        mask |= is_shared[..., None, None] & of_own_cluster(state.pattern)
    selected = patterns.query_aware_selection(
        q, k, lengths, config.block_size, config.gamma, quirks=quirks
    )
    mask |= query_aware[..., None, None] & selected
    category = jnp.where(
        is_pivot,
        PIVOT,
        jnp.where(is_shared, SHARED, jnp.where(query_aware, QUERY_AWARE, VERTICAL_SLASH)),
    )
    return LayerPlan(mask, category.astype(jnp.int32), decisions), state


def _sharing_decisions(
    in_shared_cluster,
    *,
    is_pivot,
    is_shared,
    is_short,
    query_aware,
    has_pivot,
    below_fallback,
    vertical_near,
    vertical_distance,
    slash_distance,
    fallback_coverage,
) -> SharingDecisions:
    """Each head's reason, the first rule that decided it (SHARE_REASONS order)."""
    is_short = jnp.broadcast_to(is_short, is_pivot.shape)
    # One condition per entry of SHARE_REASONS, in its order; the first that holds decides.
    decided = [
        ~in_shared_cluster,
        is_pivot,
        is_shared,
        is_short,
        query_aware,
        ~has_pivot,
        ~below_fallback,
        ~vertical_near,
        jnp.ones_like(is_pivot),  # slash_far: the only rule left
    ]
    reason = jnp.argmax(jnp.stack(decided, axis=-1), axis=-1).astype(jnp.int32)
    compared = in_shared_cluster & has_pivot

    def measured(x):
        return jnp.where(compared, x, jnp.nan).astype(jnp.float32)

    return SharingDecisions(
        reason, measured(vertical_distance), measured(slash_distance), measured(fallback_coverage)
    )


def _enter_pivots(state, becomes_pivot, est, vertical_sel, slash_sel, head_axis) -> SharingState:
    """Records each new pivot's profiles and vertical-slash selection (its own budgets: a pivot
    is neither shared nor query-aware) in its slot."""
    local_new = becomes_pivot.any(axis=1).astype(jnp.int32)  # [B, C]
    has_new = heads.sum_over_heads(local_new, head_axis) > 0
    weight = becomes_pivot.astype(est.vertical.dtype)

    def from_pivot(x):  # [B, N, Tb] -> [B, C, Tb], a sum over heads with one nonzero term
        local = jnp.einsum(
            "bnc,bnt->bct", weight, x.astype(weight.dtype), precision=jax.lax.Precision.HIGHEST
        )
        return heads.sum_over_heads(local, head_axis)

    def put(old, new):
        return jnp.where(has_new[..., None], new.astype(old.dtype), old)

    return dataclasses.replace(
        state,
        has_pivot=state.has_pivot | has_new,
        vertical=put(state.vertical, from_pivot(est.vertical)),
        slash=put(state.slash, from_pivot(est.slash)),
        vs_vertical=put(state.vs_vertical, from_pivot(vertical_sel) > 0.5),
        vs_slash=put(state.vs_slash, from_pivot(slash_sel) > 0.5),
    )


def absorb_pivot_maps(
    state: SharingState,
    plan: LayerPlan,
    block_maps: jax.Array,
    *,
    layer: jax.Array | int,
    lengths: jax.Array,
    config: SharePrefillConfig,
    table: SharingTable | None,
    head_axis: str | None = None,
) -> SharingState:
    """Turns this layer's pivots' exact block maps into their clusters' patterns and vs_ratios.

    With heads split over `head_axis`, the shard holding a pivot computes its pattern and
    vs_ratio and hands them to the others (bit-packed pattern, one float).

    Args:
      state: as returned by plan_layer for this layer.
      plan: this layer's plan.
      block_maps: float[B, N, Tb, Sb] block-averaged attention maps, valid for pivot heads.
      layer, lengths, config, table, head_axis: as for plan_layer.

    Returns:
      The state later layers share from.
    """
    if table is None or not table.num_shared or config.method != "shareprefill":
        return state
    slot = _local_slots(table, layer, plan.category.shape[1], head_axis)
    member = slot[:, None] == jnp.arange(table.num_shared)[None, :]  # [N, C]
    new_pivot = (plan.category == PIVOT)[:, :, None] & member[None]  # [B, N, C]
    holds_pivot = new_pivot.any(axis=1)  # [B, C], on this shard
    has_new = heads.sum_over_heads(holds_pivot.astype(jnp.int32), head_axis) > 0
    nb = estimate.num_blocks(lengths, config.block_size)

    def absorb(state):
        pivot_map = jnp.einsum(
            "bnc,bnrs->bcrs",
            new_pivot.astype(block_maps.dtype),
            block_maps,
            precision=jax.lax.Precision.HIGHEST,
        )
        # Rows of the end padding take no part in a pattern or its vertical-slash coverage.
        tb, sb = pivot_map.shape[-2:]
        row_is_real = jnp.arange(tb)[None, :] + sb - tb < nb[:, None]  # [B, Tb]
        pivot_map = jnp.where(row_is_real[:, None, :, None], pivot_map, 0.0)
        pattern = patterns.row_coverage_pattern(
            pivot_map, nb[:, None], config.gamma, quirks=config.reference_quirks
        )
        ratio = patterns.vertical_slash_coverage(
            pivot_map, state.vs_vertical, state.vs_slash, quirks=config.reference_quirks
        )
        pattern = heads.from_one_shard(pattern & holds_pivot[..., None, None], head_axis)
        ratio = heads.sum_over_heads(jnp.where(holds_pivot, ratio, 0.0), head_axis)
        return dataclasses.replace(
            state,
            pattern=jnp.where(has_new[..., None, None], pattern, state.pattern),
            vs_ratio=jnp.where(has_new, ratio.astype(state.vs_ratio.dtype), state.vs_ratio),
        )

    return jax.lax.cond(has_new.any(), absorb, lambda s: s, state)


def _local_slots(table: SharingTable, layer, num_heads: int, head_axis: str | None) -> jax.Array:
    """int32[N]: the sharing-state slot of this shard's query heads in `layer` (-1: none)."""
    slots = jnp.asarray(table.shared_slot_of)[layer]  # [N] of every head
    start = heads.head_offset(head_axis, num_heads)
    return jax.lax.dynamic_slice_in_dim(slots, start, num_heads)
