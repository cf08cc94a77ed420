"""Planning a chunk: the queries are the last T of the S keys seen so far."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from sharedsparse_jax import estimate, planner
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.sharing import SharingState, SharingTable
from tests.planner import inputs

BLOCK, CHUNK, LENGTHS = 16, 64, (250, 176)  # one prompt ends mid-block, one in an early chunk


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    total = 256
    q = np.zeros((2, total, 6, 32))
    k = np.zeros((2, total, 3, 32))
    for b, length in enumerate(LENGTHS):
        topics = inputs.chunk_topics(rng, length, BLOCK)
        q_b, k_b = inputs.layer_inputs(
            rng, ["topic", "stripes", "pooled"], length=length, group=2, head_dim=32,
            block_size=BLOCK, topics=topics,
        )  # fmt: skip
        q[b, :length], k[b, :length] = q_b, k_b
        q[b, length:] = rng.standard_normal(q[b, length:].shape)
        k[b, length:] = rng.standard_normal(k[b, length:].shape)
    return jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32)


def _table():
    clusters = {"a": [[0, 0], [0, 1]], "b": [[0, 2], [0, 3]]}
    return SharingTable.from_json_dict(
        {"clusters": clusters, "shared_clusters": ["a", "b"]}, num_layers=1, num_heads=6
    )


def _plan_chunk(q, k, end, config, table=None):
    start = end - CHUNK
    visible = jnp.minimum(jnp.asarray(LENGTHS, jnp.int32), end)
    state = SharingState.initial(2, 0 if table is None else table.num_shared, CHUNK // BLOCK,
                                 end // BLOCK)  # fmt: skip
    plan, _ = planner.plan_layer(
        q[:, start:end], k[:, :end], state, layer=0, lengths=visible, config=config, table=table
    )
    return plan, visible


@pytest.mark.parametrize("method", ["vertical_slash", "flexprefill", "shareprefill", "streaming"])
def test_chunk_plans_are_causal_and_keep_sink_and_diagonal(method):
    q, k = _inputs()
    config = SharePrefillConfig(
        method=method, block_size=BLOCK, min_budget=BLOCK, dense_below=4 * BLOCK, tau_qa=0.1,
        streaming_sink=BLOCK, streaming_window=2 * BLOCK,
    )  # fmt: skip
    table = _table() if method == "shareprefill" else None
    for end in range(CHUNK, 257, CHUNK):
        plan, visible = _plan_chunk(q, k, end, config, table)
        mask = np.asarray(plan.block_mask)  # [B, N, Tb, Sb]
        tb, sb = mask.shape[-2:]
        first = sb - tb
        rows, cols = np.arange(tb)[:, None] + first, np.arange(sb)[None, :]
        assert not (mask & (cols > rows)).any(), "a block after its query block"
        for b, n in enumerate(np.asarray(visible)):
            nb = -(-int(n) // BLOCK)
            real = np.arange(tb) + first < nb
            diagonal = mask[b][:, np.arange(tb), np.arange(tb) + first]  # [N, Tb]
            assert diagonal.all(), "every row keeps its diagonal block"
            assert mask[b][:, real, 0].all(), "every real row keeps the sink"
            padding = mask[b][:, ~real]
            assert padding.sum() == padding.shape[0] * (~real).sum(), "padding rows: diagonal"
            if int(n) - (end - CHUNK) < BLOCK:  # less than a block of real queries: dense
                assert (np.asarray(plan.category)[b] == planner.DENSE).all()
                assert mask[b][:, real].sum() == mask.shape[1] * (rows[real] + 1).sum()


def test_the_last_chunk_estimates_and_plans_like_the_whole_prompt():
    """The prompt's last block is in its last chunk: same estimates, same vertical-slash rows."""
    q, k = _inputs(1)
    config = SharePrefillConfig(
        method="vertical_slash", block_size=BLOCK, min_budget=BLOCK, dense_below=4 * BLOCK
    )
    lengths = jnp.asarray([256, 256], jnp.int32)
    whole_est = estimate.estimate_last_block(q, k, lengths, config)
    chunk_est = estimate.estimate_last_block(q[:, -CHUNK:], k, lengths, config)
    for got, want in zip(chunk_est, whole_est, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
    state = SharingState.initial(2, 0, 256 // BLOCK)
    whole, _ = planner.plan_layer(q, k, state, layer=0, lengths=lengths, config=config, table=None)
    chunk_state = SharingState.initial(2, 0, CHUNK // BLOCK, 256 // BLOCK)
    chunk, _ = planner.plan_layer(
        q[:, -CHUNK:], k, chunk_state, layer=0, lengths=lengths, config=config, table=None
    )
    np.testing.assert_array_equal(
        np.asarray(chunk.block_mask), np.asarray(whole.block_mask)[:, :, -CHUNK // BLOCK :]
    )
