"""The results directory: append, resume after a torn write, refuse mixed parameters."""

import numpy as np
import pytest

from evaluation.harness.store import (
    CellKey,
    CellMismatchError,
    ResultStore,
    model_label,
    split_model_label,
)


def test_append_and_reopen(tmp_path):
    cell = CellKey("m", "passkey", 1024, "flexprefill@small")
    store = ResultStore(tmp_path)
    assert store.units(cell) == {} and list(store.cells()) == []
    store.append(cell, {"unit": "0", "score": 1.0})
    store.append(cell, {"unit": "1", "score": 0.0})
    reopened = ResultStore(tmp_path)
    assert reopened.has(cell, "1") and not reopened.has(cell, "2")
    assert reopened.units(cell)["0"]["score"] == 1.0
    assert list(reopened.cells()) == [cell]


@pytest.mark.parametrize(
    "factor,label", [(None, "qwen"), (4.0, "qwen+yarn4"), (2.5, "qwen+yarn2.5")]
)
def test_model_labels_carry_the_yarn_factor(factor, label):
    assert model_label("qwen", factor) == label
    assert split_model_label(label) == ("qwen", factor)


def test_torn_last_line_is_ignored_and_repaired(tmp_path):
    cell = CellKey("m", "text", 2048, "dense")
    store = ResultStore(tmp_path)
    store.append(cell, {"unit": "emma-0", "nll_sum": 1.5})
    path = tmp_path / "units" / "m" / "text" / "L2048" / "dense.jsonl"
    with open(path, "a") as f:
        f.write('{"unit": "emma-1", "nll')  # a write cut short
    reopened = ResultStore(tmp_path)
    assert set(reopened.units(cell)) == {"emma-0"}
    reopened.append(cell, {"unit": "emma-1", "nll_sum": 2.5})
    assert ResultStore(tmp_path).units(cell)["emma-1"]["nll_sum"] == 2.5


def test_parameters_are_checked(tmp_path):
    cell = CellKey("m", "text", 1024, "streaming@default")
    store = ResultStore(tmp_path)
    store.check_parameters(cell, {"kl_positions": 64, "config": {"block_size": 128}})
    store.check_parameters(cell, {"config": {"block_size": 128}, "kl_positions": 64})
    with pytest.raises(CellMismatchError, match="kl_positions"):
        store.check_parameters(cell, {"kl_positions": 32, "config": {"block_size": 128}})
    assert store.parameters(cell)["kl_positions"] == 64


def test_dense_logits_round_trip(tmp_path):
    store = ResultStore(tmp_path)
    logits = np.random.default_rng(0).standard_normal((4, 9)).astype(np.float32)
    assert store.load_dense_logits("m", 512, "emma-0") is None
    store.save_dense_logits("m", 512, "emma-0", logits)
    np.testing.assert_array_equal(store.load_dense_logits("m", 512, "emma-0"), logits)
    store.log_run({"argv": ["--smoke"]})
    assert store.runs() == [{"argv": ["--smoke"]}]
