"""Dense prefill that records every head's block-averaged attention map (offline calibration).

`BlockMapCollector` is a `PrefillAttention`: exact causal attention through the block-sparse
kernels with the full causal layout, asking for the block-map output of every head, so a
layer's maps come back as stats ([L, B, N, Tb, Tb] once the layer scan stacks them) and no
T x T matrix is ever formed. With a `SharePrefillConfig` it also records the planner's
last-block estimates (vertical / slash profiles, budgets, query-aware flags) on the same q and
k, which calibration uses to simulate the online sharing rule.

`collect_block_maps` runs a batch of prompts and hands the maps back as host arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models import generate
from models.llama import Transformer
from pallas_kernels.block_sparse_attention import (
    BlockGeometry,
    block_sparse_attention_with_block_map,
    causal_layout,
)
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.estimate import estimate_last_block

PyTree = Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockMapCollector:
    """Dense causal attention whose stats are every head's block-averaged attention map.

    Attributes:
      block_size: tokens per block of the recorded maps (independent of the planner's block
        size: a finer map can be pooled to any coarser grid later).
      estimate_config: when set, also record the planner's last-block estimates with this config
        (its block size is the planner's).
      implementation: kernel implementation(s), as for `block_sparse_attention`.
      interpret: run Pallas kernels in interpret mode.
    """

    block_size: int = 64
    estimate_config: SharePrefillConfig | None = None
    implementation: str | Sequence[str] | None = None
    interpret: bool = False

    def __post_init__(self):
        if self.block_size < 1:
            raise ValueError(f"block_size must be positive, got {self.block_size}")

    def init_state(self, batch: int, num_queries: int, num_keys: int | None = None) -> PyTree:
        """Dense attention carries nothing between layers."""
        del batch, num_queries, num_keys
        return ()

    def check_model(self, num_layers: int, num_heads: int) -> None:
        """Recording fits every model."""
        del num_layers, num_heads

    def __call__(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        state: PyTree,
        *,
        layer: jax.Array,
        lengths: jax.Array,
    ) -> tuple[jax.Array, PyTree, dict[str, jax.Array]]:
        """Exact causal attention of one layer, with every head's block map.

        Args:
          q: [B, T, N, H] after RoPE; k, v: [B, T, K, H].
          state: () (unused); layer: unused.
          lengths: int32[B] real prompt lengths (padding at the end).

        Returns:
          out [B, T, N, H], (), and stats {"block_map": float32[B, N, Tb, Tb]} plus, with an
          estimate config, "vertical", "slash" float32[B, N, Tb'] (Tb' in the planner's blocks),
          "num_vertical", "num_slash" int32[B, N] and "query_aware" bool[B, N].
        """
        del layer
        batch, num_queries, num_heads, _ = q.shape
        if k.shape[1] != num_queries:
            raise ValueError(
                f"the collector attends a prompt to itself: q has {num_queries} positions, k"
                f" has {k.shape[1]}"
            )
        geometry = BlockGeometry(
            num_queries=num_queries, num_keys=num_queries, block_size=self.block_size
        )
        out, _, block_map = block_sparse_attention_with_block_map(
            q,
            k,
            v,
            causal_layout(batch, num_heads, geometry),
            jnp.ones((batch, num_heads), bool),
            implementation=self.implementation,
            interpret=self.interpret,
        )
        stats = {"block_map": block_map}
        if self.estimate_config is not None:
            est = estimate_last_block(q, k, lengths, self.estimate_config)
            stats |= {
                "vertical": est.vertical,
                "slash": est.slash,
                "num_vertical": est.num_vertical,
                "num_slash": est.num_slash,
                "query_aware": est.query_aware,
            }
        return out, state, stats


class CollectedMaps(NamedTuple):
    """Host arrays from one batch of equal-length prompts, per (sample, layer, query head).

    block_maps: float32[B, L, N, Tb, Tb], Tb = length // block_size whole blocks: row r, column c
      is the mean over the queries of block r of their attention mass on key block c. (A partial
      last block is dropped: the kernel would average the padding's rows into it. Whole rows
      never see keys past their own block, so they still sum to 1.)
    length: the tokens the maps cover, Tb * block_size.
    block_size: tokens per block of `block_maps`.
    estimates: None, or {"vertical", "slash": [B, L, N, Tb'], "num_vertical", "num_slash":
      int32[B, L, N], "query_aware": bool[B, L, N]} in the planner's blocks.
    """

    block_maps: np.ndarray
    length: int
    block_size: int
    estimates: dict[str, np.ndarray] | None


def collect_block_maps(
    model: Transformer, tokens: Any, collector: BlockMapCollector
) -> CollectedMaps:
    """Prefills equal-length prompts with dense attention and returns every head's block map.

    Args:
      model: the decoder.
      tokens: [B, T] (or [T]) prompt ids, or a list of equal-length lists.
      collector: what to record and at which block size.

    Returns:
      The maps (and estimates), cropped to the prompts' whole blocks; the estimates are of the
      whole prompt.
    """
    array = generate.prompt_array(model, tokens)
    length = array.shape[1]
    num_blocks = length // collector.block_size
    if num_blocks < 1:
        raise ValueError(
            f"prompts of {length} tokens hold no whole block of {collector.block_size} tokens"
        )
    result = generate.prefill(model, array, attention=collector)
    maps = np.asarray(result.stats["block_map"])[:, :, :, :num_blocks, :num_blocks]
    estimates = None
    if collector.estimate_config is not None:
        planner_blocks = -(-length // collector.estimate_config.block_size)
        estimates = {}
        for name in ("vertical", "slash", "num_vertical", "num_slash", "query_aware"):
            value = np.swapaxes(np.asarray(result.stats[name]), 0, 1)  # [B, L, N, ...]
            if name in ("vertical", "slash"):
                value = value[..., :planner_blocks]
            estimates[name] = value
    return CollectedMaps(
        block_maps=np.swapaxes(maps, 0, 1).astype(np.float32),
        length=num_blocks * collector.block_size,
        block_size=collector.block_size,
        estimates=estimates,
    )
