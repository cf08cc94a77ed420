"""Every bad input to the planner and the attention entry point, and the message it gets.

Each case is one row of the table in docs/usage.md ("Bad inputs and their messages").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import generate
from models.random_weights import random_model
from sharedsparse_jax import planner
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.sharing import SharingState, SharingTable
from tests.models.helpers import tiny_config

BLOCK = 16


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tau_qa": float("nan")}, "tau_qa must be a number >= 0, got nan"),
        ({"tau_sim": float("nan")}, "tau_sim must be a number >= 0, got nan"),
        ({"tau_sim": -0.1}, "tau_sim must be a number >= 0"),
        ({"gamma": float("nan")}, r"gamma must be in \(0, 1\], got nan"),
        ({"tau_fb": 0.0}, r"tau_fb must be in \(0, 1\]"),
        ({"reference_quirks": "yes"}, "reference_quirks must be a bool, got 'yes'"),
        ({"block_size": 100}, "block_size must be a power of two >= 16"),
        ({"block_size": 8, "dense_below": 64}, "block_size must be a power of two >= 16"),
        ({"min_budget": 1.5}, "min_budget must be an integer number of tokens, got 1.5"),
        ({"dense_below": True}, "dense_below must be an integer number of tokens"),
        ({"method": "magic"}, "method must be one of"),
        ({"dense_below": 64, "block_size": 128}, "dense_below=64 must be at least one block"),
        ({"max_budget": 512, "min_budget": 1024}, "max_budget=512 is below min_budget=1024"),
    ],
)
def test_config_refuses(overrides, message):
    with pytest.raises(ValueError, match=message):
        SharePrefillConfig(**overrides)


def _qk(batch=1, length=64, num_heads=4, num_kv_heads=2):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((batch, length, num_heads, 32)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((batch, length, num_kv_heads, 32)), jnp.float32)
    return q, k


@pytest.mark.parametrize(
    ("lengths", "message"),
    [
        ([0], r"lengths must be in \[1, T=64\].*\[0\]"),
        ([-3], r"lengths must be in \[1, T=64\].*\[-3\]"),
        ([65], r"lengths must be in \[1, T=64\].*\[65\]"),
        ([64, 64], r"lengths must be int\[B\] = int\[1\], got int32\[2\]"),
        (np.asarray([64.0], np.float32), r"lengths must be int\[B\] = int\[1\], got float32\[1\]"),
    ],
)
def test_plan_refuses_lengths(lengths, message):
    q, k = _qk()
    config = SharePrefillConfig(block_size=BLOCK, min_budget=BLOCK, dense_below=2 * BLOCK)
    with pytest.raises(ValueError, match=message):
        planner.plan_layer(
            q,
            k,
            SharingState.initial(1, 0, 4),
            layer=0,
            lengths=jnp.asarray(lengths),
            config=config,
            table=None,
        )


def _table(num_layers=2, num_heads=4):
    return SharingTable.from_json_dict(
        {"clusters": {"a": [[0, 0], [1, 0]]}, "shared_clusters": ["a"]},
        num_layers=num_layers,
        num_heads=num_heads,
    )


def test_plan_refuses_a_layer_outside_the_table():
    q, k = _qk()
    config = SharePrefillConfig(block_size=BLOCK, min_budget=BLOCK, dense_below=2 * BLOCK)
    with pytest.raises(ValueError, match="layer 2 is outside the sharing table's 2 layers"):
        planner.plan_layer(
            q,
            k,
            SharingState.initial(1, 1, 4),
            layer=2,
            lengths=jnp.asarray([64]),
            config=config,
            table=_table(),
        )


def test_attention_refuses_bad_shapes_and_states():
    config = SharePrefillConfig(block_size=BLOCK, min_budget=BLOCK, dense_below=2 * BLOCK)
    attention = SharePrefillAttention(config, _table(), implementation="xla")
    q, k = _qk()
    lengths = jnp.asarray([64])
    with pytest.raises(ValueError, match=r"expected q \[B, T, N, H\].*\(64, 4, 32\)"):
        attention(q[0], k[0], k[0], attention.init_state(1, 64), layer=0, lengths=lengths)
    with pytest.raises(ValueError, match="q has 64 positions but k only 48"):
        attention(q, k[:, :48], k[:, :48], attention.init_state(1, 64), layer=0, lengths=lengths)
    k72 = jnp.concatenate([k, k[:, :8]], axis=1)
    with pytest.raises(ValueError, match="must start and end on block boundaries"):
        attention(q, k72, k72, attention.init_state(1, 64, 72), layer=0, lengths=lengths)
    with pytest.raises(ValueError, match="sharing table has 4 query heads per layer, q has 6"):
        q6, k6 = _qk(num_heads=6)
        attention(q6, k6, k6, attention.init_state(1, 64), layer=0, lengths=lengths)
    for wrong in (attention.init_state(1, 128), attention.init_state(2, 64), ()):
        with pytest.raises(ValueError, match=r"init_state\(batch=1, num_queries=64, num_keys=64\)"):
            attention(q, k, k, wrong, layer=0, lengths=lengths)


def test_table_refuses_a_string_of_shared_clusters():
    with pytest.raises(
        ValueError, match="'shared_clusters' must be a list of cluster ids, got '01'"
    ):
        SharingTable.from_json_dict(
            {"clusters": {"0": [[0, 0]], "1": [[0, 1]]}, "shared_clusters": "01"},
            num_layers=1,
            num_heads=4,
        )


def test_prefill_refuses_a_table_for_another_layer_count():
    model = random_model(tiny_config(num_layers=4, num_heads=4, num_kv_heads=2))
    attention = SharePrefillAttention(
        SharePrefillConfig(block_size=BLOCK, min_budget=BLOCK, dense_below=2 * BLOCK),
        _table(num_layers=2),
        implementation="xla",
    )
    with pytest.raises(ValueError, match="sharing table is for 2 layers x 4 query heads"):
        generate.prefill(model, np.arange(40, dtype=np.int32)[None], attention=attention)


def test_prompt_shorter_than_one_block_runs_dense():
    """T = 128 padded tokens with 256-token blocks: no estimation, every head dense."""
    config = SharePrefillConfig(block_size=256, min_budget=256, dense_below=256)
    attention = SharePrefillAttention(config, None, implementation="xla")
    q, k = _qk(length=128)
    out, _, stats = jax.jit(
        lambda q, k: attention(
            q, k, k, attention.init_state(1, 128), layer=0, lengths=jnp.asarray([100])
        )
    )(q, k)
    assert int(stats["num_dense"][0]) == 4
    dense = jax.nn.dot_product_attention(q[:, :100], k[:, :100], k[:, :100], is_causal=True)
    np.testing.assert_allclose(np.asarray(out[:, :100]), np.asarray(dense), atol=1e-5)
