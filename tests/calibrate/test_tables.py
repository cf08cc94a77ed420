"""Sharing tables: calibration output round trips; built-in tables load and refuse other models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sharedsparse_jax.calibrate import TOOL_VERSION, build_table
from sharedsparse_jax.calibrate.cluster import renumber
from sharedsparse_jax.sharing import SharingTable
from sharedsparse_jax.tables import BUILTIN_TABLES, builtin_table, resolve_table, table_path

# Built-in model -> (layers, query heads).
SHAPES = {"smollm2-135m-instruct": (30, 9), "qwen2.5-coder-0.5b-instruct": (24, 14)}
# Built-in model -> least shared clusters its table holds. On Qwen2.5-Coder no cluster cleared
# the sharing bars at the calibration length (docs/calibration.md), so it shares none.
MIN_SHARED = {"smollm2-135m-instruct": 1, "qwen2.5-coder-0.5b-instruct": 0}


def test_built_table_round_trips_through_the_reference_schema(tmp_path):
    rng = np.random.default_rng(0)
    labels = renumber(rng.integers(0, 5, 12)).reshape(4, 3)
    is_shared = np.arange(labels.max() + 1) % 2 == 0
    table = build_table(labels, is_shared, {"model": "tiny", "lengths": [256]})
    path = tmp_path / "table.json"
    table.save(path)
    data = json.loads(path.read_text())
    assert list(data["clusters"]) == [str(c + 1) for c in range(labels.max() + 1)]
    for cluster_id, members in data["clusters"].items():
        assert members == sorted(members)
        assert all(labels[layer, head] + 1 == int(cluster_id) for layer, head in members)
    assert data["shared_clusters"] == [str(c + 1) for c in np.flatnonzero(is_shared)]
    loaded = SharingTable.load(path, num_layers=4, num_heads=3)
    np.testing.assert_array_equal(loaded.cluster_of, labels)
    np.testing.assert_array_equal(loaded.is_shared, is_shared)
    assert loaded.metadata["model"] == "tiny" and loaded.metadata["num_layers"] == 4


def test_build_table_refuses_gaps_and_wrong_flags():
    with pytest.raises(ValueError, match="0..C-1"):
        build_table(np.array([[0, 2]]), np.array([True, False, False]))
    with pytest.raises(ValueError, match="is_shared"):
        build_table(np.array([[0, 1]]), np.array([True]))


@pytest.mark.parametrize("name", sorted(BUILTIN_TABLES))
def test_builtin_tables_cover_their_models(name):
    num_layers, num_heads = SHAPES[name]
    table = builtin_table(name, num_layers=num_layers, num_heads=num_heads)
    assert table.cluster_of.shape == (num_layers, num_heads)
    assert (table.cluster_of >= 0).all()  # every head in a cluster (the reference needs it)
    assert MIN_SHARED[name] <= table.num_shared < len(table.cluster_ids)
    metadata = table.metadata
    assert metadata["model"] == name and metadata["tool_version"] == TOOL_VERSION
    for key in ("texts", "min_coverage", "min_saving", "distance_threshold"):
        assert key in metadata, key
    assert "lengths" in metadata or "length" in metadata  # tables before --lengths: one length
    assert table_path(name).name == BUILTIN_TABLES[name]


def test_builtin_table_refuses_another_model():
    with pytest.raises(ValueError, match=r"30 layers x 9 query heads.*not 24 x 14"):
        builtin_table("smollm2-135m-instruct", num_layers=24, num_heads=14)
    with pytest.raises(ValueError, match="metadata says num_layers=30, the model has 24"):
        SharingTable.load(table_path("smollm2-135m-instruct"), num_layers=24, num_heads=9)
    with pytest.raises(ValueError, match="no built-in sharing table"):
        builtin_table("llama-3.1-8b-instruct")


def test_resolve_table_reads_each_choice(tmp_path):
    name, (num_layers, num_heads) = "smollm2-135m-instruct", SHAPES["smollm2-135m-instruct"]
    shape = {"num_layers": num_layers, "num_heads": num_heads}
    for choice in (None, "builtin"):
        table, origin = resolve_table(choice, name, **shape)
        assert origin == "shipped"
        np.testing.assert_array_equal(table.cluster_of, builtin_table(name).cluster_of)
        assert resolve_table(choice, "my-model", **shape) == (None, "unshipped")
        assert resolve_table(choice, None, **shape) == (None, "unshipped")
    for choice in ("none", "None"):
        assert resolve_table(choice, name, **shape) == (None, "off")
    labels = renumber(np.arange(12) % 5).reshape(4, 3)
    path = tmp_path / "table.json"
    build_table(labels, np.arange(5) < 2, {"model": "tiny"}).save(path)
    table, origin = resolve_table(str(path), name, num_layers=4, num_heads=3)
    assert origin == "file" and table.num_shared == 2
    np.testing.assert_array_equal(table.cluster_of, labels)
    with pytest.raises(ValueError, match=r"30 layers x 9 query heads.*not 24 x 14"):
        resolve_table("builtin", name, num_layers=24, num_heads=14)
    with pytest.raises(ValueError, match="metadata says num_layers=4, the model has 3"):
        resolve_table(str(path), None, num_layers=3, num_heads=3)
    with pytest.raises(FileNotFoundError):
        resolve_table(str(tmp_path / "missing.json"), name, **shape)


def test_measured_dense_below_stands_in_a_gpu_of_the_same_maker():
    def entry(tokens):
        return {"tokens": tokens, "command": "python -m benchmarks.crossover", "date": "today"}

    def table_with(measured):
        empty = SharingTable.empty(2, 2)
        metadata = {"dense_below": measured}
        return SharingTable(empty.cluster_of, empty.cluster_ids, empty.is_shared, metadata)

    measured = {"NVIDIA H100 80GB HBM3": entry(16384), "NVIDIA A100-SXM4-80GB": entry(8192)}
    table = table_with(measured)
    own = table.measured_dense_below("NVIDIA A100-SXM4-80GB")
    assert own["tokens"] == 8192 and own["device"] == "NVIDIA A100-SXM4-80GB"
    # None measured on an H200: the largest crossover of another NVIDIA GPU.
    stand_in = table.measured_dense_below("NVIDIA H200")
    assert stand_in["tokens"] == 16384 and stand_in["device"] == "NVIDIA H100 80GB HBM3"
    assert table.measured_dense_below("TPU v5 lite") is None
    assert table.measured_dense_below("cpu") is None
    assert SharingTable.empty(2, 2).measured_dense_below("NVIDIA H200") is None
    broken = table_with(measured | {"NVIDIA H200": {"command": "no tokens"}})
    with pytest.raises(ValueError, match=r"dense_below\['NVIDIA H200'\] lacks tokens"):
        broken.measured_dense_below("NVIDIA H100 80GB HBM3")
