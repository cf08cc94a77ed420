"""The Pallas kernels lower for the real targets (Triton and Mosaic GPU for CUDA, Mosaic for TPU).

Interpret mode does not check the targets' rules (power-of-two Triton shapes, TPU tiling), so
each kernel is also lowered for its platform against an abstract device.
"""

import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractDevice, AbstractMesh

from benchmarks import mosaic_gpu_check
from pallas_kernels.block_sparse_attention import (
    BlockGeometry,
    BlockLayout,
    mosaic_gpu,
    mosaic_gpu_config,
    mosaic_tpu,
    triton,
)


def _abstract(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


def _specs(T, S, N, K, H, bs, M, dtype):
    g = BlockGeometry(num_queries=T, num_keys=S, block_size=bs)
    layout = BlockLayout(
        _abstract((1, N, g.num_q_blocks, M), jnp.int32),
        _abstract((1, N, g.num_q_blocks), jnp.int32),
        bs,
    )
    q = _abstract((1, T, N, H), dtype)
    kv = _abstract((1, S, K, H), dtype)
    return g, layout, q, kv


def lower_for(fn, platform, device_kind, *args):
    mesh = AbstractMesh(
        (),
        (),
        abstract_device=AbstractDevice(
            device_kind=device_kind, platform="gpu" if platform == "cuda" else platform, num_cores=1
        ),
    )
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("with_maps", [False, True])
@pytest.mark.parametrize(
    ("H", "dtype"), [(64, jnp.bfloat16), (128, jnp.float16), (128, jnp.float32)]
)
def test_triton_lowers_for_cuda(with_maps, H, dtype, monkeypatch):
    # The supported-check refuses to run without a GPU; lowering needs none.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    text = lower_attention(triton, "cuda", HOPPER, H=H, dtype=dtype, with_block_lse=with_maps)
    assert "__gpu$xla.gpu.triton" in text


HOPPER = "NVIDIA H100 80GB HBM3"


def lower_attention(
    backend, platform, device_kind, *, S=1300, H=128, bs=128, dtype=jnp.bfloat16, **options
):
    """The lowering's text of `backend.attention` (causal) at a small shape: T = 1000 queries,
    S keys, N = 4, K = 2, 7 listed blocks per row; `options` go to the backend (with_block_lse
    defaults to False)."""
    g, layout, q, kv = _specs(T=1000, S=S, N=4, K=2, H=H, bs=bs, M=7, dtype=dtype)
    options = {"with_block_lse": False} | options

    def run(q, k, v, layout):
        return backend.attention(q, k, v, layout, sm_scale=0.1, causal=True, geometry=g, **options)

    return lower_for(run, platform, device_kind, q, kv, kv, layout)


@pytest.mark.parametrize("with_maps", [False, True])
def test_mosaic_tpu_lowers_for_tpu(with_maps, monkeypatch):
    # The supported-check refuses to run without a TPU; lowering needs none.
    monkeypatch.setattr(mosaic_tpu, "check_supported", lambda *args: None)
    text = lower_attention(mosaic_tpu, "tpu", "TPU v5p", S=1000, with_block_lse=with_maps)
    assert "tpu_custom_call" in text


@pytest.fixture
def lower_mosaic_gpu(monkeypatch):
    """lower(H, bs, dtype, config) -> lower_attention's text for mosaic_gpu on Hopper. The
    supported-check looks for a Hopper device; lowering needs none."""
    monkeypatch.setattr(mosaic_gpu, "check_supported", lambda *args: None)

    def lower(H, bs, dtype, config, with_block_lse=False):
        return lower_attention(
            mosaic_gpu,
            "cuda",
            HOPPER,
            H=H,
            bs=bs,
            dtype=dtype,
            config=config,
            with_block_lse=with_block_lse,
        )

    return lower


@pytest.mark.parametrize(
    ("H", "bs", "dtype", "config"),
    [
        (128, 128, jnp.bfloat16, None),  # two compute warpgroups, 2 stages, persistent, 2 Q tiles
        (64, 64, jnp.float16, None),  # one compute warpgroup, 3 stages
        (256, 128, jnp.bfloat16, None),  # one stage fits
        (128, 128, jnp.float16, mosaic_gpu.MosaicGpuConfig(num_stages=1, num_compute_wgs=1)),
        (128, 128, jnp.bfloat16, mosaic_gpu.MosaicGpuConfig(use_schedule_barrier=False)),
        (128, 128, jnp.bfloat16, mosaic_gpu.MosaicGpuConfig()),  # one item per CTA
        (128, 128, jnp.bfloat16, mosaic_gpu.MosaicGpuConfig(num_stages=3)),  # 7 tiles of 32 KB
        (64, 64, jnp.float16, mosaic_gpu.MosaicGpuConfig(q_tiles=2, num_programs=3)),
        # Persistent, three Q/O tiles and two stages: 7 tiles of 32 KB.
        (128, 128, jnp.bfloat16, mosaic_gpu.MosaicGpuConfig(q_tiles=3)),
    ],
)
def test_mosaic_gpu_lowers_for_hopper(H, bs, dtype, config, lower_mosaic_gpu):
    """Pallas-to-Mosaic-GPU lowering (layouts, wgmma shapes, transforms) of the hardware path."""
    assert "mosaic_gpu" in lower_mosaic_gpu(H, bs, dtype, config)


@pytest.mark.parametrize(("H", "bs"), [(128, 128), (64, 128), (64, 64)])
def test_mosaic_gpu_block_map_launch_lowers_for_hopper(H, bs, lower_mosaic_gpu):
    """The recording launch: block LSEs stored from registers straight to global memory."""
    text = lower_mosaic_gpu(H, bs, jnp.bfloat16, None, with_block_lse=True)
    assert "mosaic_gpu" in text


@pytest.mark.parametrize("launch", mosaic_gpu_check.HEAD_DIM_64_CONFIGS)
def test_mosaic_gpu_head_dim_64_launches_lower_for_hopper(launch, lower_mosaic_gpu):
    """Every launch the head-dim-64 sweep times (benchmarks/mosaic_gpu_check.py), H 64, bs 128."""
    config = dict(mosaic_gpu_check.SWEEP_CONFIGS)[launch]
    assert "mosaic_gpu" in lower_mosaic_gpu(64, 128, jnp.bfloat16, config)


@pytest.mark.parametrize(
    "config",
    [
        mosaic_gpu.MosaicGpuConfig(num_stages=3, q_tiles=3),
        mosaic_gpu.MosaicGpuConfig(num_stages=4, q_tiles=1),
    ],
)
def test_mosaic_gpu_smem_bytes_is_what_the_lowering_allocates(config, lower_mosaic_gpu):
    """Over the limit, Pallas Mosaic GPU's lowering names the shared memory the kernel needs:
    smem_bytes (the supported-check's and default_config's budget) must be that number."""
    with pytest.raises(ValueError, match=r"smem_bytes=(\d+)") as error:
        lower_mosaic_gpu(128, 128, jnp.bfloat16, config)
    needed = int(re.search(r"smem_bytes=(\d+)", str(error.value)).group(1))
    assert needed == mosaic_gpu_config.smem_bytes(128, 128, config)
