"""The battery, run for every implementation that can run on a CPU."""

import dataclasses

import jax.numpy as jnp
import pytest

from tests.kernels.battery import CASES, TINY_CASES, Battery


class TestReference(Battery):
    implementation = "reference"


class TestXla(Battery):
    implementation = "xla"


class TestTritonInterpret(Battery):
    implementation = "triton"


@pytest.mark.tpu_interpret
class TestMosaicTpuInterpret(Battery):
    implementation = "mosaic_tpu"
    cases = map_cases = TINY_CASES
    smoke_cases = TINY_CASES[:1]


def _in_16_bits(cases):
    """The battery's cases with float32 inputs switched to bf16 / f16 (mosaic_gpu has no f32)."""
    dtypes = (jnp.bfloat16, jnp.float16)
    return tuple(
        dataclasses.replace(c, dtype=dtypes[i % 2]) if c.dtype == jnp.float32 else c
        for i, c in enumerate(cases)
    )


def _smaller(case):
    """One batch element and half the heads (same group size): interpret mode is slow."""
    heads = (case.num_heads // 2, case.num_kv_heads // 2) if case.num_kv_heads % 2 == 0 else None
    num_heads, num_kv_heads = heads or (case.num_heads, case.num_kv_heads)
    return dataclasses.replace(case, batch=1, num_heads=num_heads, num_kv_heads=num_kv_heads)


MOSAIC_GPU_CASES = _in_16_bits(CASES)


@pytest.mark.slow
class TestMosaicGpuInterpret(Battery):
    """Mosaic GPU interpret mode (simulated warpgroups, TMA, barriers and wgmma on the CPU)."""

    implementation = "mosaic_gpu"
    cases = tuple(map(_smaller, MOSAIC_GPU_CASES))
    map_cases = tuple(map(_smaller, _in_16_bits(Battery.map_cases)))
    smoke_cases = cases[:1]


@pytest.mark.gpu
class TestMosaicGpu(Battery):
    """The battery compiled for a real Hopper GPU (SHAREDSPARSE_TEST_PLATFORM=gpu)."""

    implementation = "mosaic_gpu"
    interpret = False
    cases = MOSAIC_GPU_CASES
    map_cases = _in_16_bits(Battery.map_cases)
    smoke_cases = _in_16_bits(Battery.smoke_cases)


@pytest.mark.gpu
class TestTritonGpu(Battery):
    """The same battery compiled for a real GPU (SHAREDSPARSE_TEST_PLATFORM=gpu)."""

    implementation = "triton"
    interpret = False
