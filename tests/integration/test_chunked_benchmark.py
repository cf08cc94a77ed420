"""benchmarks.chunked_prefill on the tiny model: its records and what they must hold."""

from __future__ import annotations

import json

import jax.numpy as jnp
import pytest

from benchmarks import chunked_prefill, prefill_latency


@pytest.mark.slow  # 90 s on the 2-core machine; tests/models/test_chunked.py checks the chunks
def test_dry_run(tmp_path):
    out = tmp_path / "chunked.json"
    records = chunked_prefill.main(["--dry-run", "--out", str(out)])
    keys = {"model", "seq_len", "chunk_tokens", "method", "time_ms", "peak_memory_gib"}
    assert all(
        keys | {"delta_nll_vs_whole", "block_agreement", "density"} <= set(r) for r in records
    )
    assert [(r["method"], r["chunk_tokens"]) for r in records] == [
        ("dense", None), ("dense", 64), ("shareprefill", None), ("shareprefill", 64)
    ]  # fmt: skip
    dense_whole, dense_chunked, share_whole, share_chunked = records
    assert abs(dense_chunked["delta_nll_vs_whole"]) < 1e-5  # dense chunking changes nothing
    assert share_whole["block_agreement"] == 1.0 and share_whole["delta_nll_vs_whole"] == 0
    assert 0 < share_chunked["block_agreement"] <= 1 and 0 < share_chunked["density"] <= 1
    assert dense_chunked["time_per_chunk_ms"] * 4 == dense_chunked["time_ms"]
    assert all(r["peak_memory_gib"] > 0 for r in records)
    assert json.loads(out.read_text())["records"] == records


def test_random_weights_take_the_models_shape_and_extend_its_context():
    """--random-weights builds the chosen model's shape, YaRN-extended beyond its context."""
    args = chunked_prefill.parse_args(
        ["--model", "smollm2", "--random-weights", "--lengths", "16384"]
    )
    model, encode, table, knobs = chunked_prefill.load(args)
    shape = prefill_latency.CASES["smollm2"].config
    assert model.config.num_layers == shape.num_layers
    assert model.config.max_position_embeddings == 4 * shape.max_position_embeddings
    assert model.config.rope.rope_type == "yarn"
    assert model.dtype == jnp.bfloat16 and table is None and knobs == {}
    assert encode("ab") == [97, 98]
