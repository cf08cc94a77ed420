"""sharedsparse-calibrate end to end on a tiny random model at two lengths, and length bands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sharedsparse_cli import calibrate
from sharedsparse_jax.calibrate import length_bands
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
    checkpoint = helpers.save_tiny_checkpoint(tmp_path / "tiny", max_position_embeddings=2048)
    out_dir = tmp_path / "out"
    table_path, report_path = out_dir / "tiny_table.json", out_dir / "tiny_report.json"
    calibrate_script.main(
        [
            "--checkpoint", str(checkpoint), "--lengths", "2048", "1024", "--samples", "2",
            "--heldout", "1", "--second-length", "512", "--map-block-size", "64",
            "--implementation", "xla", "--work-dir", str(tmp_path / "maps"),
            "--out-dir", str(out_dir),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["lengths"] == [1024, 2048]
    assert set(report["sharing_by_length"]) == {"1024", "2048"}
    assert {"length_1024_vs_2048", "half_a_vs_half_b", "length"} <= set(report["observation_2"])
    assert "at 1024 tokens: shared" in printed and "at 2048 tokens: shared" in printed
    assert "length bands of the table" in printed
    table = SharingTable.load(table_path, num_layers=4, num_heads=6)
    assert table.metadata["lengths"] == [1024, 2048]
    # Each calibration length uses its band, whose shared clusters are that length's choice.
    for length, sharing in report["sharing_by_length"].items():
        band = np.searchsorted(table.band_min_tokens, int(length), side="right") - 1
        chosen = [row["id"] for row in sharing["clusters"] if row["shared"]]
        assert [int(c) for c in np.flatnonzero(table.shared_by_band[band]) + 1] == chosen
    assert len(table.band_min_tokens) == len(report["bands"])
    assert report["sharing_by_length"]["2048"]["min_share_rate"] == 0.5
    assert len(list(out_dir.glob("calibration_tiny_*.png"))) == 4
