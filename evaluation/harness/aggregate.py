"""Cell summaries with intervals: perplexity, fidelity and retrieval accuracy against dense.

Every sparse cell is compared with the dense cell of the same (model, task, length) on the
units both have (pairs). Text: per-window mean NLL differences with a paired bootstrap
interval (exp of it is the perplexity ratio). Retrieval: accuracy with a Wilson interval (0/1
scores) or a bootstrap one (fractional), and the paired difference to dense (Newcombe for 0/1
scores, bootstrap otherwise) with McNemar's exact test.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from evaluation import stats
from evaluation.harness.settings import DENSE
from evaluation.harness.store import TEXT, CellKey, ResultStore

__all__ = ["estimate_dict", "summarize_cell", "summarize_store"]


def estimate_dict(estimate: stats.Estimate) -> dict[str, Any]:
    """An Estimate as a JSON-ready dict."""
    return dataclasses.asdict(estimate)


def _head_shares(records: list[dict]) -> dict[str, float]:
    """Share of (layer, head) slots in each category, pooled over units."""
    totals: dict[str, float] = {}
    for record in records:
        for name, per_layer in (record.get("heads") or {}).items():
            totals[name] = totals.get(name, 0.0) + float(sum(per_layer))
    slots = sum(totals.values())
    return {name: (count / slots if slots else 0.0) for name, count in sorted(totals.items())}


def _common(records: list[dict]) -> dict[str, Any]:
    densities = [float(np.mean(r["density"])) for r in records if r.get("density")]
    return {
        "n": len(records),
        "density": float(np.mean(densities)) if densities else None,
        "density_min": float(np.min(densities)) if densities else None,
        "density_max": float(np.max(densities)) if densities else None,
        "heads": _head_shares(records),
        "dense_by_construction": float(
            np.mean([bool(r["dense_by_construction"]) for r in records])
        ),
        "same_as": twins.pop() if len(twins := {r.get("same_as") for r in records}) == 1 else None,
        "seconds_mean": float(np.mean([r.get("seconds", 0.0) for r in records])),
    }


def _layer_errors(records: list[dict]) -> np.ndarray | None:
    """[units, L] per-layer relative errors (0 for copies of dense), or None if not measured."""
    rows = []
    for record in records:
        if "attn_rel_error" in record:
            rows.append(record["attn_rel_error"])
        elif record.get("dense_by_construction"):
            rows.append([0.0] * len(record["density"]))
        else:
            return None
    return np.asarray(rows, np.float64) if rows else None


def _text_summary(records: list[dict], dense: list[dict] | None) -> dict[str, Any]:
    nll = sum(r["nll_sum"] for r in records)
    count = sum(r["num_scored"] for r in records)
    nll_half = sum(r["nll_sum_second_half"] for r in records)
    count_half = sum(r["num_scored_second_half"] for r in records)
    summary = _common(records) | {
        "tokens_scored": count,
        "perplexity": math.exp(nll / count),
        "perplexity_second_half": math.exp(nll_half / count_half),
        "kl_mean": float(np.mean([r["kl_mean"] for r in records])),
        "kl_max": float(np.max([r["kl_max"] for r in records])),
        "top1_agreement": float(np.mean([r["top1_agreement"] for r in records])),
    }
    errors = _layer_errors(records)
    if errors is not None:
        per_layer = errors.mean(axis=0)
        summary |= {
            "attn_rel_error_mean": float(per_layer.mean()),
            "attn_rel_error_max_layer": float(per_layer.max()),
            "attn_rel_error_per_layer": [float(x) for x in per_layer],
        }
    if dense is not None:
        by_unit = {r["unit"]: r for r in dense}
        pairs = [(r, by_unit[r["unit"]]) for r in records if r["unit"] in by_unit]
        if pairs:
            cand = [r["nll_sum"] / r["num_scored"] for r, _ in pairs]
            ref = [d["nll_sum"] / d["num_scored"] for _, d in pairs]
            diff = stats.paired_difference(cand, ref, method="bootstrap")
            summary["nll_diff_vs_dense"] = estimate_dict(diff)
            summary["perplexity_ratio_vs_dense"] = math.exp(diff.value)
    return summary


def _retrieval_summary(records: list[dict], dense: list[dict] | None) -> dict[str, Any]:
    scores = np.asarray([r["score"] for r in records], np.float64)
    is_binary = bool(np.all((scores == 0) | (scores == 1)))
    if is_binary:
        accuracy = stats.proportion(int(scores.sum()), scores.size)
    else:
        accuracy = stats.bootstrap_mean(scores)
    summary = _common(records) | {
        "accuracy": estimate_dict(accuracy),
        "num_tokens_mean": float(np.mean([r["num_tokens"] for r in records])),
    }
    if dense is not None:
        by_unit = {r["unit"]: r for r in dense}
        pairs = [(r["score"], by_unit[r["unit"]]["score"]) for r in records if r["unit"] in by_unit]
        if pairs:
            cand, ref = (np.asarray(x, np.float64) for x in zip(*pairs, strict=True))
            summary["diff_vs_dense"] = estimate_dict(stats.paired_difference(cand, ref))
            if np.all((cand == 0) | (cand == 1)) and np.all((ref == 0) | (ref == 1)):
                summary["mcnemar_p"] = stats.mcnemar_exact_pvalue(cand, ref)
            summary["discordant"] = int(np.sum(cand != ref))
    return summary


def summarize_cell(store: ResultStore, cell: CellKey) -> dict[str, Any] | None:
    """One cell's summary, compared with its dense cell (None when it has no records).

    Args:
      store: the results directory.
      cell: the cell.

    Returns:
      The cell's key fields, parameters and metrics.
    """
    records = sorted(store.units(cell).values(), key=lambda r: r["unit"])
    if not records:
        return None
    dense = None
    if cell.setting != DENSE:
        dense_cell = CellKey(cell.model, cell.task, cell.length, DENSE)
        dense = list(store.units(dense_cell).values()) or None
    summarize = _text_summary if cell.task == TEXT else _retrieval_summary
    method, _, variant = cell.setting.partition("@")
    parameters = store.parameters(cell)
    return {
        "model": cell.model,
        "task": cell.task,
        "length": cell.length,
        "setting": cell.setting,
        "method": method,
        "variant": variant or None,
        "config": parameters.get("config"),
        "table": parameters.get("table"),
        "dtype": parameters.get("dtype"),
    } | summarize(records, dense)


def summarize_store(store: ResultStore) -> list[dict[str, Any]]:
    """Summaries of every cell in the results directory."""
    return [s for cell in store.cells() if (s := summarize_cell(store, cell)) is not None]
