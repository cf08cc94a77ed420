"""The public call: bad inputs give clear errors, and the registry falls through."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.block_sparse_attention import (
    BlockGeometry,
    api,
    block_sparse_attention,
    block_sparse_attention_with_block_map,
    causal_layout,
)
from tests.kernels.battery import as_np
from tests.oracle import numpy_attention


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
    want, _, _ = numpy_attention.attention(
        as_np(q), as_np(k), as_np(v), np.ones((1, 4, 2, 2), bool), 64
    )
    np.testing.assert_allclose(as_np(out), want, atol=2e-5)


@pytest.mark.parametrize("block_size", [8, 48])
def test_untileable_block_size_explicit_triton_raises_and_sequence_falls_through(rng, block_size):
    """Triton tiles power-of-two blocks of 16 rows or more; others fall through to xla, for the
    attention and for the block-map launch alike."""
    T = 100
    q, k, v = _inputs(rng, T=T, S=T)
    layout = _layout(T=T, S=T, block_size=block_size)
    with pytest.raises(ValueError, match="triton: .*power-of-two block size >= 16"):
        block_sparse_attention(q, k, v, layout, implementation="triton", interpret=True)
    out = block_sparse_attention(q, k, v, layout, implementation=("triton", "xla"), interpret=True)
    num_blocks = -(-T // block_size)
    mask = np.ones((1, 4, num_blocks, num_blocks), bool)
    want_out, _, probs = numpy_attention.attention(as_np(q), as_np(k), as_np(v), mask, block_size)
    np.testing.assert_allclose(as_np(out), want_out, atol=2e-5)
    out, _, block_map = block_sparse_attention_with_block_map(
        q, k, v, layout, jnp.ones((1, 4), bool), implementation=("triton", "xla"), interpret=True
    )
    np.testing.assert_allclose(as_np(out), want_out, atol=2e-5)
    want_map = numpy_attention.block_map(probs, T, block_size)
    np.testing.assert_allclose(np.asarray(block_map), want_map, atol=1e-6)


def test_triton_without_gpu_falls_through(rng):
    q, k, v = _inputs(rng)
    with pytest.raises(ValueError, match="triton: triton backend needs a GPU"):
        block_sparse_attention(q, k, v, _layout(), implementation="triton")
    out = block_sparse_attention(q, k, v, _layout(), implementation=("triton", "xla"))
    want = block_sparse_attention(q, k, v, _layout(), implementation="xla")
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want))


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
    want, _, _ = numpy_attention.attention(
        as_np(q), as_np(k), as_np(v), np.ones((1, 4, 2, 2), bool), 64, scale=0.3
    )
    np.testing.assert_allclose(as_np(out), want, atol=2e-5)


@pytest.mark.parametrize("sm_scale", [0.0, -0.125, float("nan"), float("inf"), -float("inf")])
def test_sm_scale_must_be_finite_and_positive(rng, sm_scale):
    q, k, v = _inputs(rng)
    with pytest.raises(ValueError, match=f"sm_scale must be finite and positive, got {sm_scale}"):
        block_sparse_attention(q, k, v, _layout(), sm_scale=sm_scale, implementation="xla")
    with pytest.raises(ValueError, match="sm_scale must be finite and positive"):
        block_sparse_attention_with_block_map(
            q, k, v, _layout(), jnp.ones((1, 4), bool), sm_scale=sm_scale
        )


def _default_kernel(monkeypatch, *, capability="9.0", dtype=jnp.bfloat16, H=128, bs=128):
    """Which kernel `implementation=None` traces on a (pretended) GPU of this capability.

    Tracing needs no GPU: each backend's support check runs, the chosen one's kernel is traced.
    """
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    device = types.SimpleNamespace(compute_capability=capability, device_kind="NVIDIA H200")
    monkeypatch.setattr(jax, "devices", lambda *args: [device])
    T = 300
    geometry = BlockGeometry(num_queries=T, num_keys=T, block_size=bs)
    layout = causal_layout(1, 4, geometry)
    q = jax.ShapeDtypeStruct((1, T, 4, H), dtype)
    kv = jax.ShapeDtypeStruct((1, T, 2, H), dtype)
    # The jitted call caches its trace by shapes and statics, not by device: start afresh.
    api._attention.clear_cache()
    try:
        trace = jax.make_jaxpr(lambda q, k, v: block_sparse_attention(q, k, v, layout))
        jaxpr = str(trace(q, kv, kv))
    finally:
        api._attention.clear_cache()
    if "block_sparse_attention_mgpu" in jaxpr:
        return "mosaic_gpu"
    return "triton" if "pallas_call" in jaxpr else "xla"


def test_default_on_gpu_tries_mosaic_gpu_then_triton(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert api._candidates(None) == ("mosaic_gpu", "triton", "xla")


@pytest.mark.parametrize(
    ("settings", "want"),
    [
        ({}, "mosaic_gpu"),  # Hopper, bf16, H 128, bs 128
        ({"dtype": jnp.float16, "H": 64, "bs": 64}, "mosaic_gpu"),
        ({"dtype": jnp.float32}, "triton"),  # mosaic_gpu has no f32
        ({"H": 32}, "triton"),  # nor head dim 32
        ({"bs": 32}, "triton"),  # nor blocks under 64 rows
        ({"capability": "8.0"}, "triton"),  # Ampere
        ({"capability": "10.0"}, "triton"),  # Blackwell: no wgmma
    ],
)
def test_default_on_gpu_picks_mosaic_gpu_only_where_it_runs(monkeypatch, settings, want):
    assert _default_kernel(monkeypatch, **settings) == want


def test_default_maps_on_hopper_run_mosaic_gpu(monkeypatch):
    """Both launches, the main one and the selected heads' recording one, on mosaic_gpu."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    device = types.SimpleNamespace(compute_capability="9.0", device_kind="NVIDIA H200")
    monkeypatch.setattr(jax, "devices", lambda *args: [device])
    layout = _layout(T=256, S=256)
    q = jax.ShapeDtypeStruct((1, 256, 4, 64), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 256, 2, 64), jnp.bfloat16)
    selected = jax.ShapeDtypeStruct((1, 4), jnp.bool_)

    def run(q, k, v, selected):
        return block_sparse_attention_with_block_map(q, k, v, layout, selected, max_selected=2)

    jaxpr = str(jax.make_jaxpr(run)(q, kv, kv, selected))
    # Mosaic GPU's kernel shows by its name, Triton's as a pallas_call.
    assert jaxpr.count("name=block_sparse_attention_mgpu") == 2 and "pallas_call" not in jaxpr
