"""Cell summaries against numbers worked by hand and the stats module."""

import math

import numpy as np
import pytest

from evaluation import stats
from evaluation.harness.aggregate import summarize_cell
from evaluation.harness.store import CellKey, ResultStore


def _text_record(unit, nll_sum, num, *, kl=0.0, density=(1.0, 1.0), errors=None, **extra):
    record = {
        "unit": unit,
        "nll_sum": nll_sum,
        "num_scored": num,
        "nll_sum_second_half": nll_sum / 2,
        "num_scored_second_half": num // 2,
        "kl_mean": kl,
        "kl_max": 2 * kl,
        "top1_agreement": 1.0 if kl == 0 else 0.5,
        "density": list(density),
        "heads": {"query_aware": [1, 2], "vertical_slash": [2, 1]},
        "dense_by_construction": False,
        "seconds": 1.0,
    }
    if errors is not None:
        record["attn_rel_error"] = list(errors)
    return record | extra


def test_text_summary_by_hand(tmp_path):
    store = ResultStore(tmp_path)
    dense = CellKey("m", "text", 8, "dense")
    sparse = CellKey("m", "text", 8, "flexprefill@v")
    for unit, nll in (("a-0", 7.0), ("b-0", 14.0), ("c-0", 3.5)):
        store.append(dense, _text_record(unit, nll, 7))
    extra = {"a-0": 0.7, "b-0": 1.4, "c-0": 0.0}
    for unit, nll in (("a-0", 7.0), ("b-0", 14.0), ("c-0", 3.5)):
        store.append(
            sparse,
            _text_record(
                unit, nll + extra[unit], 7, kl=0.01, density=(0.5, 0.7), errors=(0.1, 0.3)
            ),
        )
    summary = summarize_cell(store, sparse)
    assert summary["method"] == "flexprefill" and summary["variant"] == "v"
    total = 7.0 + 14.0 + 3.5 + 2.1
    assert summary["perplexity"] == pytest.approx(math.exp(total / 21))
    assert summary["perplexity_second_half"] == pytest.approx(math.exp(total / 2 / 9))
    assert summary["density"] == pytest.approx(0.6)
    assert summary["heads"] == {"query_aware": 0.5, "vertical_slash": 0.5}
    assert summary["attn_rel_error_per_layer"] == pytest.approx([0.1, 0.3])
    assert summary["attn_rel_error_max_layer"] == pytest.approx(0.3)
    assert summary["kl_mean"] == pytest.approx(0.01) and summary["kl_max"] == pytest.approx(0.02)
    expected = stats.paired_difference([1.1, 2.2, 0.5], [1.0, 2.0, 0.5], method="bootstrap")
    assert summary["nll_diff_vs_dense"]["value"] == pytest.approx(0.1)
    assert summary["nll_diff_vs_dense"]["low"] == pytest.approx(expected.low)
    assert summary["perplexity_ratio_vs_dense"] == pytest.approx(math.exp(0.1))
    assert summarize_cell(store, dense)["perplexity"] == pytest.approx(math.exp(24.5 / 21))


def test_retrieval_summary_pairs_by_unit(tmp_path):
    store = ResultStore(tmp_path)
    dense = CellKey("m", "passkey", 1024, "dense")
    sparse = CellKey("m", "passkey", 1024, "streaming@v")
    dense_scores = [1, 1, 1, 0, 1, 1, 0, 1]
    sparse_scores = [1, 0, 1, 0, 0, 1, 1, 1]
    for i, (d, s) in enumerate(zip(dense_scores, sparse_scores, strict=True)):
        common = {"unit": str(i), "num_tokens": 1000, "dense_by_construction": False}
        store.append(dense, common | {"score": float(d), "density": [1.0], "heads": {"dense": [4]}})
        store.append(
            sparse, common | {"score": float(s), "density": [0.25], "heads": {"streaming": [4]}}
        )
    store.append(
        dense,
        {
            "unit": "99",
            "num_tokens": 1000,
            "score": 1.0,
            "density": [1.0],
            "heads": {"dense": [4]},
            "dense_by_construction": False,
        },
    )
    summary = summarize_cell(store, sparse)
    assert summary["n"] == 8 and summary["accuracy"]["method"] == "wilson"
    low, high = stats.wilson_interval(5, 8)
    assert summary["accuracy"]["low"] == pytest.approx(low)
    assert summary["accuracy"]["high"] == pytest.approx(high)
    expected = stats.paired_difference(np.array(sparse_scores), np.array(dense_scores))
    assert summary["diff_vs_dense"]["value"] == pytest.approx(-1 / 8)
    assert summary["diff_vs_dense"]["low"] == pytest.approx(expected.low)
    assert summary["discordant"] == 3
    assert summary["mcnemar_p"] == pytest.approx(
        stats.mcnemar_exact_pvalue(sparse_scores, dense_scores)
    )
    assert summary["density"] == 0.25 and summary["heads"] == {"streaming": 1.0}


def test_fractional_scores_use_bootstrap(tmp_path):
    store = ResultStore(tmp_path)
    cell = CellKey("m", "niah_multivalue", 1024, "dense")
    for i, score in enumerate([0.25, 0.5, 1.0, 0.75]):
        store.append(
            cell,
            {
                "unit": str(i),
                "score": score,
                "num_tokens": 900,
                "density": [1.0],
                "heads": {},
                "dense_by_construction": False,
            },
        )
    summary = summarize_cell(store, cell)
    assert summary["accuracy"]["method"] == "bootstrap"
    assert summary["accuracy"]["value"] == pytest.approx(0.625)
