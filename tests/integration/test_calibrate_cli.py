"""sharedsparse-calibrate end to end on a tiny random model at two lengths, and length bands."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from evaluation.calibration_windows import Sample, collect_all
from evaluation.windows import Window
from models.collect import BlockMapCollector
from models.sources import load_source
from sharedsparse_cli import calibrate
from sharedsparse_jax.calibrate import length_bands
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.sharing import SharingTable
from tests.integration import helpers


@pytest.fixture(scope="module")
def calibrate_script():
    return calibrate


def test_length_bands_merge_equal_neighbours():
    a, b = np.array([True, False, False]), np.array([False, True, False])
    bounds, rows = length_bands([1024, 4096, 16384, 32768], [a, a, b, b])
    assert bounds == (0, 8192)  # the geometric mean of 4096 and 16384
    np.testing.assert_array_equal(rows, [a, b])
    bounds, rows = length_bands([4096, 8192], [a, a])
    assert bounds == (0,) and rows.shape == (1, 3)
    with pytest.raises(ValueError, match="increase"):
        length_bands([8192, 4096], [a, a])


def test_calibrate_at_two_lengths(calibrate_script, tmp_path, capsys):
    """At 1024 and 2048 tokens, the longer past the model's trained 1024 with YaRN x2."""
    checkpoint = helpers.save_tiny_checkpoint(tmp_path / "tiny", max_position_embeddings=1024)
    out_dir = tmp_path / "out"
    argv = [
        "--checkpoint", str(checkpoint), "--lengths", "2048", "1024", "--samples", "2",
        "--heldout", "1", "--second-length", "512", "--map-block-size", "64",
        "--implementation", "xla", "--work-dir", str(tmp_path / "maps"),
        "--out-dir", str(out_dir),
    ]  # fmt: skip
    with pytest.raises(SystemExit, match=r"context of 1024 tokens \(--yarn-factor extends it\)"):
        calibrate_script.main(argv)
    calibrate_script.main([*argv, "--yarn-factor", "2"])
    table_path = out_dir / "tiny+yarn2_table.json"
    report_path = out_dir / "tiny+yarn2_report.json"
    printed = capsys.readouterr().out
    assert "model tiny+yarn2: 4 layers" in printed
    assert "(2 kv heads, float32)" in printed  # --dtype auto on a CPU
    report = json.loads(report_path.read_text())
    assert report["lengths"] == [1024, 2048]
    assert set(report["sharing_by_length"]) == {"1024", "2048"}
    assert {"length_1024_vs_2048", "half_a_vs_half_b", "length"} <= set(report["observation_2"])
    assert "at 1024 tokens: shared" in printed and "at 2048 tokens: shared" in printed
    assert "length bands of the table" in printed
    table = SharingTable.load(table_path, num_layers=4, num_heads=6)
    assert table.metadata["lengths"] == [1024, 2048] and table.metadata["dtype"] == "float32"
    assert table.metadata["model"] == "tiny+yarn2" and table.metadata["yarn_factor"] == 2
    # Each calibration length uses its band, whose shared clusters are that length's choice.
    for length, sharing in report["sharing_by_length"].items():
        band = np.searchsorted(table.band_min_tokens, int(length), side="right") - 1
        chosen = [row["id"] for row in sharing["clusters"] if row["shared"]]
        assert [int(c) for c in np.flatnonzero(table.shared_by_band[band]) + 1] == chosen
    assert len(table.band_min_tokens) == len(report["bands"])
    assert report["sharing_by_length"]["2048"]["min_share_rate"] == 0.5
    assert len(list(out_dir.glob("calibration_tiny+yarn2_*.png"))) == 4


def test_collected_maps_are_cached_per_model_dtype_and_rope(tmp_path):
    """A bfloat16 model's maps (a GPU run's) are not read back for a float32 one, or the other
    way round, nor the model's with YaRN for the model's without; each reads its own back."""
    checkpoint = helpers.save_tiny_checkpoint(tmp_path / "tiny")
    tokens = np.random.default_rng(0).integers(0, 256, 256)
    samples = [Sample("essays", Window(document="essays", slot=0, start=0, stop=256), tokens)]
    collector = BlockMapCollector(
        block_size=64, estimate_config=SharePrefillConfig(), implementation="xla"
    )
    work_dir = tmp_path / "maps"
    maps = {}
    variants = ((jnp.float32, None), (jnp.bfloat16, None), (jnp.float32, 2.0))
    for count, (dtype, yarn_factor) in enumerate(variants, start=1):
        model = load_source(str(checkpoint), dtype=dtype, yarn_factor=yarn_factor)[0].model
        (maps[count],) = collect_all(model, samples, 256, collector, work_dir, "collect")
        assert len(list(work_dir.glob("*.npz"))) == count
        (again,) = collect_all(model, samples, 256, collector, work_dir, "cached")
        np.testing.assert_array_equal(again.block_maps, maps[count].block_maps)
    for other in (2, 3):
        assert not np.array_equal(maps[1].block_maps, maps[other].block_maps)
