"""Every reason a shared-cluster head shares or not, each in a planted case, and its summary."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from evaluation.harness.model_runs import stats_record
from sharedsparse_jax import planner, stats
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.sharing import SharingState, SharingTable
from tests.planner import inputs

BLOCK, LENGTH, SHORT = 16, 256, 40
# kv-head archetypes per layer; query heads 2g and 2g + 1 follow kv head g.
ARCHETYPES = [["topic", "local", "pooled"], ["topic", "local", "pooled"], ["stripes", "topic"]]
CLUSTERS = {
    "A": [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1], [2, 2], [2, 3]],
    "B": [[0, 2], [0, 3], [1, 2], [1, 3]],
    "C": [[0, 4], [0, 5], [1, 4], [1, 5]],
}
# A's pivot's own vertical-slash pattern covers 0.845 of its map, B's 0.872: tau_fb between.
CONFIG = SharePrefillConfig(
    block_size=BLOCK, gamma=0.9, tau_sim=0.5, tau_fb=0.86, tau_qa=0.1, min_budget=BLOCK,
    dense_below=4 * BLOCK,
)  # fmt: skip


def _layers():
    rng = np.random.default_rng(0)
    topics = inputs.chunk_topics(rng, LENGTH, BLOCK)
    return [
        inputs.layer_inputs(
            rng, kinds, length=LENGTH, group=2, head_dim=32, block_size=BLOCK, topics=topics
        )
        for kinds in ARCHETYPES
    ]


def _plan_all(layers, table, lengths):
    """Plans the layers (batch 2: the prompt and its first SHORT tokens); exact pivot maps."""
    state = SharingState.initial(2, table.num_shared, LENGTH // BLOCK)
    plans, states = [], [state]
    for layer, (q, k) in enumerate(layers):
        pad = ((0, 0), (0, 0), (0, 6 - q.shape[1]), (0, 0))
        q_b = jnp.asarray(np.pad(np.stack([q, q]), pad), jnp.float32)  # 6 query heads per layer
        k_b = jnp.asarray(np.pad(np.stack([k, k]), pad[:2] + ((0, 3 - k.shape[1]), (0, 0))))
        plan, state = planner.plan_layer(
            q_b, k_b, state, layer=layer, lengths=lengths, config=CONFIG, table=table
        )
        maps = np.zeros(plan.block_mask.shape)
        for b, n in enumerate(np.asarray(lengths)):
            nb = -(-int(n) // BLOCK)
            maps[b, :, :nb, :nb] = inputs.dense_block_maps(
                np.asarray(q_b[b, :n], np.float64), np.asarray(k_b[b, :n], np.float64), BLOCK
            )
        state = planner.absorb_pivot_maps(
            state, plan, jnp.asarray(maps, jnp.float32), layer=layer, lengths=lengths,
            config=CONFIG, table=table,
        )  # fmt: skip
        plans.append(plan)
        states.append(state)
    return plans, states


def _reasons(plan, b=0):
    return [planner.SHARE_REASONS[r] for r in np.asarray(plan.decisions.reason[b])]


def test_every_reason_in_a_planted_case():
    table = SharingTable.from_json_dict(
        {"clusters": CLUSTERS, "shared_clusters": list(CLUSTERS)}, num_layers=3, num_heads=6
    )
    lengths = jnp.asarray([LENGTH, SHORT], jnp.int32)
    layers = _layers()
    plans, states = _plan_all(layers, table, lengths)
    assert _reasons(plans[0]) == ["pivot", "pivot_this_layer"] * 2 + ["query_aware"] * 2
    assert _reasons(plans[1])[:4] == ["shared", "shared", "fallback_covers", "fallback_covers"]
    assert _reasons(plans[2])[:4] == ["vertical_far", "vertical_far", "shared", "shared"]
    assert _reasons(plans[2])[4:] == ["not_shared"] * 2
    for plan in plans:  # the short prompt runs dense
        reasons = _reasons(plan, b=1)
        assert set(reasons) <= {"dense_prompt", "not_shared"} and "dense_prompt" in reasons

    # The values the rules compared: NaN until the cluster has a pivot from an earlier layer.
    decisions = plans[1].decisions
    vs_ratio = np.asarray(states[1].vs_ratio[0])  # after layer 0: A and B have patterns
    np.testing.assert_allclose(
        np.asarray(decisions.fallback_coverage[0, :4]), vs_ratio[[0, 0, 1, 1]]
    )
    assert (vs_ratio[1] >= CONFIG.tau_fb > vs_ratio[0]).all()
    assert np.isnan(np.asarray(plans[0].decisions.vertical_distance)).all()
    far = np.asarray(plans[2].decisions.vertical_distance[0, :2])
    assert (far >= CONFIG.tau_sim).all()

    # slash_far: a pivot whose vertical profile is the member's but whose slash profile is not.
    state = states[2]
    rolled = dataclasses.replace(state, slash=jnp.roll(state.slash, 3, axis=-1))
    q, k = layers[2]
    q_b = jnp.asarray(np.stack([np.pad(q, ((0, 0), (0, 2), (0, 0)))] * 2), jnp.float32)
    k_b = jnp.asarray(np.stack([np.pad(k, ((0, 0), (0, 1), (0, 0)))] * 2), jnp.float32)
    plan, _ = planner.plan_layer(
        q_b, k_b, rolled, layer=2, lengths=lengths, config=CONFIG, table=table
    )
    assert _reasons(plan)[2:4] == ["slash_far", "slash_far"]
    d = plan.decisions
    assert (np.asarray(d.vertical_distance[0, 2:4]) < CONFIG.tau_sim).all()
    assert (np.asarray(d.slash_distance[0, 2:4]) >= CONFIG.tau_sim).all()

    # The summary counts each reason over layers (mean over the batch) and shows the values.
    stacked = {
        name: jnp.stack([stats.layer_stats(p, lengths, BLOCK)[name] for p in plans])
        for name in ("share_reason", "vertical_distance", "slash_distance", "fallback_coverage")
    }
    summary = stats.sharing_summary(stacked)
    assert summary["fallback_covers"]["count"] == 1.0  # two heads, one of the two prompts
    assert summary["fallback_covers"]["fallback_coverage"]["min"] >= CONFIG.tau_fb
    lines = stats.describe_sharing(summary, {"tau_fb": CONFIG.tau_fb, "tau_sim": CONFIG.tau_sim})
    assert any(line.startswith("fallback_covers") and ">= tau_fb 0.86" in line for line in lines)
    assert any(line.startswith("vertical_far") and ">= tau_sim 0.5" in line for line in lines)
    assert not any(line.startswith("slash_far") for line in lines)  # count 0: not listed

    # Evaluation records carry the same summary and each (layer, head)'s reason.
    per_layer = {
        name: np.asarray(jnp.stack([stats.layer_stats(p, lengths, BLOCK)[name] for p in plans]))
        for name in stats.layer_stats(plans[0], lengths, BLOCK)
    }
    record = stats_record({k: v[:, 0] for k, v in per_layer.items()}, num_layers=3, num_heads=6)
    shared, covers = (planner.SHARE_REASONS.index(r) for r in ("shared", "fallback_covers"))
    assert record["share_reason"][1][:4] == [shared] * 2 + [covers] * 2
    assert record["sharing"]["fallback_covers"]["count"] == 2


def test_length_bands_choose_the_shared_clusters():
    """A table whose clusters share in some length bands: each prompt uses its own band."""
    data = {
        "clusters": CLUSTERS,
        "shared_clusters": ["A", "B"],
        "shared_clusters_by_length": [
            {"min_tokens": 0, "shared_clusters": ["B"]},
            {"min_tokens": 128, "shared_clusters": ["A"]},
        ],
    }
    table = SharingTable.from_json_dict(data, num_layers=3, num_heads=6)
    assert table.band_min_tokens == (0, 128) and table.num_shared == 2
    again = SharingTable.from_json_dict(table.to_json_dict(), num_layers=3, num_heads=6)
    np.testing.assert_array_equal(again.shared_by_band, table.shared_by_band)
    # The long prompt (256 tokens) shares A only, the short one (100 tokens) B only.
    plans, _ = _plan_all(_layers(), table, jnp.asarray([LENGTH, 100], jnp.int32))
    assert _reasons(plans[0], b=0)[:4] == ["pivot", "pivot_this_layer", "not_shared", "not_shared"]
    assert _reasons(plans[0], b=1)[:4] == ["not_shared", "not_shared", "pivot", "pivot_this_layer"]
    for bad, message in [
        ({"shared_clusters": ["A"]}, "exactly the clusters shared in some band"),
        (
            {"shared_clusters_by_length": [{"min_tokens": 5, "shared_clusters": ["A", "B"]}]},
            "must start at 0",
        ),
        ({"shared_clusters_by_length": [{"min_tokens": 0}]}, "must be a list of"),
    ]:
        with pytest.raises(ValueError, match=message):
            SharingTable.from_json_dict(data | bad, num_layers=3, num_heads=6)
