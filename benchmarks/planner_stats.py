"""Planner stats of a layer stack ({name: [L, B]}) as the plain numbers benchmark records hold.

Two record layouts, one reduction: `stats_summary` (flat `num_<category>` totals; prefill
records of benchmarks/prefill_latency.py and scripts/prefill.py) and `stats_by_layer` (totals
and per-layer lists under `heads`; benchmarks/method_attention.py). Both layouts are in
committed results, so each stays as it is.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from sharedsparse_jax.planner import CATEGORIES

__all__ = ["layer_means", "stats_by_layer", "stats_summary"]


def layer_means(stats: dict[str, jax.Array]) -> tuple[list[float], dict[str, list[float]]]:
    """Each layer's block density and (layer, head) count per category, means over the batch.

    Args:
      stats: the planner's stacked stats, {name: [L, B]}.

    Returns:
      density: [L]; heads: category -> [L].
    """
    stats = jax.device_get(stats)
    density = np.asarray(stats["density"], np.float64).mean(axis=1)
    heads = {name: np.asarray(stats[f"num_{name}"], np.float64).mean(axis=1) for name in CATEGORIES}
    return density.tolist(), {name: counts.tolist() for name, counts in heads.items()}


def stats_summary(stats: dict[str, jax.Array]) -> dict[str, Any]:
    """Summarises a prefill's stacked planner stats ({name: [L, B]}) for one prompt.

    Returns:
      density (the share of causal blocks computed, mean over layers and batch),
      density_per_layer (4 digits), and num_<category>: (layer, head) pairs of each category,
      summed over layers (mean over the batch).
    """
    density, heads = layer_means(stats)
    summary: dict[str, Any] = {
        "density": float(np.mean(density)),
        "density_per_layer": [round(x, 4) for x in density],
    }
    for name, counts in heads.items():
        summary[f"num_{name}"] = int(round(sum(counts)))
    return summary


def stats_by_layer(stats: dict[str, jax.Array]) -> dict[str, Any]:
    """Density (mean over layers) and head categories (summed over layers), and both per layer.

    Returns:
      density, heads ({category: count over all layers}), density_per_layer ([L]) and
      heads_per_layer ({category: [L]}); counts are means over the batch.
    """
    density, heads = layer_means(stats)
    per_layer = {name: [int(round(x)) for x in counts] for name, counts in heads.items()}
    return {
        "density": float(np.mean(density)),
        "heads": {name: sum(counts) for name, counts in per_layer.items()},
        "density_per_layer": density,
        "heads_per_layer": per_layer,
    }
