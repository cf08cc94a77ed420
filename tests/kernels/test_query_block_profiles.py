"""query_block_profiles: every implementation against a NumPy restatement of the definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.query_block_profiles import query_block_profiles, triton
from tests.kernels.test_lowering import lower_for


def numpy_profiles(q, k, query_start):
    """float64 column and diagonal profiles, one query at a time, from the definition."""
    batch, num_queries, num_heads, _ = q.shape
    num_keys, group = k.shape[1], num_heads // k.shape[2]
    column = np.zeros((batch, num_heads, num_keys))
    diagonal = np.zeros((batch, num_heads, num_keys))
    for b in range(batch):
        for n in range(num_heads):
            for i in range(num_queries):
                pos = int(query_start[b]) + i
                visible = min(pos + 1, num_keys)
                scores = k[b, :visible, n // group] @ q[b, i, n]
                p = np.exp(scores - scores.max())
                p /= p.sum()
                column[b, n, :visible] += p / num_queries
                for d in range(pos + 1):
                    if pos - d < visible:
                        diagonal[b, n, d] += p[pos - d] / num_queries
    return column, diagonal


def _inputs(rng, batch, num_queries, num_keys, num_heads, num_kv_heads, head_dim, dtype):
    q = rng.standard_normal((batch, num_queries, num_heads, head_dim)) * 0.4
    k = rng.standard_normal((batch, num_keys, num_kv_heads, head_dim))
    k[:, 0] += 2.0  # a sink, so that the profiles are far from uniform
    return jnp.asarray(q, dtype), jnp.asarray(k, dtype)


CASES = {
    # name: (B, Q, S, query starts, N, K, H)
    "one_tile_gqa1": (1, 16, 100, [84], 2, 2, 32),
    "ragged_gqa4": (1, 32, 333, [301], 4, 1, 64),
    "batch_runs": (2, 16, 700, [684, 250], 4, 2, 32),
}


def _check_float32(implementation, shape, rng):
    batch, num_queries, num_keys, starts, num_heads, num_kv_heads, head_dim = CASES[shape]
    q, k = _inputs(rng, batch, num_queries, num_keys, num_heads, num_kv_heads, head_dim, "float32")
    start = jnp.asarray(starts, jnp.int32)
    if implementation == "xla":
        column, diagonal = query_block_profiles(q, k, start, implementation="xla")
    else:  # several runs of two tiles per program
        column, diagonal = triton.profiles(
            q,
            k,
            start,
            interpret=implementation == "triton_interpret",
            config=triton.TritonConfig(tiles_per_program=2),
        )
    want_column, want_diagonal = numpy_profiles(np.asarray(q, np.float64), np.asarray(k), starts)
    np.testing.assert_allclose(column, want_column, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(diagonal, want_diagonal, rtol=1e-5, atol=1e-7)
    assert column.shape == diagonal.shape == (batch, num_heads, num_keys)


@pytest.mark.parametrize("implementation", ["xla", "triton_interpret"])
@pytest.mark.parametrize("shape", list(CASES), ids=list(CASES))
def test_float32_profiles_match_the_definition(implementation, shape, rng):
    _check_float32(implementation, shape, rng)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", list(CASES), ids=list(CASES))
def test_float32_triton_profiles_on_gpu(shape, rng):
    _check_float32("triton", shape, rng)


def test_bfloat16_triton_equals_xla(rng):
    """16-bit inputs: both round the scores to bf16 and keep float32 statistics."""
    q, k = _inputs(rng, 1, 32, 1100, 4, 2, 64, jnp.bfloat16)
    start = jnp.asarray([1068], jnp.int32)
    got = query_block_profiles(q, k, start, implementation="triton", interpret=True)
    want = query_block_profiles(q, k, start, implementation="xla")
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == jnp.float32
        np.testing.assert_allclose(g, w, rtol=2e-3, atol=1e-6)
        np.testing.assert_allclose(g.sum(-1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("implementation", ["xla", "triton"])
def test_nan_query_reaches_only_what_it_sees(implementation, rng):
    """A NaN query makes the column profile NaN on the keys it sees and the diagonal profile NaN
    on the offsets it sees; the keys and offsets it does not see keep the other queries' mean."""
    q, k = _inputs(rng, 1, 16, 100, 2, 1, 32, "float32")
    start = 84
    q = q.at[0, 3, 1, 0].set(jnp.nan)  # position 87: sees keys 0 .. 87, offsets 0 .. 87
    column, diagonal = query_block_profiles(
        q, k, jnp.asarray([start], jnp.int32), implementation=implementation, interpret=True
    )
    want_column, want_diagonal = numpy_profiles(np.asarray(q, np.float64), np.asarray(k), [start])
    assert np.isnan(want_column[0, 1, :88]).all() and not np.isnan(want_column[0, 1, 88:]).any()
    assert not np.isnan(want_column[0, 0]).any()
    np.testing.assert_allclose(column, want_column, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(diagonal, want_diagonal, rtol=1e-5, atol=1e-7)


def test_triton_without_gpu_falls_through_to_xla(rng):
    q, k = _inputs(rng, 1, 16, 100, 2, 1, 32, "float32")
    start = jnp.asarray([84], jnp.int32)
    with pytest.raises(ValueError, match="triton profiles need a GPU"):
        query_block_profiles(q, k, start, implementation="triton")
    got = query_block_profiles(q, k, start, implementation=("triton", "xla"))
    want = query_block_profiles(q, k, start, implementation="xla")
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_float64_falls_through_to_xla(rng):
    with jax.enable_x64(True):
        q, k = _inputs(rng, 1, 16, 64, 2, 1, 16, jnp.float64)
        start = jnp.asarray([48], jnp.int32)
        column, diagonal = query_block_profiles(q, k, start, implementation=("triton", "xla"))
        assert column.dtype == jnp.float64
        with pytest.raises(ValueError, match="triton profiles support"):
            query_block_profiles(q, k, start, implementation="triton")
    want_column, want_diagonal = numpy_profiles(np.asarray(q), np.asarray(k), [48])
    np.testing.assert_allclose(column, want_column, rtol=1e-12)
    np.testing.assert_allclose(diagonal, want_diagonal, rtol=1e-12)


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "dtypes", "start_shape", "message"),
    [
        ((1, 16, 4, 32), (1, 64, 3, 32), ("float32",) * 2, (1,), "multiple of kv heads"),
        ((1, 16, 4, 32), (2, 64, 2, 32), ("float32",) * 2, (1,), "disagree on batch"),
        ((1, 16, 4, 32), (1, 64, 2, 32), ("float32", "bfloat16"), (1,), "share a float"),
        ((1, 16, 4, 32), (1, 64, 2, 32), ("float32",) * 2, (2,), "query_start must be"),
        ((16, 4, 32), (1, 64, 2, 32), ("float32",) * 2, (1,), "expected q"),
    ],
)
def test_bad_inputs_are_refused(q_shape, k_shape, dtypes, start_shape, message):
    q = jnp.zeros(q_shape, dtypes[0])
    k = jnp.zeros(k_shape, dtypes[1])
    with pytest.raises(ValueError, match=message):
        query_block_profiles(q, k, jnp.zeros(start_shape, jnp.int32))


def test_unknown_implementation_is_refused():
    q, k = jnp.zeros((1, 16, 2, 32)), jnp.zeros((1, 64, 2, 32))
    with pytest.raises(ValueError, match="unknown implementation"):
        query_block_profiles(q, k, jnp.zeros((1,), jnp.int32), implementation="mosaic_gpu")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_triton_profiles_lower_for_cuda(dtype, monkeypatch):
    # The supported-check refuses to run without a GPU; lowering needs none.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    q = jax.ShapeDtypeStruct((1, 128, 32, 128), dtype)
    k = jax.ShapeDtypeStruct((1, 4000, 8, 128), dtype)
    start = jax.ShapeDtypeStruct((1,), jnp.int32)
    text = lower_for(lambda q, k, s: triton.profiles(q, k, s), "cuda", "NVIDIA H200", q, k, start)
    assert "query_block_scores" in text and "query_block_profiles" in text
