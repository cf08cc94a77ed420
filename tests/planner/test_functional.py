"""The drop-in function `sharedsparse_jax.shareprefill_attention` in a Python loop over layers
and in a `jax.lax.scan` carrying the sharing state: the same outputs, stats and final state,
equal to `jax.nn.dot_product_attention` (with a softmax scale) when every block is kept; ragged
lengths, GQA 6/2; bad calls refused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sharedsparse_jax as ssp
from tests.planner import inputs

BLOCK, HEAD_DIM, GROUP = 16, 32, 2
NUM_LAYERS = 3
LENGTHS = (200, 157)  # end-padded to T = 208, neither a multiple of the block
PADDED = 208


def _table() -> ssp.SharingTable:
    """Two shared clusters (heads 0-1 and 2-3 of every layer); heads 4-5 in none."""
    clusters = {
        "topic": [[layer, head] for layer in range(3) for head in (0, 1)],
        "second": [[layer, head] for layer in range(3) for head in (2, 3)],
    }
    return ssp.SharingTable.from_json_dict(
        {"clusters": clusters, "shared_clusters": list(clusters)}, num_layers=3, num_heads=6
    )


def _layers(seed: int) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
    """Per layer q [B, T, N, H], k and v [B, T, K, H] (float32): structured heads, ragged
    prompts end-padded with noise."""
    rng = np.random.default_rng(seed)
    batch = []
    for length in LENGTHS:
        layers = inputs.prompt_layers(
            rng, length, inputs.STRUCTURED_LAYERS[:NUM_LAYERS], group=GROUP, head_dim=HEAD_DIM,
            block_size=BLOCK,
        )  # fmt: skip
        noise = rng.standard_normal  # the end padding
        batch.append(
            [
                [np.concatenate([x, noise((PADDED - length,) + x.shape[1:])]) for x in layer]
                for layer in layers
            ]
        )
    return [
        tuple(jnp.asarray(np.stack([p[layer][i] for p in batch]), jnp.float32) for i in range(3))
        for layer in range(NUM_LAYERS)
    ]


def test_python_loop_and_scan_equal_dot_product_attention_when_every_block_is_kept():
    """Both layer loops thread the state (pivots in layer 0, members sharing later) and give
    jax.nn.dot_product_attention's output, with a softmax scale that is not 1 / sqrt(H)."""
    config = ssp.SharePrefillConfig(
        block_size=BLOCK,
        dense_below=BLOCK,
        gamma=1.0,  # pivot patterns and budgets cover all the mass
        tau_qa=0.0,  # no head is query-aware
        tau_sim=1.0,  # later cluster members share their pivot's (full) pattern
        tau_fb=1.0,
        min_budget=PADDED,  # vertical-slash heads keep every column
    )
    table = _table()
    layers = _layers(seed=1)
    lengths = jnp.asarray(LENGTHS, jnp.int32)
    scale = 0.07  # 1 / sqrt(H) would be 0.177

    def attend(q, k, v, state, layer):
        return ssp.shareprefill_attention(
            q, k, v, state, layer=layer, lengths=lengths, config=config, table=table, scale=scale
        )

    # A Python loop over layers (one compiled layer: the index is traced).
    attend_jit = jax.jit(attend)
    state = ssp.init_sharing_state(len(LENGTHS), PADDED, config=config, table=table)
    loop_outs, loop_stats = [], []
    for layer, (q, k, v) in enumerate(layers):
        out, state, stats = attend_jit(q, k, v, state, jnp.int32(layer))
        loop_outs.append(out)
        loop_stats.append(stats)
    loop_state = state

    # jax.lax.scan over stacked layers, the sharing state in the carry.
    @jax.jit
    def scanned(qs, ks, vs):
        def body(state, xs):
            q, k, v, layer = xs
            out, state, stats = attend(q, k, v, state, layer)
            return state, (out, stats)

        state = ssp.init_sharing_state(len(LENGTHS), PADDED, config=config, table=table)
        layer_index = jnp.arange(len(layers), dtype=jnp.int32)
        return jax.lax.scan(body, state, (qs, ks, vs, layer_index))

    scan_state, (scan_outs, scan_stats) = scanned(
        *(jnp.stack(x) for x in zip(*layers, strict=True))
    )

    for layer, (q, k, v) in enumerate(layers):
        want = jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=scale)
        for row, length in enumerate(LENGTHS):
            for got in (loop_outs[layer], scan_outs[layer]):
                np.testing.assert_allclose(got[row, :length], want[row, :length], atol=2e-5)
        for name, value in loop_stats[layer].items():
            np.testing.assert_allclose(scan_stats[name][layer], value, atol=1e-6, err_msg=name)
    for got, want in zip(jax.tree.leaves(scan_state), jax.tree.leaves(loop_state), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(scan_stats["density"], 1.0)
    # Each shared cluster's layer-0 member is its pivot; its later members share.
    np.testing.assert_array_equal(scan_stats["num_pivot"], [[2, 2], [0, 0], [0, 0]])
    np.testing.assert_array_equal(scan_stats["num_shared"], [[0, 0], [4, 4], [4, 4]])
    assert bool(scan_state.has_pivot.all())


def test_bad_calls_are_refused():
    config = ssp.SharePrefillConfig(block_size=BLOCK, dense_below=BLOCK)
    q, k, v = (x[:, :48] for x in _layers(seed=3)[0])
    state = ssp.init_sharing_state(2, 48, config=config, table=_table())
    with pytest.raises(ValueError, match="scale must be finite and positive"):
        ssp.shareprefill_attention(q, k, v, state, layer=0, config=config, scale=-1.0)
    # A state made without the table has no slots for its shared clusters.
    no_slots = ssp.init_sharing_state(2, 48, config=config)
    with pytest.raises(ValueError, match="the sharing state does not fit"):
        ssp.shareprefill_attention(
            q, k, v, no_slots, layer=0, config=config, table=_table(), lengths=[48, 30]
        )
    with pytest.raises(ValueError, match=r"lengths must be in \[1, T=48\]"):
        ssp.shareprefill_attention(
            q, k, v, state, layer=0, config=config, table=_table(), lengths=[48, 60]
        )
