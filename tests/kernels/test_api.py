"""The public call: bad inputs give clear errors, and the registry falls through."""

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.block_sparse_attention import (
    BlockGeometry,
    block_sparse_attention,
    block_sparse_attention_with_block_map,
    causal_layout,
)
from tests.kernels import numpy_oracle
from tests.kernels.battery import as_np


def _inputs(rng, *, T=128, S=128, N=4, K=2, H=64, dtype=jnp.float32):
    draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
    return draw(1, T, N, H), draw(1, S, K, H), draw(1, S, K, H)


def _layout(T=128, S=128, N=4, block_size=64):
    return causal_layout(1, N, BlockGeometry(num_queries=T, num_keys=S, block_size=block_size))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda q, k, v: (q, k[..., :32], v[..., :32]), "disagree"),
        (lambda q, k, v: (q, k, v[:, :64]), "k and v shapes differ"),
        (lambda q, k, v: (q[:, :, :3], k, v), "multiple of kv heads"),
        (lambda q, k, v: (q[0], k, v), "expected q"),
        (lambda q, k, v: (q.astype(jnp.bfloat16), k, v), "dtypes differ"),
        (
            lambda q, k, v: (q.astype(jnp.int32), k.astype(jnp.int32), v.astype(jnp.int32)),
            "not supported",
        ),
        (lambda q, k, v: (jnp.concatenate([q, q], 1), k, v), "T <= S"),
    ],
)
def test_bad_inputs_raise(rng, change, message):
    q, k, v = change(*_inputs(rng))
    with pytest.raises(ValueError, match=message):
        block_sparse_attention(q, k, v, _layout(), implementation="xla")


def test_layout_for_other_heads_raises(rng):
    q, k, v = _inputs(rng)
    with pytest.raises(ValueError, match=r"\(B, N, Tb\)"):
        block_sparse_attention(q, k, v, _layout(N=2), implementation="xla")


def test_unknown_implementation_raises(rng):
    with pytest.raises(ValueError, match="unknown implementation"):
        block_sparse_attention(*_inputs(rng), _layout(), implementation="cuda_magic")


def test_unsupported_head_dim_explicit_raises_and_sequence_falls_through(rng):
    q, k, v = _inputs(rng, H=48)
    layout = _layout()
    with pytest.raises(ValueError, match="head dims"):
        block_sparse_attention(q, k, v, layout, implementation="triton", interpret=True)
    out = block_sparse_attention(q, k, v, layout, implementation=("triton", "xla"), interpret=True)
    want, _, _ = numpy_oracle.attention(
        as_np(q), as_np(k), as_np(v), np.ones((1, 4, 2, 2), bool), 64
    )
    np.testing.assert_allclose(as_np(out), want, atol=2e-5)


def test_mosaic_tpu_without_tpu_falls_through(rng):
    q, k, v = _inputs(rng)
    out = block_sparse_attention(q, k, v, _layout(), implementation=("mosaic_tpu", "xla"))
    want = block_sparse_attention(q, k, v, _layout(), implementation="reference")
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=2e-5)


def test_default_implementation_on_cpu_is_xla(rng):
    q, k, v = _inputs(rng)
    out = block_sparse_attention(q, k, v, _layout())
    want = block_sparse_attention(q, k, v, _layout(), implementation="xla")
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want))


def test_block_map_selection_checks(rng):
    q, k, v = _inputs(rng)
    with pytest.raises(ValueError, match="selected must be"):
        block_sparse_attention_with_block_map(q, k, v, _layout(), jnp.ones((4,), bool))
    with pytest.raises(ValueError, match="max_selected=2"):
        block_sparse_attention_with_block_map(
            q, k, v, _layout(), jnp.ones((1, 4), bool), max_selected=2
        )


def test_sm_scale_is_applied(rng):
    q, k, v = _inputs(rng)
    out = block_sparse_attention(q, k, v, _layout(), sm_scale=0.3, implementation="xla")
    want, _, _ = numpy_oracle.attention(
        as_np(q), as_np(k), as_np(v), np.ones((1, 4, 2, 2), bool), 64, scale=0.3
    )
    np.testing.assert_allclose(as_np(out), want, atol=2e-5)
