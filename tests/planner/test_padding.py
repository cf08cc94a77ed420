"""End padding changes nothing: a padded prompt plans and attends like the same prompt unpadded.

The whole path runs: estimation, classification, sharing, the xla kernel with pivot block maps,
and the pivots' patterns and vs_ratios absorbed from those maps. Prompts end mid-block, and
buckets add whole padding blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharedsparse_jax import planner
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.sharing import SharingTable
from tests.planner import inputs

BLOCK, HEAD_DIM, GROUP = 16, 32, 2
CLUSTERS = {
    "7": [[layer, h] for layer in range(4) for h in (0, 1)],
    "3": [[layer, h] for layer in range(4) for h in (2, 3)],
}
CONFIG = SharePrefillConfig(
    block_size=BLOCK, gamma=0.9, tau_fb=0.95, tau_qa=0.1, min_budget=BLOCK, dense_below=4 * BLOCK
)


def _run(attention, layers, padded_length, rng):
    """Runs every layer on the prompt end-padded with noise to padded_length tokens."""
    length = layers[0][0].shape[0]
    state = attention.init_state(1, padded_length)
    lengths = jnp.asarray([length], jnp.int32)
    call = jax.jit(
        lambda q, k, v, state, layer: attention(q, k, v, state, layer=layer, lengths=lengths)
    )
    results = []
    for layer, arrays in enumerate(layers):
        padded = [
            np.concatenate(
                [x, rng.standard_normal((padded_length - length,) + x.shape[1:]).astype(x.dtype)]
            )[None]
            for x in arrays
        ]
        plan, _ = planner.plan_layer(
            jnp.asarray(padded[0]),
            jnp.asarray(padded[1]),
            state,
            layer=layer,
            lengths=lengths,
            config=attention.config,
            table=attention.table,
        )
        out, state, stats = call(*padded, state, jnp.int32(layer))
        nb = -(-length // BLOCK)
        blocks = np.asarray(plan.block_mask)[0, :, :nb, :nb]
        results.append((np.asarray(out[0, :length]), blocks, stats, state))
    return results


@pytest.mark.parametrize(
    ("length", "padded_length"),
    [(200, 208), (200, 240), (208, 256)],
    ids=["mid_block", "mid_block_and_padding_blocks", "padding_blocks"],
)
def test_padded_prompt_equals_unpadded(length, padded_length):
    rng = np.random.default_rng(length + padded_length)
    table = SharingTable.from_json_dict(
        {"clusters": CLUSTERS, "shared_clusters": list(CLUSTERS)}, num_layers=4, num_heads=6
    )
    attention = SharePrefillAttention(CONFIG, table, implementation="xla")
    layers = [
        tuple(np.asarray(x, np.float32) for x in layer)
        for layer in inputs.prompt_layers(rng, length, block_size=BLOCK)
    ]
    alone = _run(attention, layers, length, rng)
    padded = _run(attention, layers, padded_length, rng)
    nb = -(-length // BLOCK)
    seen = set()
    for layer, (
        (out_a, blocks_a, stats_a, state_a),
        (out_p, blocks_p, stats_p, state_p),
    ) in enumerate(zip(alone, padded, strict=True)):
        np.testing.assert_array_equal(blocks_p, blocks_a, err_msg=f"layer {layer}")
        for name in planner.CATEGORIES:
            assert int(stats_a[f"num_{name}"][0]) == int(stats_p[f"num_{name}"][0]), (layer, name)
            if int(stats_a[f"num_{name}"][0]):
                seen.add(name)
        np.testing.assert_allclose(float(stats_p["density"][0]), float(stats_a["density"][0]))
        np.testing.assert_allclose(out_p, out_a, atol=2e-5, err_msg=f"layer {layer}")
        np.testing.assert_array_equal(state_p.has_pivot, state_a.has_pivot)
        np.testing.assert_array_equal(
            np.asarray(state_p.pattern)[..., :nb, :nb], np.asarray(state_a.pattern)
        )
        np.testing.assert_allclose(state_p.vs_ratio, state_a.vs_ratio, atol=1e-6)
    assert {"pivot", "shared"} <= seen, seen
