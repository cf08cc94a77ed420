"""Short prompts skip planning: `dense_layer_stats` must equal `layer_stats` of the plan the
planner makes for them (every head dense, every causal block), whole prompts and chunks, ragged
lengths; and SharePrefillAttention below dense_below gives dense attention with those stats."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharedsparse_jax import planner, stats
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.dense import dense_causal_attention
from sharedsparse_jax.sharing import SharingState

BLOCK = 16
CONFIG = SharePrefillConfig(block_size=BLOCK, min_budget=BLOCK, dense_below=1024)


def _qkv(num_queries: int, num_keys: int, seed: int = 0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(keys[0], (2, num_queries, 6, 32), jnp.float32)
    k = jax.random.normal(keys[1], (2, num_keys, 2, 32), jnp.float32)
    v = jax.random.normal(keys[2], (2, num_keys, 2, 32), jnp.float32)
    return q, k, v


@pytest.mark.parametrize(
    "num_queries, num_keys, lengths",
    [(200, 200, (200, 157)), (64, 192, (192, 150)), (64, 192, (100, 192))],
)
def test_dense_layer_stats_equal_the_stats_of_the_dense_plan(num_queries, num_keys, lengths):
    q, k, _ = _qkv(num_queries, num_keys)
    lengths = jnp.asarray(lengths, jnp.int32)
    state = SharingState.initial(2, 0, -(-num_queries // BLOCK), -(-num_keys // BLOCK))
    plan, _ = planner.plan_layer(q, k, state, layer=0, lengths=lengths, config=CONFIG, table=None)
    want = stats.layer_stats(plan, lengths, BLOCK)
    got = stats.dense_layer_stats(
        lengths, num_heads=6, num_queries=num_queries, num_keys=num_keys, block_size=BLOCK
    )
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)
    assert np.all(np.asarray(got["num_dense"]) == 6)


def test_attention_below_dense_below_is_dense_attention_without_planning():
    q, k, v = _qkv(200, 200, seed=1)
    lengths = jnp.asarray([200, 157], jnp.int32)
    attention = SharePrefillAttention(CONFIG)
    state = attention.init_state(2, 200)
    out, new_state, layer_stats = attention(q, k, v, state, layer=0, lengths=lengths)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(dense_causal_attention(q, k, v)))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new_state, state))
    np.testing.assert_array_equal(np.asarray(layer_stats["density"]), [1.0, 1.0])
    # No plan was made: the traced call holds no block mask [B, N, Tb, Sb].
    text = (
        jax.jit(lambda q, k, v, lengths: attention(q, k, v, state, layer=0, lengths=lengths))
        .lower(q, k, v, lengths)
        .as_text()
    )
    assert "tensor<2x6x13x13xi1>" not in text
    plan_text = (
        jax.jit(
            lambda q, k, lengths: planner.plan_layer(
                q, k, state, layer=0, lengths=lengths, config=CONFIG, table=None
            )[0]
        )
        .lower(q, k, lengths)
        .as_text()
    )
    assert "tensor<2x6x13x13xi1>" in plan_text  # what the check looks for
