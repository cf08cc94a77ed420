"""What `sharedsparse-calibrate` prints and writes besides the table: the summary, the JSON
report's per-length selection and the figures."""

from __future__ import annotations

import numpy as np

from sharedsparse_jax.calibrate import SelectionConfig, figures, within_between_distances


def fmt(values, digits=3) -> str:
    """Quantiles as "[a, b, ...]" (n/a when there are none)."""
    return "[" + ", ".join(f"{v:.{digits}f}" for v in values) + "]" if values else "n/a"


def print_summary(report: dict) -> None:
    c = report["clustering"]
    print(
        f"\nclusters: {c['clusters']} ({c['embedding']}, threshold {c['threshold']}, sizes"
        f" {c['size_quantiles']} at 10/50/90 %)"
    )
    for length, sharing in report["sharing_by_length"].items():
        print(
            f"\nat {length} tokens: shared {sharing['shared_clusters']} clusters /"
            f" {sharing['shared_heads']} heads; model-wide block saving of the shared clusters:"
            f" {sharing['model_saving']:+.3%} of the fallback's blocks"
        )
        print("shared-cluster selection (held-out):")
        print("  id  size  pivot     coverage  fallback  gain    saving   share  disabled  shared")
        for row in sharing["clusters"]:
            row = {k: float("nan") if v is None else v for k, v in row.items()}
            print(
                f"  {row['id']:>3} {row['size']:>5}  L{row['pivot'][0]:<2}H{row['pivot'][1]:<3}"
                f"  {row['coverage']:8.3f}  {row['fallback_coverage']:8.3f}"
                f" {row['coverage_gain']:+.3f}  {row['saving']:+.3f}  {row['share_rate']:5.2f}"
                f"  {row['disabled_rate']:8.2f}  {'yes' if row['shared'] else ''}"
            )
    print("\nlength bands of the table (shared cluster ids):")
    for band in report["bands"]:
        print(f"  from {band['min_tokens']:>6} tokens: {band['shared_clusters']}")
    o = report["observation_1"]
    print("\nobservation 1 (similarity), quantiles 10/25/50/75/90 %:")
    print(f"  Hellinger distance within clusters:       {fmt(o['hellinger_within'])}")
    print(f"    ... within clusters, across layers:     {fmt(o['hellinger_within_cross_layer'])}")
    print(f"  Hellinger distance across clusters:       {fmt(o['hellinger_between'])}")
    print(f"  distance to the nearest other head:       {fmt(o['hellinger_nearest'])}")
    print(
        f"  cross coverage (j's mass in i's pattern): within {o['cross_coverage_within_mean']},"
        f" across {o['cross_coverage_between_mean']} (means)"
    )
    print(
        f"  clusters spanning several layers: {o['clusters_spanning_layers']} of {o['clusters']}"
        f" (median {o['median_layers_per_cluster']} layers)"
    )
    print("\nobservation 2 (stability), adjusted Rand index:")
    for name, value in report["observation_2"].items():
        print(f"  {name:<20} {value:.3f}")
    if report.get("sweep"):
        print("\nsweep (embedding, threshold): clusters, ARIs, shared clusters/heads, saving, gain")
        for row in report["sweep"]:
            aris = " ".join(f"{row[k]:.2f}" for k in row if k.startswith("ari_"))
            print(
                f"  {row['embedding']:<11} {row['threshold']:.2f} C={row['clusters']:<4} ARI {aris}"
                f"  shared {row['shared_clusters']}/{row['shared_heads']}"
                f"  saving {row['model_saving']:+.3f}  gain {row['shared_gain']:+.3f}"
            )


def sharing_report(sharing, selection: SelectionConfig) -> dict:
    """One length's shared-cluster choice, as the report's JSON."""
    sizes = sharing.size
    return {
        "min_coverage": selection.min_coverage,
        "min_coverage_gain": selection.min_coverage_gain,
        "min_saving": selection.min_saving,
        "min_share_rate": selection.min_share_rate,
        "shared_clusters": int(sharing.is_shared.sum()),
        "shared_heads": int(sizes[sharing.is_shared].sum()),
        "model_saving": sharing.model_saving,
        "clusters": [
            {
                "id": c + 1,
                "size": int(sizes[c]),
                "pivot": sharing.pivot[c].tolist(),
                "coverage": json_float(sharing.coverage[c]),
                "coverage_p10": json_float(sharing.coverage_p10[c]),
                "fallback_coverage": json_float(sharing.fallback_coverage[c]),
                "coverage_gain": json_float(sharing.coverage_gain[c]),
                "shared_coverage": json_float(sharing.shared_coverage[c]),
                "share_rate": json_float(sharing.share_rate[c]),
                "saving": json_float(sharing.saving[c]),
                "saved_blocks": json_float(sharing.saved_blocks[c]),
                "disabled_rate": json_float(sharing.disabled_rate[c]),
                "shared": bool(sharing.is_shared[c]),
            }
            for c in range(sharing.num_clusters)
        ],
    }


def write_figures(out_dir, model_name, report, clustering, sharing, held_grid, cal_grid):
    """The four calibration figures (the longest length's selection); returns their paths."""
    prefix = out_dir / f"calibration_{model_name}"
    labels = clustering.labels
    shown = list(np.flatnonzero(sharing.is_shared)[np.argsort(-sharing.size[sharing.is_shared])])
    others = [c for c in np.argsort(-sharing.size) if c not in shown]
    shown = (shown + others)[:4]
    records = np.array(sharing.member_coverage, float).reshape(-1, 3)
    member_cluster = records[:, 0].astype(int)
    within, between = within_between_distances(cal_grid.mean(0), labels)
    n_shared = int(sharing.is_shared.sum())
    return [
        figures.plot_cluster_map(
            labels,
            sharing.is_shared,
            f"{prefix}_clusters.png",
            title=f"{model_name}: {clustering.num_clusters} clusters, {n_shared} shared (coloured)",
        ),
        figures.plot_pivot_members(
            held_grid[0],
            labels,
            shown,
            sharing.pivot,
            f"{prefix}_pivots.png",
            title=f"{model_name}: pivot (left) and members on a held-out prompt,"
            " sqrt(block-averaged attention)",
        ),
        figures.plot_coverage_histogram(
            records[:, 1],
            records[:, 2],
            sharing.is_shared[member_cluster],
            report["sharing_by_length"][str(max(report["lengths"]))]["min_coverage"],
            f"{prefix}_coverage.png",
            title=f"{model_name}: members' mass in the pivot's pattern (held-out)",
        ),
        figures.plot_distance_distributions(
            within,
            between,
            f"{prefix}_distances.png",
            xlabel="RMS row Hellinger distance between heads' mean maps",
            title=f"{model_name}: pattern distance within vs across clusters",
        ),
    ]


def json_float(value):
    """A float for the JSON report: 5 digits, None for NaN."""
    value = float(value)
    return None if np.isnan(value) else round(value, 5)
