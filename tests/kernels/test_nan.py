"""NaN in, NaN out: every implementation against the float64 oracle, with NaN inputs.

A NaN among a row's visible scores (in its query, or in a key it sees) makes that row's output
and LSE NaN, and its block-map row NaN; a NaN value it sees makes its output NaN. Rows that see
no key still return 0 and MASK_VALUE, and rows that see no NaN stay exact.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.block_sparse_attention import (
    MASK_VALUE,
    BlockGeometry,
    BlockLayout,
    block_sparse_attention,
    block_sparse_attention_with_block_map,
    layout_from_mask,
)
from tests.kernels.battery import TOLERANCES, Case, as_np, make_inputs, random_block_mask
from tests.oracle import numpy_attention

# T < S with a query block that starts mid-block, GQA; mosaic_gpu needs 16 bits and bs 64.
CASE = Case("nan", batch=1, num_queries=80, num_keys=120, num_heads=4, block_size=32)
MOSAIC_GPU_CASE = dataclasses.replace(
    CASE, num_queries=100, num_keys=150, block_size=64, dtype=jnp.bfloat16
)

# (implementation, interpret): interpret mode on the CPU, and the compiled GPU kernels under
# SHAREDSPARSE_TEST_PLATFORM=gpu (marked gpu).
IMPLEMENTATIONS = [
    pytest.param("reference", True, id="reference"),
    pytest.param("xla", True, id="xla"),
    pytest.param("triton", True, id="triton"),
    pytest.param("mosaic_tpu", True, id="mosaic_tpu", marks=pytest.mark.tpu_interpret),
    pytest.param("mosaic_gpu", True, id="mosaic_gpu"),
    pytest.param("triton", False, id="triton-gpu", marks=pytest.mark.gpu),
    pytest.param("mosaic_gpu", False, id="mosaic_gpu-gpu", marks=pytest.mark.gpu),
]


def _case(implementation):
    return MOSAIC_GPU_CASE if implementation == "mosaic_gpu" else CASE


def _attention(implementation, interpret, q, k, v, layout):
    """(out, lse) through the public call, jitted so that layouts with empty rows pass."""
    run = jax.jit(
        lambda q, k, v, layout: block_sparse_attention(
            q, k, v, layout, return_lse=True, implementation=implementation, interpret=interpret
        )
    )
    out, lse = run(q, k, v, layout)
    return as_np(out), np.asarray(lse, np.float64)


def _with_nan(x, index):
    return x.at[index].set(jnp.nan)


@pytest.mark.parametrize(("implementation", "interpret"), IMPLEMENTATIONS)
def test_nan_in_visible_scores_gives_nan_out_and_lse(implementation, interpret, rng):
    case = _case(implementation)
    q, k, v = make_inputs(rng, case)
    mask = random_block_mask(rng, case)
    offset = case.num_keys - case.num_queries
    # Two query rows (one in the first, partial query block) and one key in the middle, which
    # the rows after it see and the rows before it do not.
    q = _with_nan(q, (0, 3, 1, 5))
    q = _with_nan(q, (0, case.num_queries - 1, 2, 0))
    nan_key = offset + case.num_queries // 2
    k = _with_nan(k, (0, nan_key, 1, 7))
    # The heads of kv head 1 list the key's block in every row that may (causally) list it.
    geometry = BlockGeometry(
        num_queries=case.num_queries, num_keys=case.num_keys, block_size=case.block_size
    )
    key_block = nan_key // case.block_size
    mask[0, 2:, geometry.diagonal_blocks() >= key_block, key_block] = True
    layout = layout_from_mask(jnp.asarray(mask), block_size=case.block_size)
    out, lse = _attention(implementation, interpret, q, k, v, layout)
    want_out, want_lse, _ = numpy_attention.attention(
        as_np(q), as_np(k), as_np(v), mask, case.block_size
    )
    nan_rows = np.isnan(want_lse)  # [B, N, T]
    sees_key = numpy_attention.visible_keys(mask, case.num_queries, case.num_keys, case.block_size)
    sees_key = sees_key[0, 2:, :, nan_key]
    assert nan_rows[0, 1, 3] and nan_rows[0, 2, -1] and nan_rows[0, 2:][sees_key].all()
    assert sees_key.any() and not sees_key.all() and not nan_rows[0, 0].any()
    np.testing.assert_array_equal(np.isnan(lse), nan_rows)
    np.testing.assert_array_equal(np.isnan(out).all(-1), np.moveaxis(nan_rows, 2, 1))
    np.testing.assert_array_equal(np.isnan(out).any(-1), np.moveaxis(nan_rows, 2, 1))
    tol = TOLERANCES[case.dtype]
    np.testing.assert_allclose(out, want_out, atol=tol["out"], rtol=0)
    np.testing.assert_allclose(lse, want_lse, atol=tol["lse"], rtol=0)


@pytest.mark.parametrize(("implementation", "interpret"), IMPLEMENTATIONS)
def test_nan_value_gives_nan_out_and_exact_lse(implementation, interpret, rng):
    """The rows that see a NaN value get NaN out and an exact LSE (it does not read values);
    the heads of the other kv head stay exact. The other rows of the same kv head are not
    judged: a value a row may not see can still meet it with a zero weight (0 * NaN is NaN),
    in every listed block of the kernels and everywhere in the dense reference."""
    case = _case(implementation)
    q, k, v = make_inputs(rng, case)
    mask = random_block_mask(rng, case)
    nan_key = case.num_keys - case.num_queries // 2
    v = _with_nan(v, (0, nan_key, 0))
    layout = layout_from_mask(jnp.asarray(mask), block_size=case.block_size)
    out, lse = _attention(implementation, interpret, q, k, v, layout)
    want_out, want_lse, _ = numpy_attention.attention(
        as_np(q), as_np(k), as_np(v.at[0, nan_key, 0].set(0.0)), mask, case.block_size
    )
    group = case.num_heads // case.num_kv_heads
    sees = numpy_attention.visible_keys(mask, case.num_queries, case.num_keys, case.block_size)
    sees = np.moveaxis(sees[..., nan_key], 2, 1)[:, :, :group]  # [B, T, G] of kv head 0
    assert sees.any()
    assert np.isnan(out[:, :, :group][sees]).all()
    tol = TOLERANCES[case.dtype]
    other = np.s_[:, :, group:]
    np.testing.assert_allclose(out[other], want_out[other], atol=tol["out"], rtol=0)
    np.testing.assert_allclose(lse, want_lse, atol=tol["lse"], rtol=0)


@pytest.mark.parametrize(("implementation", "interpret"), IMPLEMENTATIONS)
def test_rows_without_keys_stay_zero_beside_nan_rows(implementation, interpret, rng):
    """Rows whose count is 0 (allowed under jit, as the block-map launch uses them) return 0 and
    MASK_VALUE, even when their query is NaN; a NaN row beside them is NaN."""
    case = _case(implementation)
    q, k, v = make_inputs(rng, case)
    mask = random_block_mask(rng, case)
    layout = layout_from_mask(jnp.asarray(mask), block_size=case.block_size)
    empty = np.zeros(mask.shape[:3], bool)
    empty[0, 0, 1] = empty[0, 3, 0] = empty[0, 3, -1] = True
    layout = BlockLayout(
        layout.kv_block_idx,
        jnp.where(jnp.asarray(empty), 0, layout.kv_block_count),
        layout.block_size,
    )
    rows = numpy_attention.block_index_of_query(case.num_queries, case.num_keys, case.block_size)
    empty_query = int(np.flatnonzero(rows == 1)[0])
    q = _with_nan(q, (0, empty_query, 0, 0))  # in an empty row
    q = _with_nan(q, (0, empty_query, 1, 0))  # in a row with keys
    out, lse = _attention(implementation, interpret, q, k, v, layout)
    want_out, want_lse, _ = numpy_attention.attention(
        as_np(q), as_np(k), as_np(v), mask & ~empty[..., None], case.block_size
    )
    empty_rows = empty[:, :, rows]  # [B, N, T]
    np.testing.assert_array_equal(lse[empty_rows], np.float32(MASK_VALUE))
    np.testing.assert_array_equal(np.moveaxis(out, 2, 1)[empty_rows], 0.0)
    assert np.isnan(lse[0, 1, empty_query]) and np.isnan(out[0, empty_query, 1]).all()
    tol = TOLERANCES[case.dtype]
    np.testing.assert_allclose(out, want_out, atol=tol["out"], rtol=0)
    np.testing.assert_allclose(lse, want_lse, atol=tol["lse"], rtol=0)


@pytest.mark.parametrize(("implementation", "interpret"), IMPLEMENTATIONS)
def test_nan_reaches_block_maps(implementation, interpret, rng):
    """A NaN query makes its query block's map row NaN on every listed block; the other rows
    stay exact."""
    case = _case(implementation)
    q, k, v = make_inputs(rng, case)
    mask = random_block_mask(rng, case)
    layout = layout_from_mask(jnp.asarray(mask), block_size=case.block_size)
    nan_query = case.num_queries - case.block_size // 2 - 1
    q = _with_nan(q, (0, nan_query, 2, 0))
    selected = np.zeros((case.batch, case.num_heads), bool)
    selected[0, 1:3] = True
    out, lse, block_map = block_sparse_attention_with_block_map(
        q,
        k,
        v,
        layout,
        jnp.asarray(selected),
        implementation=implementation,
        interpret=interpret,
    )
    want_out, want_lse, probs = numpy_attention.attention(
        as_np(q), as_np(k), as_np(v), mask, case.block_size
    )
    want_map = numpy_attention.block_map(probs, case.num_keys, case.block_size)
    row = numpy_attention.block_index_of_query(case.num_queries, case.num_keys, case.block_size)[
        nan_query
    ]
    block_map = np.asarray(block_map, np.float64)
    assert np.isnan(block_map[0, 2, row][mask[0, 2, row]]).all()
    assert np.isnan(block_map).sum() == mask[0, 2, row].sum()
    tol = TOLERANCES[case.dtype]
    np.testing.assert_allclose(
        block_map, want_map * selected[..., None, None], atol=tol["block_map"]
    )
    np.testing.assert_allclose(as_np(out), want_out, atol=tol["out"], rtol=0)
    np.testing.assert_allclose(np.asarray(lse, np.float64), want_lse, atol=tol["lse"], rtol=0)
