"""Block maps of end-padded prompts: only the real query rows (positions < lengths[b]) count."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.block_sparse_attention import (
    BlockGeometry,
    block_sparse_attention_with_block_map,
    layout_from_mask,
)
from tests.kernels.battery import TOLERANCES, Case, as_np, make_inputs, random_block_mask
from tests.oracle import numpy_attention

IMPLEMENTATIONS = ["reference", "xla", "triton"]

# (case, lengths): batch element 1 of each ends mid-block and leaves whole padding blocks; with
# T < S one prompt ends before the first query (no real query at all).
LENGTH_CASES = {
    "T_eq_S": (Case("T_eq_S", num_queries=150, num_keys=150, block_size=32), [137, 70]),
    "T_lt_S": (Case("T_lt_S", num_queries=100, num_keys=180, block_size=32), [150, 75]),
    "T_lt_S_bf16_gqa4": (
        Case(
            "T_lt_S_bf16_gqa4",
            num_queries=90,
            num_keys=130,
            num_heads=8,
            block_size=32,
            dtype=jnp.bfloat16,
        ),
        [101, 130],
    ),
}


def _maps(implementation, q, k, v, layout, selected, lengths):
    """(out, lse, block_map), jitted: lengths and selected are traced."""

    def run(q, k, v, layout, selected, lengths):
        return block_sparse_attention_with_block_map(
            q,
            k,
            v,
            layout,
            selected,
            lengths=lengths,
            implementation=implementation,
            interpret=True,
        )

    out, lse, block_map = jax.jit(run)(
        q, k, v, layout, jnp.asarray(selected), jnp.asarray(lengths, jnp.int32)
    )
    return as_np(out), np.asarray(lse, np.float64), np.asarray(block_map, np.float64)


def _real_rows(case, lengths):
    """bool[B, Tb]: which query blocks hold a real query of each batch element."""
    rows = numpy_attention.block_index_of_query(case.num_queries, case.num_keys, case.block_size)
    positions = np.arange(case.num_keys - case.num_queries, case.num_keys)
    is_real = positions[None, :] < np.asarray(lengths)[:, None]  # [B, T]
    return np.stack([np.bincount(rows[r], minlength=rows.max() + 1) > 0 for r in is_real])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", list(LENGTH_CASES))
def test_maps_average_only_real_rows(implementation, name, rng):
    case, lengths = LENGTH_CASES[name]
    q, k, v = make_inputs(rng, case)
    mask = random_block_mask(rng, case)
    layout = layout_from_mask(jnp.asarray(mask), block_size=case.block_size)
    selected = rng.random((case.batch, case.num_heads)) < 0.6
    selected[:, 1] = True
    out, lse, block_map = _maps(implementation, q, k, v, layout, selected, lengths)
    want_out, want_lse, probs = numpy_attention.attention(
        as_np(q), as_np(k), as_np(v), mask, case.block_size
    )
    want_map = numpy_attention.block_map(probs, case.num_keys, case.block_size, lengths)
    tol = TOLERANCES[case.dtype]
    np.testing.assert_allclose(out, want_out, atol=tol["out"], rtol=0)
    np.testing.assert_allclose(lse, want_lse, atol=tol["lse"], rtol=0)
    np.testing.assert_allclose(
        block_map, want_map * selected[..., None, None], atol=tol["block_map"], rtol=1e-4
    )
    has_real = np.broadcast_to(_real_rows(case, lengths)[:, None], mask.shape[:3])
    assert (~has_real).any()
    picked = selected[..., None] & has_real
    np.testing.assert_allclose(block_map.sum(-1)[picked], 1.0, atol=1e-5)
    assert (block_map[~picked] == 0).all()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("num_queries", [None, 70], ids=["T_eq_S", "T_lt_S"])
def test_padded_prompt_has_the_unpadded_maps(implementation, num_queries, rng):
    """A prompt of n tokens end-padded to S, with NaN queries in the padding: its maps on the
    real query blocks are those of the unpadded prompt, and zero elsewhere."""
    n, pad, bs = 115, 50, 32  # n ends mid-block; the padding fills it and a whole block more
    offset = 0 if num_queries is None else n - num_queries
    short = Case("short", batch=1, num_queries=n - offset, num_keys=n, block_size=bs)
    long = dataclasses.replace(short, num_queries=n + pad - offset, num_keys=n + pad)
    q, k, v = make_inputs(rng, long)
    q = q.at[:, n - offset :].set(jnp.nan)  # padding queries take no part
    short_mask = random_block_mask(rng, short)
    long_mask = random_block_mask(rng, long)
    rows, cols = short_mask.shape[2:]
    long_mask[:, :, :rows] = False
    long_mask[:, :, :rows, :cols] = short_mask
    selected = np.ones((1, short.num_heads), bool)
    _, _, short_map = _maps(
        implementation,
        q[:, : n - offset],
        k[:, :n],
        v[:, :n],
        layout_from_mask(jnp.asarray(short_mask), block_size=bs),
        selected,
        [n],
    )
    long_out, _, long_map = _maps(
        implementation,
        q,
        k,
        v,
        layout_from_mask(jnp.asarray(long_mask), block_size=bs),
        selected,
        [n],
    )
    geometry = BlockGeometry(num_queries=long.num_queries, num_keys=long.num_keys, block_size=bs)
    assert long_map.shape[2:] == (geometry.num_q_blocks, geometry.num_k_blocks)
    assert geometry.num_q_blocks > rows + 1  # a whole padding block
    assert np.isnan(long_out[:, n - offset :]).all()
    np.testing.assert_allclose(long_map[:, :, :rows, :cols], short_map, atol=1e-6, rtol=0)
    assert (long_map[:, :, rows:] == 0).all() and (long_map[:, :, :, cols:] == 0).all()
    np.testing.assert_allclose(short_map.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("lengths", "message"),
    [
        (jnp.asarray([128, 128, 128], jnp.int32), r"lengths must be int\[B=2\]"),
        (jnp.asarray([128.0, 100.0]), r"lengths must be int\[B=2\]"),
        (jnp.asarray([129, 100], jnp.int32), r"lengths must be in \[0, S=128\], got \[129, 100\]"),
        (np.asarray([-1, 100]), r"lengths must be in \[0, S=128\]"),
    ],
)
def test_bad_lengths_raise(lengths, message, rng):
    case = Case("bad", batch=2, num_queries=128, num_keys=128, block_size=64)
    q, k, v = make_inputs(rng, case)
    layout = layout_from_mask(jnp.asarray(random_block_mask(rng, case)), block_size=64)
    with pytest.raises(ValueError, match=message):
        block_sparse_attention_with_block_map(
            q, k, v, layout, jnp.ones((2, case.num_heads), bool), lengths=lengths
        )


def test_concrete_selection_and_lengths_inside_jit(rng):
    """Arrays made outside a jitted caller stay concrete in it: they are checked (with NumPy, as
    jnp comparisons would be staged) and used."""
    case = Case("closed_over", batch=2, num_queries=128, num_keys=128, block_size=64)
    q, k, v = make_inputs(rng, case)
    layout = layout_from_mask(jnp.asarray(random_block_mask(rng, case)), block_size=64)
    selected = jnp.ones((2, case.num_heads), bool)

    def maps(lengths):
        return jax.jit(
            lambda q, k, v: block_sparse_attention_with_block_map(
                q, k, v, layout, selected, lengths=lengths, implementation="xla"
            )[2]
        )(q, k, v)

    lengths = jnp.asarray([100, 128], jnp.int32)
    eager = block_sparse_attention_with_block_map(
        q, k, v, layout, selected, lengths=lengths, implementation="xla"
    )[2]
    np.testing.assert_allclose(maps(lengths), eager, atol=1e-6)
    with pytest.raises(ValueError, match=r"lengths must be in \[0, S=128\], got \[100, 129\]"):
        maps(jnp.asarray([100, 129], jnp.int32))
