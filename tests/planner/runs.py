"""Layer-by-layer runs of the planner and of the NumPy restatement on the same inputs.

Both take q [L, B, T, N, H] and k [L, B, T, K, H] (float64, end-padded to T) and real lengths,
and feed every pivot its exact dense block map (`inputs.dense_block_maps`), so their plans can
be compared block for block.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sharedsparse_jax import planner
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.sharing import SharingState, SharingTable
from sharedsparse_jax.stats import layer_stats
from tests.planner import inputs
from tests.planner.reference_numpy import ReferencePlanner


def reference_planner(
    config: SharePrefillConfig, clusters: dict, shared: Sequence[str]
) -> ReferencePlanner:
    """The restatement with the config's thresholds (quirks as `config.reference_quirks`)."""
    return ReferencePlanner(
        clusters,
        shared,
        block_size=config.block_size,
        gamma=config.gamma,
        tau_sim=config.tau_sim,
        tau_fb=config.tau_fb,
        tau_qa=config.tau_qa,
        min_budget=config.min_budget,
        dense_below=config.dense_below,
        quirks=config.reference_quirks,
    )


def restatement_plans(
    config: SharePrefillConfig, clusters: dict, shared: Sequence[str], lengths, q, k
) -> list[list[tuple[list[set], list[str]]]]:
    """Per batch element, per layer: (each head's set of (row, column) blocks, categories)."""
    bs = config.block_size
    plans = []
    for b, length in enumerate(lengths):
        ref = reference_planner(config, clusters, shared)
        layers = []
        for layer in range(q.shape[0]):
            q_l, k_l = q[layer, b, :length], k[layer, b, :length]
            layers.append(ref.plan_layer(layer, q_l, k_l, length))
            ref.absorb(inputs.dense_block_maps(q_l, k_l, bs))
        plans.append(layers)
    return plans


def planner_plans(
    config: SharePrefillConfig,
    table: SharingTable,
    lengths,
    q,
    k,
    *,
    padding_noise: np.random.Generator | None = None,
) -> list[tuple[np.ndarray, list[list[str]], dict]]:
    """Per layer: (block_mask [B, N, Tb, Tb], category names [B][N], layer stats), planned under
    x64. With `padding_noise`, the pivots' maps hold noise on the padding rows (the planner
    must ignore them)."""
    bs = config.block_size
    num_layers, batch, padded = q.shape[:3]
    lengths_array = jnp.asarray(lengths, jnp.int32)
    kwargs = dict(lengths=lengths_array, config=config, table=table)
    plan_layer = jax.jit(
        lambda q, k, state, layer: planner.plan_layer(q, k, state, layer=layer, **kwargs)
    )
    absorb = jax.jit(
        lambda state, plan, maps, layer: planner.absorb_pivot_maps(
            state, plan, maps, layer=layer, **kwargs
        )
    )
    out = []
    with jax.enable_x64(True):
        state = SharingState.initial(batch, table.num_shared, -(-padded // bs), dtype=jnp.float64)
        for layer in range(num_layers):
            plan, state = plan_layer(jnp.asarray(q[layer]), jnp.asarray(k[layer]), state, layer)
            if padding_noise is None:
                maps = np.zeros(plan.block_mask.shape)
            else:
                maps = padding_noise.uniform(0.0, 1.0, size=plan.block_mask.shape)
            for b, length in enumerate(lengths):
                nb = -(-length // bs)
                maps[b, :, :nb] = 0.0
                maps[b, :, :nb, :nb] = inputs.dense_block_maps(
                    q[layer, b, :length], k[layer, b, :length], bs
                )
            state = absorb(state, plan, jnp.asarray(maps), layer)
            names = [[planner.CATEGORIES[c] for c in row] for row in np.asarray(plan.category)]
            out.append((np.asarray(plan.block_mask), names, layer_stats(plan, lengths_array, bs)))
    return out
