"""The battery, run for every implementation that can run on a CPU."""

import pytest

from tests.kernels.battery import TINY_CASES, Battery


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


@pytest.mark.gpu
class TestTritonGpu(Battery):
    """The same battery compiled for a real GPU (SHAREDSPARSE_TEST_PLATFORM=gpu)."""

    implementation = "triton"
    interpret = False
