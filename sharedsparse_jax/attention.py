"""The prefill attention models call: plan the layer, run the block-sparse kernel, share.

`SharePrefillAttention` implements the models' PrefillAttention protocol: the sharing state is a
value threaded through the layer loop, and each call returns (out, new_state, stats).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from pallas_kernels.block_sparse_attention import (
    block_sparse_attention,
    block_sparse_attention_with_block_map,
    layout_from_mask,
)
from sharedsparse_jax import heads, planner, stats
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.dense import DenseAttention, dense_causal_attention
from sharedsparse_jax.sharing import SharingState, SharingTable


@dataclasses.dataclass(frozen=True, eq=False)
class SharePrefillAttention:
    """Sparse prefill attention for one model.

    Attributes:
      config: the planner's config (its `method` picks SharePrefill or a baseline).
      table: the model's sharing table; None or a table without shared clusters means no head
        ever shares (SharePrefill then behaves like FlexPrefill).
      implementation: the kernel implementation(s), as for block_sparse_attention.
      interpret: run Pallas kernels in interpret mode (CPU tests).
      head_axis: the mesh axis the query heads are split over when called inside
        `jax.shard_map` (each shard holds consecutive heads with their kv heads; the planner's
        cross-head steps become collectives over it); None: every head is local.
    """

    config: SharePrefillConfig = dataclasses.field(default_factory=SharePrefillConfig)
    table: SharingTable | None = None
    implementation: str | Sequence[str] | None = None
    interpret: bool = False
    head_axis: str | None = None

    @property
    def num_shared(self) -> int:
        if self.table is None or self.config.method != "shareprefill":
            return 0
        return self.table.num_shared

    def init_state(self, batch: int, num_queries: int, num_keys: int | None = None) -> SharingState:
        """The sharing state at the start of a forward pass over T queries (a prompt padded to
        T tokens, or a chunk: the last T of S keys)."""
        bs = self.config.block_size
        num_keys = num_queries if num_keys is None else num_keys
        return SharingState.initial(
            batch, self.num_shared, -(-num_queries // bs), -(-num_keys // bs)
        )

    def for_bucket(
        self,
        lengths: jax.Array,
        *,
        num_layers: int,
        num_heads: int,
        num_queries: int,
        num_keys: int,
    ) -> tuple[SharePrefillAttention | DenseAttention, dict[str, jax.Array] | None]:
        """What a model's layer loop runs for prompts padded to T queries over S keys.

        Below `dense_below` keys nothing is planned: the loop runs DenseAttention, the dense
        model's program with no state to carry and no stats to stack, and the stats of its L
        layers (every head dense) are built once. From `dense_below` on: this attention.

        Args:
          lengths: int32[B] real tokens per sequence.
          num_layers, num_heads: L and N (all query heads, whatever `head_axis`).
          num_queries, num_keys: T and S.

        Returns:
          The attention to call per layer, and {name: [L, ...]} stats or None.
        """
        if num_keys >= self.config.dense_below:
            return self, None
        layer_stats = stats.dense_layer_stats(
            lengths,
            num_heads=num_heads,
            num_queries=num_queries,
            num_keys=num_keys,
            block_size=self.config.block_size,
        )
        every_layer = {
            name: jnp.broadcast_to(value, (num_layers, *value.shape))
            for name, value in layer_stats.items()
        }
        return DenseAttention(), every_layer

    def check_model(self, num_layers: int, num_heads: int) -> None:
        """Raises a ValueError if the sharing table was made for another layer or head count."""
        if self.table is not None:
            self.table.check_model(num_layers, num_heads)

    def __call__(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        state: SharingState,
        *,
        layer: jax.Array | int,
        lengths: jax.Array,
    ) -> tuple[jax.Array, SharingState, dict[str, jax.Array]]:
        """One layer's prefill attention.

        Args:
          q: [B, T, N, H] after RoPE; k, v: [B, S, K, H]: a whole prompt (S = T), or a chunk
            of one over the keys so far (the queries are the last T of the S positions; T and
            S - T multiples of the block size).
          state: the sharing state from earlier layers (init_state(B, T, S) before layer 0).
          layer: this layer's index, in [0, L) of the sharing table.
          lengths: int32[B] real prompt lengths in [1, S] (the rest of S is end padding).

        Returns:
          out [B, T, N, H], the new state, and this layer's stats (stats.layer_stats).
        """
        self._check_inputs(q, k, v, state)
        bs = self.config.block_size
        if k.shape[1] < self.config.dense_below:
            # Every prompt of this bucket is short: no planning (its plan would keep every
            # block), cuDNN's dense attention.
            layer_stats = stats.dense_layer_stats(
                lengths,
                num_heads=q.shape[2],
                num_queries=q.shape[1],
                num_keys=k.shape[1],
                block_size=bs,
                head_axis=self.head_axis,
            )
            return dense_causal_attention(q, k, v), state, layer_stats
        plan, state = planner.plan_layer(
            q,
            k,
            state,
            layer=layer,
            lengths=lengths,
            config=self.config,
            table=self.table,
            interpret=self.interpret,
            head_axis=self.head_axis,
        )
        layout = layout_from_mask(plan.block_mask, block_size=bs)

        def attend(state):
            out = block_sparse_attention(
                q, k, v, layout, implementation=self.implementation, interpret=self.interpret
            )
            return out, state

        def attend_and_absorb_pivots(state):
            batch, _, num_heads, _ = q.shape
            out, _, block_maps = block_sparse_attention_with_block_map(
                q,
                k,
                v,
                layout,
                plan.category == planner.PIVOT,
                lengths=lengths,
                max_selected=min(batch * num_heads, batch * self.num_shared),
                implementation=self.implementation,
                interpret=self.interpret,
            )
            state = planner.absorb_pivot_maps(
                state,
                plan,
                block_maps,
                layer=layer,
                lengths=lengths,
                config=self.config,
                table=self.table,
                head_axis=self.head_axis,
            )
            return out, state

        if self.num_shared:
            # Most layers hold no pivot: they skip the block-map launch and its maps. Every
            # shard of the heads takes the same branch (the branch's collectives need them all).
            local_pivots = jnp.sum(plan.category == planner.PIVOT, dtype=jnp.int32)
            has_pivot = heads.sum_over_heads(local_pivots, self.head_axis) > 0
            out, state = jax.lax.cond(has_pivot, attend_and_absorb_pivots, attend, state)
        else:
            out, state = attend(state)
        return out, state, stats.layer_stats(plan, lengths, bs, self.head_axis)

    def _check_inputs(self, q, k, v, state: SharingState) -> None:
        """Raises a ValueError naming what does not fit: shapes, table or state."""
        if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
            raise ValueError(
                f"expected q [B, T, N, H] and k, v [B, T, K, H], got shapes {q.shape},"
                f" {k.shape}, {v.shape}"
            )
        batch, num_queries, num_heads, _ = q.shape
        num_keys, bs = k.shape[1], self.config.block_size
        if num_keys != num_queries and (num_queries % bs or (num_keys - num_queries) % bs):
            raise ValueError(
                f"a chunk of {num_queries} queries over {num_keys} keys must start and end on"
                f" block boundaries (block_size {bs})"
            )
        if num_keys < num_queries:
            raise ValueError(f"q has {num_queries} positions but k only {num_keys}")
        if num_keys != num_queries and self.config.reference_quirks:
            raise ValueError("reference_quirks reproduces whole-prompt planning only (S = T)")
        shards = 1 if self.head_axis is None else jax.lax.axis_size(self.head_axis)
        if self.table is not None and self.table.num_heads != num_heads * shards:
            raise ValueError(
                f"sharing table has {self.table.num_heads} query heads per layer, q has"
                f" {num_heads * shards}"
            )
        want = jax.eval_shape(lambda: self.init_state(batch, num_queries, num_keys))
        got_shapes = [x.shape for x in jax.tree.leaves(state)]
        want_shapes = [x.shape for x in jax.tree.leaves(want)]
        if not isinstance(state, SharingState) or got_shapes != want_shapes:
            raise ValueError(
                "the sharing state does not fit this call: expected"
                f" init_state(batch={batch}, num_queries={num_queries}, num_keys={num_keys}) with"
                f" {self.num_shared} shared clusters (pattern {want.pattern.shape}), got"
                f" {type(state).__name__} with shapes {got_shapes}"
            )
