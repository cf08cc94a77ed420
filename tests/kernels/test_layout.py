"""The block-list layout: constructors, geometry and the validator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.block_sparse_attention import (
    BlockGeometry,
    BlockLayout,
    causal_layout,
    layout_from_mask,
    validate_layout,
)
from tests.kernels.battery import Case, random_block_mask


@pytest.mark.parametrize(
    ("num_queries", "num_keys", "block_size", "front_pad", "first_q_block", "num_q_blocks"),
    [
        (256, 256, 64, 0, 0, 4),
        (200, 200, 64, 0, 0, 4),
        (100, 300, 64, 8, 3, 2),
        (128, 320, 64, 0, 3, 2),
        (1, 150, 64, 21, 2, 1),
    ],
)
def test_geometry(num_queries, num_keys, block_size, front_pad, first_q_block, num_q_blocks):
    g = BlockGeometry(num_queries=num_queries, num_keys=num_keys, block_size=block_size)
    assert (g.front_pad, g.first_q_block, g.num_q_blocks) == (
        front_pad,
        first_q_block,
        num_q_blocks,
    )
    assert g.first_q_block + g.num_q_blocks == g.num_k_blocks
    assert g.rows_per_q_block().sum() == num_queries


def test_geometry_refuses_more_queries_than_keys():
    with pytest.raises(ValueError, match="T <= S"):
        BlockGeometry(num_queries=10, num_keys=5, block_size=4)


@pytest.mark.parametrize("max_blocks", [None, "tight"])
def test_layout_from_mask_round_trips(rng, max_blocks):
    case = Case("mask", num_queries=300, num_keys=500, pattern="mixed", batch=2, num_heads=3)
    mask = random_block_mask(rng, case)
    m = int(mask.sum(-1).max()) if max_blocks == "tight" else None
    layout = jax.jit(lambda x: layout_from_mask(x, block_size=64, max_blocks=m))(mask)
    assert layout.kv_block_idx.shape[-1] == (m or mask.shape[-1])
    np.testing.assert_array_equal(np.asarray(layout.to_mask(mask.shape[-1])), mask)
    np.testing.assert_array_equal(np.asarray(layout.kv_block_count), mask.sum(-1))
    idx, count = np.asarray(layout.kv_block_idx), np.asarray(layout.kv_block_count)
    for row_idx, row_count, row_mask in zip(
        idx.reshape(-1, idx.shape[-1]),
        count.reshape(-1),
        mask.reshape(-1, mask.shape[-1]),
        strict=True,
    ):
        np.testing.assert_array_equal(row_idx[:row_count], np.nonzero(row_mask)[0])
        assert (row_idx[row_count:] == row_idx[row_count - 1]).all()  # repeats the last
    validate_layout(
        layout, BlockGeometry(num_queries=300, num_keys=500, block_size=64), batch=2, num_heads=3
    )


def test_layout_from_mask_refuses_small_capacity(rng):
    mask = random_block_mask(rng, Case("full", pattern="full"))
    with pytest.raises(ValueError, match="too small"):
        layout_from_mask(jnp.asarray(mask), block_size=64, max_blocks=2)


def test_causal_layout_lists_every_causal_block():
    g = BlockGeometry(num_queries=100, num_keys=300, block_size=64)
    layout = causal_layout(2, 3, g)
    mask = np.asarray(layout.to_mask(g.num_k_blocks))
    want = np.arange(g.num_k_blocks)[None, :] <= g.diagonal_blocks()[:, None]
    assert (mask == want).all()
    validate_layout(layout, g, batch=2, num_heads=3)
    np.testing.assert_allclose(np.asarray(layout.density(g)), 1.0)


def _valid_layout():
    g = BlockGeometry(num_queries=256, num_keys=256, block_size=64)
    return g, causal_layout(1, 2, g)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda i, c: (i.at[0, 0, 2, 3].set(3), c.at[0, 0, 2].set(4)), "above the diagonal"),
        (lambda i, c: (i, c.at[0, 1, 1].set(0)), r"in \[1, M"),
        (lambda i, c: (i.at[0, 0, 3, 1].set(0), c), "strictly ascending"),
        (lambda i, c: (i.at[0, 0, 1, 3].set(0), c), "repeat the last valid"),
        (lambda i, c: (i.at[0, 0, 3, 0].set(9), c), "outside"),
        (lambda i, c: (i.astype(jnp.int16), c), "int32"),
        (lambda i, c: (i[:, :, :3], c[:, :, :3]), "expected"),
    ],
)
def test_validator_explains(corrupt, message):
    g, layout = _valid_layout()
    idx, count = corrupt(layout.kv_block_idx, layout.kv_block_count)
    with pytest.raises(ValueError, match=message):
        validate_layout(BlockLayout(idx, count, 64), g, batch=1, num_heads=2)


def test_validator_skips_value_checks_under_jit():
    g, layout = _valid_layout()
    bad = BlockLayout(layout.kv_block_idx, layout.kv_block_count.at[0, 0, 0].set(0), 64)

    @jax.jit
    def check(layout):
        validate_layout(layout, g, batch=1, num_heads=2)  # shapes only: nothing to read
        return layout.kv_block_count.sum()

    assert int(check(bad)) == int(bad.kv_block_count.sum())
