"""Seeded fuzzing of the planner against the NumPy restatement of the reference.

Each case draws a model shape (GQA group, heads, layers), clusters and shared clusters, a
config (gamma, thresholds, budgets, quirks) and prompts of random lengths end-padded to a
bucket, then plans layer after layer under x64 and compares every block and category with the
restatement run on the unpadded prompts. Pivot maps are exact on the real rows and hold noise
on the padding rows, which the planner must ignore. bfloat16 cases check the plan's invariants.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharedsparse_jax import planner
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.sharing import SharingState, SharingTable
from sharedsparse_jax.stats import layer_stats
from tests.planner import inputs, runs

BLOCK, HEAD_DIM = 16, 32


def _draw_case(seed: int):
    rng = np.random.default_rng(seed)
    group = int(rng.integers(1, 4))
    num_kv_heads = int(rng.integers(1, 4))
    num_heads = group * num_kv_heads
    num_layers = int(rng.integers(2, 4))
    batch = int(rng.integers(1, 3))
    lengths = [int(rng.integers(5 * BLOCK, 14 * BLOCK)) for _ in range(batch)]
    padded = (-(-max(lengths) // BLOCK) + int(rng.integers(0, 3))) * BLOCK
    labels = rng.integers(0, 3, size=(num_layers, num_heads))
    labels[rng.random(labels.shape) < 0.2] = -1  # heads in no cluster
    clusters = {
        str(c): [[int(l), int(h)] for l, h in np.argwhere(labels == c)]
        for c in range(3)
        if (labels == c).any()
    }
    shared = [c for c in clusters if rng.random() < 0.7]
    config = SharePrefillConfig(
        block_size=BLOCK,
        gamma=float(rng.choice([0.8, 0.9, 0.95, 1.0])),
        tau_sim=float(rng.choice([0.2, 0.5, 1.0])),
        tau_fb=float(rng.choice([0.8, 0.95, 1.0])),
        tau_qa=float(rng.choice([0.0, 0.1, 0.3])),
        min_budget=BLOCK * int(rng.integers(1, 4)),
        dense_below=BLOCK * int(rng.integers(1, 7)),
        reference_quirks=bool(rng.random() < 0.3),
    )
    q = np.zeros((num_layers, batch, padded, num_heads, HEAD_DIM))
    k = np.zeros((num_layers, batch, padded, num_kv_heads, HEAD_DIM))
    for b, length in enumerate(lengths):
        topics = inputs.chunk_topics(rng, length, BLOCK)
        for layer in range(num_layers):
            kinds = list(rng.choice(inputs.ARCHETYPES, size=num_kv_heads))
            q_l, k_l = inputs.layer_inputs(
                rng,
                kinds,
                length=length,
                group=group,
                head_dim=HEAD_DIM,
                block_size=BLOCK,
                topics=topics,
            )
            q[layer, b, :length], k[layer, b, :length] = q_l, k_l
            q[layer, b, length:] = rng.standard_normal(q[layer, b, length:].shape)
            k[layer, b, length:] = rng.standard_normal(k[layer, b, length:].shape)
    return rng, config, clusters, shared, lengths, q, k


@pytest.mark.parametrize("seed", range(12))
def test_planner_equals_restatement_on_random_padded_cases(seed):
    rng, config, clusters, shared, lengths, q, k = _draw_case(seed)
    num_layers, batch, padded, num_heads, _ = q.shape
    table = SharingTable.from_json_dict(
        {"clusters": clusters, "shared_clusters": shared},
        num_layers=num_layers,
        num_heads=num_heads,
    )
    want = runs.restatement_plans(config, clusters, shared, lengths, q, k)
    got = runs.planner_plans(config, table, lengths, q, k, padding_noise=rng)
    for layer, (mask, names, _) in enumerate(got):
        for b, length in enumerate(lengths):
            nb = -(-length // BLOCK)
            want_blocks, want_category = want[b][layer]
            assert names[b] == want_category, (seed, layer, b)
            for h in range(num_heads):
                blocks = {(int(r), int(c)) for r, c in np.argwhere(mask[b, h, :nb, :nb])}
                assert blocks == want_blocks[h], (seed, layer, b, h, want_category[h])


@pytest.mark.parametrize("seed", range(4))
def test_bfloat16_plans_keep_their_invariants(seed):
    _, config, clusters, shared, lengths, q, k = _draw_case(100 + seed)
    num_layers, batch, padded, num_heads, _ = q.shape
    table = SharingTable.from_json_dict(
        {"clusters": clusters, "shared_clusters": shared},
        num_layers=num_layers,
        num_heads=num_heads,
    )
    tb = padded // BLOCK
    state = SharingState.initial(batch, table.num_shared, tb)
    causal = np.tril(np.ones((tb, tb), bool))
    lengths_array = jnp.asarray(lengths, jnp.int32)
    plan_layer = jax.jit(
        lambda q, k, state, layer: planner.plan_layer(
            q, k, state, layer=layer, lengths=lengths_array, config=config, table=table
        )
    )
    for layer in range(num_layers):
        plan, state = plan_layer(
            jnp.asarray(q[layer], jnp.bfloat16), jnp.asarray(k[layer], jnp.bfloat16), state, layer
        )
        mask = np.asarray(plan.block_mask)
        stats = layer_stats(plan, lengths_array, BLOCK)
        assert np.isfinite(np.asarray(stats["density"])).all()
        assert not (mask & ~causal).any()
        for b, length in enumerate(lengths):
            nb = -(-length // BLOCK)
            assert mask[b, :, np.arange(nb), np.arange(nb)].all()
            assert mask[b, :, :nb, 0].all()
            assert (mask[b, :, nb:] == np.eye(tb, dtype=bool)[nb:]).all()
