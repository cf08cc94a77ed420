"""Properties of plans on random and structured inputs, and the attention entry point."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharedsparse_jax import planner
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.sharing import SharingState, SharingTable
from tests.oracle import numpy_attention
from tests.planner import inputs

BLOCK = 16


def _table(num_layers, num_heads, rng):
    """Random clusters over all heads of all layers; about half of them shared."""
    labels = rng.integers(0, 4, size=(num_layers, num_heads))
    clusters = {
        str(c): [[int(l), int(h)] for l, h in np.argwhere(labels == c)]
        for c in range(4)
        if (labels == c).any()
    }
    return SharingTable.from_json_dict(
        {"clusters": clusters, "shared_clusters": list(clusters)[::2]},
        num_layers=num_layers,
        num_heads=num_heads,
    )


def _config(**overrides):
    base = dict(block_size=BLOCK, gamma=0.9, min_budget=BLOCK, dense_below=4 * BLOCK)
    return SharePrefillConfig(**(base | overrides))


def _random_qk(rng, batch, length, num_heads, num_kv_heads, head_dim=32):
    q = rng.standard_normal((batch, length, num_heads, head_dim)) * 2.0
    k = rng.standard_normal((batch, length, num_kv_heads, head_dim)) * 2.0
    return jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32)


def _plan_layers(q_layers, k_layers, lengths, config, table):
    """Plans consecutive layers, feeding back exact dense maps for pivots."""
    batch, length, num_heads, _ = q_layers[0].shape
    tb = -(-length // BLOCK)
    state = SharingState.initial(batch, table.num_shared, tb)
    plan_layer = jax.jit(
        lambda q, k, state, layer: planner.plan_layer(
            q, k, state, layer=layer, lengths=lengths, config=config, table=table
        )
    )
    absorb = jax.jit(
        lambda state, plan, maps, layer: planner.absorb_pivot_maps(
            state, plan, maps, layer=layer, lengths=lengths, config=config, table=table
        )
    )
    plans = []
    for layer, (q, k) in enumerate(zip(q_layers, k_layers, strict=True)):
        plan, state = plan_layer(q, k, state, layer)
        maps = np.zeros(plan.block_mask.shape)
        for b in range(batch):
            n = int(lengths[b])
            nb = -(-n // BLOCK)
            maps[b, :, :nb, :nb] = inputs.dense_block_maps(
                np.asarray(q[b, :n], np.float64), np.asarray(k[b, :n], np.float64), BLOCK
            )
        state = absorb(state, plan, jnp.asarray(maps, jnp.float32), layer)
        plans.append((plan, state))
    return plans


@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads"), [(3, 3), (6, 2), (8, 2)], ids=["gqa1", "gqa3", "gqa4"]
)
@pytest.mark.parametrize("length", [256, 200], ids=["aligned", "ragged"])
def test_plan_properties(num_heads, num_kv_heads, length):
    rng = np.random.default_rng(num_heads * 1000 + length)
    num_layers, batch = 3, 2
    table = _table(num_layers, num_heads, rng)
    config = _config(tau_qa=0.05)
    lengths = jnp.asarray([length, length - 37], jnp.int32)
    qs, ks = zip(
        *(_random_qk(rng, batch, length, num_heads, num_kv_heads) for _ in range(num_layers)),
        strict=True,
    )
    plans = _plan_layers(qs, ks, lengths, config, table)
    tb = -(-length // BLOCK)
    causal = np.tril(np.ones((tb, tb), bool))
    for layer, (plan, _) in enumerate(plans):
        mask = np.asarray(plan.block_mask)
        category = np.asarray(plan.category)
        assert not (mask & ~causal).any(), "a block above the diagonal"
        for b in range(batch):
            nb = -(-int(lengths[b]) // BLOCK)
            real = mask[b, :, :nb, :nb]
            assert real[:, np.arange(nb), np.arange(nb)].all(), "diagonal missing"
            assert real[:, :, 0].all(), "sink column missing"
            assert (mask[b, :, nb:] == np.eye(tb, dtype=bool)[nb:]).all()
            pivots = category[b] == planner.PIVOT
            assert (real[pivots] == causal[:nb, :nb]).all()
            shared = np.nonzero(category[b] == planner.SHARED)[0]
            slot_of = table.shared_slot_of[layer]
            for h in shared:
                pattern = np.asarray(plans[layer - 1][1].pattern)[b, slot_of[h]]
                assert not (pattern & ~mask[b, h]).any(), "shared head lost pivot blocks"


def test_batch_elements_are_independent():
    rng = np.random.default_rng(7)
    num_layers, num_heads, num_kv_heads, length = 3, 6, 3, 224
    table = _table(num_layers, num_heads, rng)
    config = _config(tau_qa=0.05)
    qs, ks = zip(
        *(_random_qk(rng, 2, length, num_heads, num_kv_heads) for _ in range(num_layers)),
        strict=True,
    )
    lengths = jnp.asarray([224, 190], jnp.int32)
    together = _plan_layers(qs, ks, lengths, config, table)
    for b in range(2):
        alone = _plan_layers(
            [q[b : b + 1] for q in qs],
            [k[b : b + 1] for k in ks],
            lengths[b : b + 1],
            config,
            table,
        )
        for (plan_all, _), (plan_one, _) in zip(together, alone, strict=True):
            np.testing.assert_array_equal(
                np.asarray(plan_all.block_mask[b]), np.asarray(plan_one.block_mask[0])
            )
            np.testing.assert_array_equal(
                np.asarray(plan_all.category[b]), np.asarray(plan_one.category[0])
            )


def test_pallas_profiles_plan_like_the_xla_ones():
    """The estimation's Triton profiles (interpret mode) give the same plan as the XLA ones."""
    rng = np.random.default_rng(11)
    num_heads, num_kv_heads, length = 8, 2, 300
    table = _table(1, num_heads, rng)
    config = _config(tau_qa=0.2)
    q, k = _random_qk(rng, 2, length, num_heads, num_kv_heads)
    lengths = jnp.asarray([300, 260], jnp.int32)
    state = SharingState.initial(2, table.num_shared, -(-length // BLOCK))
    plans = [
        jax.jit(
            lambda q, k, state, implementation=implementation: planner.plan_layer(
                q,
                k,
                state,
                layer=0,
                lengths=lengths,
                config=config,
                table=table,
                profile_implementation=implementation,
                interpret=True,
            )
        )(q, k, state)[0]
        for implementation in ("xla", "triton")
    ]
    np.testing.assert_array_equal(plans[0].block_mask, plans[1].block_mask)
    np.testing.assert_array_equal(plans[0].category, plans[1].category)
    assert len(np.unique(np.asarray(plans[0].category))) > 1


@pytest.mark.parametrize(
    "method", ["dense", "streaming", "vertical_slash", "flexprefill", "shareprefill"]
)
def test_methods_and_short_prompts(method):
    rng = np.random.default_rng(3)
    table = _table(1, 4, rng)
    config = _config(method=method, streaming_sink=BLOCK, streaming_window=3 * BLOCK)
    q, k = _random_qk(rng, 2, 160, 4, 2)
    lengths = jnp.asarray([160, 40], jnp.int32)  # the second is below dense_below
    state = SharingState.initial(2, table.num_shared if method == "shareprefill" else 0, 10)
    plan, _ = planner.plan_layer(
        q,
        k,
        state,
        layer=0,
        lengths=lengths,
        config=config,
        table=table if method == "shareprefill" else None,
    )
    mask, category = np.asarray(plan.block_mask), np.asarray(plan.category)
    causal = np.tril(np.ones((10, 10), bool))
    assert (category[1] == planner.DENSE).all()
    nb_short = 3
    assert (mask[1, :, :nb_short, :nb_short] == causal[:nb_short, :nb_short]).all()
    if method == "dense":
        assert (mask[0] == causal).all() and (category[0] == planner.DENSE).all()
    elif method == "streaming":
        offset = np.arange(10)[:, None] - np.arange(10)[None, :]
        want = ((np.arange(10)[None, :] < 1) | (offset < 3)) & causal
        assert (mask[0] == want).all() and (category[0] == planner.STREAMING).all()
    elif method == "vertical_slash":
        assert (category[0] == planner.VERTICAL_SLASH).all()
    else:
        assert set(category[0]) <= {planner.PIVOT, planner.QUERY_AWARE, planner.VERTICAL_SLASH}


def test_keeping_every_block_equals_dense_attention_under_scan():
    """gamma = 1, no query-aware heads, every head in a shared cluster: dense output."""
    rng = np.random.default_rng(11)
    num_layers, batch, length, num_heads, num_kv_heads = 3, 2, 176, 4, 2
    clusters = {str(h): [[layer, h] for layer in range(num_layers)] for h in range(num_heads)}
    table = SharingTable.from_json_dict(
        {"clusters": clusters, "shared_clusters": list(clusters)},
        num_layers=num_layers,
        num_heads=num_heads,
    )
    attention = SharePrefillAttention(
        _config(gamma=1.0, tau_qa=0.0, tau_sim=1.0, tau_fb=1.0), table, implementation="xla"
    )
    qs, ks, vs = (
        jnp.asarray(rng.standard_normal((num_layers, batch, length, n, 32)), jnp.float32)
        for n in (num_heads, num_kv_heads, num_kv_heads)
    )
    lengths = jnp.full((batch,), length, jnp.int32)

    def body(state, layer_inputs):
        q, k, v, layer = layer_inputs
        out, state, stats = attention(q, k, v, state, layer=layer, lengths=lengths)
        return state, (out, stats)

    traces = []

    @jax.jit
    def run(qs, ks, vs):
        traces.append(1)
        return jax.lax.scan(
            body, attention.init_state(batch, length), (qs, ks, vs, jnp.arange(num_layers))
        )

    final_state, (outs, stats) = run(qs, ks, vs)
    run(qs + 1.0, ks, vs)
    assert len(traces) == 1, "one compilation per shape, config and table"
    for layer in range(num_layers):
        want = numpy_attention.causal_attention(qs[layer], ks[layer], vs[layer])
        np.testing.assert_allclose(np.asarray(outs[layer]), want, atol=2e-5)
    np.testing.assert_allclose(np.asarray(stats["density"]), 1.0)
    assert int(stats["num_pivot"][0].sum()) == batch * num_heads  # every head a pivot first
    assert bool(final_state.has_pivot.all())


def test_underflowed_profiles_keep_the_budget():
    """A sink so strong that every other probability underflows to 0 leaves budget-many blocks.

    The tied zeros of the profiles fill the budget floor (lowest block index first) and no more:
    b_min columns (the sink and 1-3) and b_min diagonals (0, the sink's offset nb - 1, then 1
    and 2), not the whole causal mask.
    """
    rng = np.random.default_rng(9)
    length, head_dim, b_min = 20 * BLOCK, 32, 4
    direction = np.zeros(head_dim)
    direction[0] = 1.0
    q = 0.1 * rng.standard_normal((1, length, 2, head_dim)) + 40.0 * direction
    k = 0.1 * rng.standard_normal((1, length, 1, head_dim))
    k[0, 0, 0] += 40.0 * direction  # logit gap of 1600 / sqrt(32): exp underflows to 0
    config = _config(method="vertical_slash", min_budget=b_min * BLOCK)
    plan, _ = planner.plan_layer(
        jnp.asarray(q, jnp.float32),
        jnp.asarray(k, jnp.float32),
        SharingState.initial(1, 0, 20),
        layer=0,
        lengths=jnp.asarray([length], jnp.int32),
        config=config,
        table=None,
    )
    mask = np.asarray(plan.block_mask)[0]
    nb = 20
    offsets = np.arange(nb)[:, None] - np.arange(nb)[None, :]
    on_slash = (offsets < b_min - 1) | (offsets == nb - 1)
    want = ((np.arange(nb)[None, :] < b_min) | on_slash) & (offsets >= 0)
    for head in mask:
        np.testing.assert_array_equal(head, want)
