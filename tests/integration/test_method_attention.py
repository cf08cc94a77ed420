"""The attention-level method benchmark's dry run: profile-driven synthetic heads, every record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import attention_profiles, method_attention
from benchmarks.attention_profiles import SHARES


def test_decompose_rows_recovers_planted_parts():
    num_blocks = 24
    rows = np.zeros((num_blocks, num_blocks))
    for r in range(num_blocks):
        rows[r, : r + 1] = 0.2 / (r + 1)  # diffuse
        rows[r, 0] += 0.3  # sink
        rows[r, r] += 0.3  # band
        if r >= 9:
            rows[r, 5] += 0.1  # a vertical column
            rows[r, r - 7] += 0.1  # a slash at offset 7
        else:
            rows[r, r] += 0.2
    index = np.arange(4, num_blocks)
    parts = attention_profiles.decompose_rows(rows[4:], index, block_size=64, last_rows=1)
    r = num_blocks - 1
    assert parts["vertical_columns"] == [5] and parts["slash_offsets"] == [7]
    np.testing.assert_allclose(parts["sink"], 0.3 + 0.2 / (r + 1))
    np.testing.assert_allclose(parts["band"], 0.3 + 2 * 0.2 / (r + 1))  # offsets 0 and 1
    np.testing.assert_allclose(parts["vertical"], 0.1 + 0.2 / (r + 1))
    np.testing.assert_allclose(parts["slash"], 0.1 + 0.2 / (r + 1))
    np.testing.assert_allclose(sum(parts[name] for name in SHARES), 1.0)


class _CharTokenizer:
    """One token per character."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 7 for c in text]


def test_profile_windows_start_early_enough_for_long_lengths(monkeypatch):
    from evaluation import texts

    monkeypatch.setattr(texts, "load_austen_novels", lambda: {"emma": "e" * 1000})
    monkeypatch.setattr(texts, "load_paul_graham_essays", lambda: "p" * 400)
    short = attention_profiles._texts(_CharTokenizer(), 40, 2)
    assert [name for name, _ in short] == ["austen:emma@500", "essays@200"]  # the middles
    long = attention_profiles._texts(_CharTokenizer(), 180, 1)
    assert long[0][0] == "austen:emma@100" and len(long[0][1]) == 180  # 5 characters a token
    with pytest.raises(ValueError, match="essays: 400 tokens from character 0, 500 needed"):
        attention_profiles._texts(_CharTokenizer(), 500, 2)


def test_dry_run_records_every_method(tmp_path):
    out = tmp_path / "method_attention.json"
    methods = ["shareprefill", "streaming"]
    records = method_attention.main(
        ["--dry-run", "--seq-lens", "512", "--methods", *methods, "--out", str(out)]
    )
    assert [r["method"] for r in records] == methods
    for record in records:
        assert "error" not in record, record.get("error")
        assert record["seq_len"] == 512 and record["profile"] == "smollm2-135m-instruct"
        assert record["time_ms"] > 0 and record["dense_time_ms"] > 0
        np.testing.assert_allclose(record["speedup"], record["dense_time_ms"] / record["time_ms"])
        assert 0 < record["density"] <= 1
        assert sum(record["heads"].values()) == 2 * 8  # layers x heads
        assert record["commit"]
    assert records[0]["heads"]["pivot"] >= 1  # a shared cluster's first member
    assert records[1]["heads"] == {"streaming": 16} | {
        name: 0 for name in records[0]["heads"] if name != "streaming"
    }
    saved = json.loads(out.read_text())
    assert saved["records"] == records and saved["environment"]["dry_run"] is True
    check = saved["environment"]["share_checks"]["512"]
    assert max(check["mean_abs_error"].values()) < 0.1

    resumed = method_attention.main(
        ["--dry-run", "--seq-lens", "512", "--methods", *methods, "--out", str(out), "--resume"]
    )
    assert resumed == records  # nothing left to run

    figure = tmp_path / "figure.png"
    method_attention.main(["--plot", str(out), str(figure)])
    assert figure.stat().st_size > 0


def test_synthetic_lines_fit_short_prompts_of_a_coarse_profile():
    """The 32K profile's 128-token map blocks at the dry run's 512 tokens: stripes still fit."""
    from benchmarks.diagnostics import synthetic_heads

    root = Path(__file__).resolve().parents[2]
    profile = attention_profiles.load_profile(
        root / "benchmarks/profiles/qwen2.5-coder-0.5b-instruct_32768.json"
    )
    assert profile["block_size"] == 128
    spec = synthetic_heads.make_spec(
        profile, num_heads=8, num_kv_heads=2, head_dim=64, num_layers=2
    )
    lines = synthetic_heads.head_lines(spec, 512)
    assert ((lines.stripe_positions >= 1) & (lines.stripe_positions < 512)).all()
