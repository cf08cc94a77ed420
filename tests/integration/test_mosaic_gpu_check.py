"""The mosaic_gpu GPU check's battery harness judges results like the pytest battery does."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks import mosaic_gpu_check
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


def test_sweep_medians_groups_repeats_by_config_length_and_density():
    def row(config, density, ratio):
        return {
            "config": config,
            "seq_len": 32768,
            "target_density": density,
            "tflops_active": 600 * ratio,
            "vs_cudnn_tflops": ratio,
        }

    rows = [row("default", 0.1, r) for r in (0.85, 0.94, 0.86)] + [row("default", 0.2, 0.95)]
    summary = {s["target_density"]: s for s in mosaic_gpu_check.sweep_medians(rows)}
    assert summary[0.1]["repeats"] == 3
    assert summary[0.1]["vs_cudnn_median"] == 0.86
    assert (summary[0.1]["vs_cudnn_min"], summary[0.1]["vs_cudnn_max"]) == (0.85, 0.94)
    assert summary[0.1]["tflops_active"] == 600 * 0.86
    assert summary[0.2]["repeats"] == 1 and summary[0.2]["vs_cudnn_median"] == 0.95
