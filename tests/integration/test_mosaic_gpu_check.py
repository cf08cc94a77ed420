"""The mosaic_gpu GPU check: its default-implementation check and its paired timing."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from benchmarks import attention as bench
from benchmarks import mosaic_gpu_check, timing
from pallas_kernels.block_sparse_attention import BlockGeometry


def test_paired_record_takes_ratios_within_rounds():
    """A clock change that slows kernel and cuDNN alike in one round leaves its ratio alone."""
    geometry = BlockGeometry(num_queries=1024, num_keys=1024, block_size=bench.BLOCK)
    layout, _ = bench.make_layout(geometry, 0.25)
    # The kernel's active FLOPs over cuDNN's causal FLOPs: at equal times, the ratio of rates.
    share = bench.active_flops(layout, geometry) / bench.causal_flops(1024)
    dense_times = [1.0, 1.0, 1.3, 1.0]  # round 2 ran at a lower clock
    times = [0.25, 0.25, 0.325, 0.5]  # round 3: the kernel alone was slow
    row = mosaic_gpu_check.paired_record(layout, geometry, 0.25, times, dense_times)
    assert row["rounds"] == 4
    assert row["vs_cudnn_rounds"] == pytest.approx([share * 4, share * 4, share * 4, share * 2])
    assert row["vs_cudnn_median"] == pytest.approx(share * 4)
    assert row["vs_cudnn_min"] == pytest.approx(share * 2)
    assert row["time_ms"] == pytest.approx(287.5) and row["dense_time_ms"] == pytest.approx(1000)


def test_time_rounds_interleaves_rotates_and_reverses():
    """One sample per function per round; round r starts with function r % n, reversed in every
    other block of n rounds, so that each function follows each other one."""
    calls = []

    def recorder(name):
        def fn():
            calls.append(name)
            return jnp.zeros(())

        return fn

    samples = timing.time_rounds(
        [recorder("a"), recorder("b"), recorder("c")], rounds=6, warmup=0, min_batch_seconds=0.0
    )
    assert len(samples) == 6 and all(len(row) == 3 and min(row) > 0 for row in samples)
    timed = "".join(calls[3:])  # after one sizing call each
    assert timed == "abcbcacabcbaacbbac"
    followers = {timed[i : i + 2] for i in range(len(timed) - 1)}
    assert {x + y for x in "abc" for y in "abc" if x != y} <= followers


def test_default_checks_on_the_cpu():
    """On a CPU `implementation=None` is xla: the same kernel, so the distance is 0."""
    records = mosaic_gpu_check.default_checks()
    assert [r["check"] for r in records] == [
        "default vs xla (bfloat16)",
        "default vs xla (float32)",
    ]
    assert all(r["max_abs_err"] == 0.0 for r in records)
