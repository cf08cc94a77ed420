"""What a plan did, as arrays under jit and as plain numbers after the prefill.

`layer_stats` turns one layer's plan into per-batch-element stats (the models stack them to
[L, B, ...]); `summarize_stats` and `stats_by_layer` reduce a stack to the numbers records and
reports hold; `sharing_summary` and `describe_sharing` say why shared-cluster heads did or did
not take their pivot's pattern.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sharedsparse_jax import estimate, heads
from sharedsparse_jax.planner import (
    CATEGORIES,
    DENSE,
    SHARE_REASONS,
    LayerPlan,
    SharingDecisions,
)

# The measured value each refusal reason was decided on (the stat holding it).
REASON_VALUES = {
    "fallback_covers": "fallback_coverage",
    "vertical_far": "vertical_distance",
    "slash_far": "slash_distance",
}
# The config threshold each of those values was compared with.
REASON_THRESHOLDS = {
    "fallback_covers": "tau_fb",
    "vertical_far": "tau_sim",
    "slash_far": "tau_sim",
}


def layer_stats(
    plan: LayerPlan, lengths: jax.Array, block_size: int, head_axis: str | None = None
) -> dict[str, jax.Array]:
    """Per batch element: head categories, the share of causal blocks kept, sharing decisions.

    With `head_axis` (inside shard_map, heads split over that mesh axis) the stats cover every
    shard's heads, as if they had been planned on one device.

    Returns:
      "num_<category>": int32[B] for each category; "density": float32[B] (the share of the
      causal blocks of the real query rows that were kept, averaged over heads; 1 where there
      is no real row), and the two counts behind it, "kept_blocks" and "causal_blocks"
      float32[B] (summed over heads);
      "share_reason": int32[B, N] (SHARE_REASONS);
      "vertical_distance", "slash_distance", "fallback_coverage": float32[B, N] (NaN where
      not compared).
    """
    tb, sb = plan.block_mask.shape[-2:]
    nb = estimate.num_blocks(lengths, block_size)
    real_rows = (jnp.arange(tb)[None, :] + sb - tb < nb[:, None])[:, None, :, None]
    kept = jnp.sum(plan.block_mask & real_rows, axis=(1, 2, 3), dtype=jnp.int32)
    kept = heads.sum_over_heads(kept, head_axis).astype(jnp.float32)
    return _stats(kept, plan.category, plan.decisions, nb, tb, sb, head_axis)


def dense_layer_stats(
    lengths: jax.Array,
    *,
    num_heads: int,
    num_queries: int,
    num_keys: int,
    block_size: int,
    head_axis: str | None = None,
) -> dict[str, jax.Array]:
    """layer_stats of a layer that ran dense (every head keeps every causal block), without a
    plan: num_heads this shard's query heads, num_queries and num_keys T and S."""
    batch = lengths.shape[0]
    tb, sb = -(-num_queries // block_size), -(-num_keys // block_size)
    category = jnp.full((batch, num_heads), DENSE, jnp.int32)
    decisions = SharingDecisions.none(batch, num_heads)
    nb = estimate.num_blocks(lengths, block_size)
    return _stats(None, category, decisions, nb, tb, sb, head_axis)


def _stats(kept, category, decisions, nb, tb, sb, head_axis) -> dict[str, jax.Array]:
    """The stats dict from the kept blocks (None: every causal block) and the heads' outcomes."""
    decisions = jax.tree.map(lambda x: heads.gather_heads(x, head_axis), decisions)
    num_heads = decisions.reason.shape[1]
    # Causal blocks of the real rows, rows first_row .. nb - 1 seeing 1 + their index each.
    first_row = sb - tb  # the key block of the first query block
    rows_seen = jnp.maximum(nb, first_row)
    seen = rows_seen * (rows_seen + 1) // 2 - first_row * (first_row + 1) // 2
    causal = seen.astype(jnp.float32) * num_heads
    kept = causal if kept is None else kept
    category = heads.gather_heads(category, head_axis)
    stats = {
        f"num_{name}": jnp.sum(category == code, axis=1, dtype=jnp.int32)
        for code, name in enumerate(CATEGORIES)
    }
    # A chunk past a prompt's end has no real row: nothing to compute, nothing dropped.
    stats["density"] = jnp.where(causal > 0, kept / jnp.maximum(causal, 1.0), 1.0)
    stats["kept_blocks"] = kept
    stats["causal_blocks"] = causal
    stats["share_reason"] = decisions.reason
    stats["vertical_distance"] = decisions.vertical_distance
    stats["slash_distance"] = decisions.slash_distance
    stats["fallback_coverage"] = decisions.fallback_coverage
    return stats


def to_host(stats: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    """Stats as NumPy arrays on this host, gathering batch rows other processes hold."""
    from jax.experimental import multihost_utils

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return {name: fetch(value) for name, value in stats.items()}


def layer_means(stats: dict[str, jax.Array]) -> tuple[list[float], dict[str, list[float]]]:
    """Each layer's block density and (layer, head) count per category, means over the batch.

    Args:
      stats: the planner's stacked stats, {name: [L, B, ...]}.

    Returns:
      density: [L]; heads: category -> [L].
    """
    stats = to_host(stats)
    density = np.asarray(stats["density"], np.float64).mean(axis=1)
    heads = {name: np.asarray(stats[f"num_{name}"], np.float64).mean(axis=1) for name in CATEGORIES}
    return density.tolist(), {name: counts.tolist() for name, counts in heads.items()}


def summarize_stats(stats: dict[str, jax.Array]) -> dict[str, Any]:
    """Summarises a prefill's stacked planner stats ({name: [L, B, ...]}) for one prompt.

    Returns:
      density (the share of causal blocks computed, mean over layers and batch),
      density_per_layer (4 digits), num_<category>: (layer, head) pairs of each category,
      summed over layers (mean over the batch), and sharing (sharing_summary).
    """
    density, heads = layer_means(stats)
    summary: dict[str, Any] = {
        "density": float(np.mean(density)),
        "density_per_layer": [round(x, 4) for x in density],
    }
    for name, counts in heads.items():
        summary[f"num_{name}"] = int(round(sum(counts)))
    summary["sharing"] = sharing_summary(stats)
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


def sharing_summary(stats: dict[str, jax.Array]) -> dict[str, Any]:
    """Why the (layer, head) pairs of shared clusters did or did not share.

    Args:
      stats: stacked stats with share_reason [L, B, N] and the compared values.

    Returns:
      {reason: {"count": (layer, head) pairs, mean over the batch, and for the reasons decided
      on a value, "min"/"median"/"max" of that value over those pairs}} for every reason in
      SHARE_REASONS except not_shared, plus "shared" also with both distances' ranges.
    """
    stats = to_host(stats)
    reason = np.asarray(stats["share_reason"])
    batch = reason.shape[1]
    summary: dict[str, Any] = {}
    for code, name in enumerate(SHARE_REASONS):
        if name == "not_shared":
            continue
        chosen = reason == code
        entry: dict[str, Any] = {"count": round(float(chosen.sum()) / batch, 2)}
        value_names = [REASON_VALUES[name]] if name in REASON_VALUES else []
        if name == "shared":
            value_names = ["vertical_distance", "slash_distance", "fallback_coverage"]
        for value_name in value_names:
            values = np.asarray(stats[value_name], np.float64)[chosen]
            values = values[np.isfinite(values)]
            if values.size:
                entry[value_name] = {
                    "min": round(float(values.min()), 4),
                    "median": round(float(np.median(values)), 4),
                    "max": round(float(values.max()), 4),
                }
        summary[name] = entry
    return summary


def describe_sharing(summary: dict[str, Any], thresholds: dict[str, float]) -> list[str]:
    """One line per sharing outcome with a nonzero count, for people to read.

    Args:
      summary: sharing_summary's result.
      thresholds: the config's {"tau_fb": ..., "tau_sim": ...}.

    Returns:
      Lines such as "fallback_covers  12 (fallback_coverage 0.961-0.998, median 0.982 >=
      tau_fb 0.95)".
    """
    lines = []
    for name, entry in summary.items():
        if not entry["count"]:
            continue
        line = f"{name:<17} {entry['count']:g}"
        value_name = REASON_VALUES.get(name)
        if value_name and value_name in entry:
            v = entry[value_name]
            threshold = REASON_THRESHOLDS[name]
            line += (
                f" ({value_name} {v['min']:.3f}-{v['max']:.3f}, median {v['median']:.3f}"
                f" >= {threshold} {thresholds[threshold]:g})"
            )
        lines.append(line)
    return lines
