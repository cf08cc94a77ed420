"""The mosaic_gpu GPU check: its default-implementation check, its paired timing, and its dry
run over shapes and launches."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import attention as bench
from benchmarks import cudnn_rounds, mosaic_gpu_check, timing
from pallas_kernels.block_sparse_attention import BlockGeometry


def test_paired_record_takes_ratios_within_rounds():
    """A clock change that slows kernel and cuDNN alike in one round leaves its ratio alone."""
    geometry = BlockGeometry(num_queries=1024, num_keys=1024, block_size=bench.BLOCK)
    layout, _ = bench.make_layout(geometry, 0.25)
    # The kernel's active FLOPs over cuDNN's causal FLOPs: at equal times, the ratio of rates.
    share = bench.active_flops(layout, geometry) / bench.causal_flops(1024)
    dense_times = [1.0, 1.0, 1.3, 1.0]  # round 2 ran at a lower clock
    times = [0.25, 0.25, 0.325, 0.5]  # round 3: the kernel alone was slow
    row = cudnn_rounds.paired_record(layout, geometry, 0.25, times, dense_times)
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


def test_back_to_back_runs_its_calls_in_one_program_each_on_the_last_output():
    program, calls = timing.back_to_back(lambda x: x + 1.0, jnp.zeros(()), min_seconds=10.0,
                                         max_calls=5)  # fmt: skip
    assert calls == 5 and float(program()) == 5.0
    program, calls = timing.back_to_back(lambda x: x * 2.0, jnp.ones(()), min_seconds=0.0)
    assert calls == 1 and float(program()) == 2.0


def test_default_checks_on_the_cpu():
    """On a CPU `implementation=None` is xla: the same kernel, so the distance is 0."""
    records = mosaic_gpu_check.default_checks()
    assert [r["check"] for r in records] == [
        "default vs xla (bfloat16)",
        "default vs xla (float32)",
    ]
    assert all(r["max_abs_err"] == 0.0 for r in records)


def test_empty_rows_checks_on_the_cpu():
    """The dry run's cells (one kv head, S = 300): each selection of each shape, checked."""
    records = mosaic_gpu_check.empty_rows_checks(dry_run=True)
    assert [r["check"] for r in records] == [
        f"block-map launch, {name} selected, {shape}, S=300"
        for shape in ("7/1/64", "4/1/128")
        for name in ("every head", "a middle head")
    ]
    assert all(r["max_abs_err"] == 0.0 for r in records)


def test_shapes_parse_as_n_k_h():
    assert bench.Shape.parse("14/2/64") == bench.Shape(num_heads=14, num_kv_heads=2, head_dim=64)
    assert str(bench.Shape.parse("9/3/64")) == "9/3/64"
    run = mosaic_gpu_check.ShapeRun.parse("9/3/64:8192,32768")
    assert run.seq_lens == (8192, 32768) and run.lengths([1]) == (8192, 32768)
    assert mosaic_gpu_check.ShapeRun.parse("9/3/64").lengths([4096]) == (4096,)
    for bad in ("14/3/64", "14-2-64", "14/2"):
        with pytest.raises(ValueError):
            bench.Shape.parse(bad)


@pytest.mark.parametrize("density", [0.4, 0.1])
def test_random_layouts_list_sink_diagonal_and_their_density(density):
    geometry = BlockGeometry(num_queries=16384, num_keys=16384, block_size=bench.BLOCK)
    mask = np.asarray(bench.random_mask(geometry, 3, density, seed=7))[0]  # [N, Tb, Sb]
    diagonal = geometry.diagonal_blocks()
    causal = np.arange(geometry.num_k_blocks)[None, :] <= diagonal[:, None]
    assert not (mask & ~causal).any()
    assert mask[:, :, 0].all() and mask[:, np.arange(len(diagonal)), diagonal].all()
    assert mask.sum() / (3 * causal.sum()) == pytest.approx(density, abs=0.01)
    layout, _ = bench.make_layout(
        geometry, density, num_heads=3, pattern="random", max_blocks=geometry.num_k_blocks
    )
    assert layout.max_blocks == geometry.num_k_blocks
    assert float(layout.density(geometry).mean()) == pytest.approx(density, abs=0.01)


SHAPE_KEYS = {"num_heads", "num_kv_heads", "head_dim", "shape"}


def test_dry_run_checks_and_sweeps_each_shape(tmp_path):
    """The head-dim-64 sweep's command at tiny sizes: each launch checked against the reference
    at the check shape, then timed at every shape (its GQA group over one kv head) where it
    fits; every record carries its shape."""
    out = tmp_path / "sweep.json"
    records = mosaic_gpu_check.main(
        ["--dry-run", "--skip", "checks", "compare", "--layout", "random",
         "--shapes", "9/3/64:8192,32768", "32/8/128:32768", "--check-shapes", "9/3/64",
         "--sweep-densities", "0.4", "--sweep-configs", "default", "q2_s6", "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["records"] == records and saved["environment"]["dry_run"] is True
    assert [r for r in records if r["kind"] == "failure"] == []
    assert all(SHAPE_KEYS <= r.keys() for r in records)
    checks = [r for r in records if r["kind"] == "check"]
    assert [(r["config"], r["target_density"]) for r in checks] == [
        ("default", 0.1),
        ("q2_s6", 0.1),
        ("default", 1.0),
        ("q2_s6", 1.0),
    ]
    assert all(r["passed"] and r["shape"] == "3/1/64" and r["seq_len"] == 300 for r in checks)
    (skipped,) = [r for r in records if r["kind"] == "skipped"]
    assert (skipped["config"], skipped["shape"]) == ("q2_s6", "4/1/128")  # 6 stages of 32 KB
    sweep = [r for r in records if r["kind"] == "sweep"]
    launches = [(r["shape"], r["config"], r["num_stages"], r["q_tiles"]) for r in sweep]
    # Head dim 64 over 3 query blocks runs one item per CTA by default (default_config).
    assert launches == [("3/1/64", "default", 2, 1), ("3/1/64", "q2_s6", 6, 2),
                        ("4/1/128", "default", 2, 2)]  # fmt: skip
    for row in sweep:
        assert row["seq_len"] == 300 and row["rounds"] == 1 and row["time_ms"] > 0
        assert row["diff_against"] == "default" and row["max_abs_diff"] < 0.05
        assert row["calls_per_program"] == row["dense_calls_per_program"] == 1  # a dry run


def test_a_spent_budget_skips_every_cell_and_still_writes(tmp_path):
    out = tmp_path / "sweep.json"
    records = mosaic_gpu_check.main(
        ["--dry-run", "--skip", "checks", "--budget-s", "0", "--shapes", "14/2/64",
         "--check-shapes", "14/2/64", "--densities", "1.0", "--sweep-densities", "1.0", "0.1",
         "--out", str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text())["records"] == records
    assert all(r["kind"] == "skipped" and r["reason"] == "budget" for r in records)
    assert [(r["section"], r["target_density"]) for r in records] == [
        ("config_checks", 0.1),
        ("config_checks", 1.0),
        ("compare", 1.0),
        ("sweep", 1.0),
        ("sweep", 0.1),
    ]
    assert {r["shape"] for r in records} == {"7/1/64"}


def test_dry_run_compares_the_recording_launches(tmp_path):
    """--recording: each backend's launch with block LSEs is timed beside its plain launch and
    its output agrees with cuDNN's on a full causal layout."""
    records = mosaic_gpu_check.main(
        ["--dry-run", "--skip", "checks", "sweep", "--recording", "--shapes", "14/2/64",
         "--densities", "1.0", "--out", str(tmp_path / "compare.json")]
    )  # fmt: skip
    assert [r for r in records if r["kind"] == "failure"] == []
    rows = [r for r in records if r["kind"] == "compare"]
    assert [(r["implementation"], r["config"]) for r in rows] == [
        ("mosaic_gpu", "default"),
        ("triton", "default"),
        ("mosaic_gpu", "block_lse"),
        ("triton", "block_lse"),
    ]
    assert all(r["diff_against"] == "cudnn" and r["max_abs_diff"] < 0.05 for r in rows)
