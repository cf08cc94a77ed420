"""The mosaic_gpu GPU check's battery harness judges results like the pytest battery does."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import pytest

from benchmarks import attention as bench
from benchmarks import mosaic_gpu_check, timing
from pallas_kernels.block_sparse_attention import BlockGeometry
from tests.kernels import battery

MAP_JOBS = [case for case, with_maps in mosaic_gpu_check.battery_jobs() if with_maps]


@pytest.mark.parametrize("case", MAP_JOBS, ids=[c.name for c in MAP_JOBS])
def test_map_cases_pass_with_the_reference(case):
    """Exact maps pass: only the selected heads are compared (the others are zero by design)."""
    record = mosaic_gpu_check.battery_case(case, True, implementation="reference")
    assert record["passed"], record
    assert record["map_unselected"] == 0 and record["map_unlisted"] == 0
    assert record["map_err"] < 1e-4 and record["map_row_sum_err"] < 1e-5


def test_wrong_maps_fail(monkeypatch):
    """A map that is off on a selected head, or nonzero on an unselected one, fails the case."""
    case = MAP_JOBS[0]
    real = mosaic_gpu_check.block_sparse_attention_with_block_map

    def skewed(*args, **kwargs):
        out, lse, block_map = real(*args, **kwargs)
        return out, lse, block_map.at[0, -1, 0, 0].add(0.5)  # head [0, -1] is always selected

    monkeypatch.setattr(mosaic_gpu_check, "block_sparse_attention_with_block_map", skewed)
    record = mosaic_gpu_check.battery_case(case, True, implementation="reference")
    assert not record["passed"] and record["map_err"] >= 0.5

    def leaked(*args, **kwargs):
        out, lse, block_map = real(*args, **kwargs)
        return out, lse, block_map + 0.25 * (block_map == 0)  # every unselected head too

    monkeypatch.setattr(mosaic_gpu_check, "block_sparse_attention_with_block_map", leaked)
    record = mosaic_gpu_check.battery_case(case, True, implementation="reference")
    assert not record["passed"] and record["map_unselected"] == 0.25


@pytest.mark.slow
def test_map_case_passes_with_mosaic_gpu_interpret():
    """The harness's maps path through mosaic_gpu (main launch) and Triton (map launch)."""
    case = dataclasses.replace(
        next(c for c in MAP_JOBS if c.name == "ragged_T"), batch=1, num_heads=2, num_kv_heads=1
    )
    record = mosaic_gpu_check.battery_case(case, True, interpret=True)
    assert record["passed"], record
    assert battery.TOLERANCES[case.dtype]["block_map"] >= record["map_err"]


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
