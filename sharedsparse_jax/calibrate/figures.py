"""Calibration figures as PNG files (matplotlib's object API: no pyplot, no global state).

matplotlib is the optional `plot` extra; it is imported when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def plot_cluster_map(
    labels: np.ndarray, is_shared: np.ndarray, path: str | Path, *, title: str = ""
) -> Path:
    """Cluster of every (layer, head); shared clusters in colour, the others in grey.

    Args:
      labels: int[L, N] cluster 0..C-1 (drawn as ids 1..C).
      is_shared: bool[C].
      path: PNG file to write.
      title: figure title.

    Returns:
      The path.
    """
    from matplotlib import colormaps

    labels = np.asarray(labels)
    num_layers, num_heads = labels.shape
    is_shared = np.asarray(is_shared, bool)
    palette = colormaps["tab20"]
    shared_ids = np.flatnonzero(is_shared)
    colours = np.ones(labels.shape + (3,))
    for c in range(int(labels.max()) + 1):
        grey = 0.55 + 0.4 * ((c * 7919) % 10) / 10
        colours[labels == c] = grey
    for rank, c in enumerate(shared_ids):
        colours[labels == c] = palette(rank % 20)[:3]
    fig = _figure(1.2 + 0.45 * num_heads, 1.0 + 0.27 * num_layers)
    ax = fig.add_subplot()
    ax.imshow(colours, aspect="auto", interpolation="nearest")
    for layer in range(num_layers):
        for head in range(num_heads):
            c = labels[layer, head]
            ax.text(
                head,
                layer,
                str(c + 1),
                ha="center",
                va="center",
                fontsize=6,
                fontweight="bold" if is_shared[c] else "normal",
            )
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(num_heads))
    ax.set_yticks(range(0, num_layers, 2))
    ax.set_title(
        title or f"{int(labels.max()) + 1} clusters, {len(shared_ids)} shared (coloured)",
        fontsize=9,
    )
    fig.savefig(path)
    return Path(path)


def plot_pivot_members(
    grid_maps: np.ndarray,
    labels: np.ndarray,
    clusters: Sequence[int],
    pivots: np.ndarray,
    path: str | Path,
    *,
    members_per_cluster: int = 4,
    title: str = "",
) -> Path:
    """Each chosen cluster's pivot map next to a few of its members' maps (square-root scale).

    Args:
      grid_maps: [L, N, G, G] maps of one held-out prompt (or a mean).
      labels: int[L, N] clusters.
      clusters: which clusters to draw (0-based), one row each.
      pivots: int[C, 2] each cluster's pivot (layer, head).
      path: PNG file to write.
      members_per_cluster: members drawn after the pivot (spread over the cluster's layers).
      title: figure title.

    Returns:
      The path.
    """
    labels = np.asarray(labels)
    columns = members_per_cluster + 1
    fig = _figure(1.6 * columns + 0.4, 1.7 * len(clusters) + 0.5)
    axes = fig.subplots(len(clusters), columns, squeeze=False)
    for row, c in enumerate(clusters):
        pivot = tuple(int(x) for x in pivots[c])
        others = [tuple(m) for m in np.argwhere(labels == c) if tuple(m) != pivot]
        if len(others) > members_per_cluster:
            others = [others[int(i)] for i in np.linspace(0, len(others) - 1, members_per_cluster)]
        for col in range(columns):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            head = pivot if col == 0 else (others[col - 1] if col - 1 < len(others) else None)
            if head is None:
                ax.axis("off")
                continue
            ax.imshow(np.sqrt(grid_maps[head]), cmap="magma", interpolation="nearest")
            role = "pivot" if col == 0 else "member"
            ax.set_title(f"c{c + 1} {role} L{head[0]} H{head[1]}", fontsize=7)
    fig.suptitle(title or "pivot (left) and members, sqrt(block-averaged attention)", fontsize=9)
    fig.savefig(path)
    return Path(path)


def plot_coverage_histogram(
    coverage: np.ndarray,
    fallback_coverage: np.ndarray,
    is_member_shared: np.ndarray,
    min_coverage: float,
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """Histogram of members' mass covered by their pivot's pattern, by cluster decision.

    Args:
      coverage: [P] share of a later member's mass its pivot's pattern covers, per (sample,
        member).
      fallback_coverage: [P] the same members' own vertical-slash coverage.
      is_member_shared: bool[P] whether the member's cluster was chosen to share.
      min_coverage: the selection threshold (drawn as a line).
      path: PNG file to write.
      title: figure title.

    Returns:
      The path.
    """
    coverage = np.asarray(coverage)
    is_member_shared = np.asarray(is_member_shared, bool)
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(coverage[~is_member_shared], bins=bins, alpha=0.6, label="pivot pattern, not shared")
    ax.hist(coverage[is_member_shared], bins=bins, alpha=0.7, label="pivot pattern, shared")
    ax.hist(
        np.asarray(fallback_coverage),
        bins=bins,
        histtype="step",
        color="black",
        label="own vertical-slash (fallback)",
    )
    ax.axvline(min_coverage, color="red", linestyle="--", label=f"min_coverage {min_coverage}")
    ax.set_xlabel("share of a member's attention mass covered")
    ax.set_ylabel("(sample, member) pairs")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title or "coverage of members by their pivot's pattern (held-out)", fontsize=9)
    fig.savefig(path)
    return Path(path)


def plot_distance_distributions(
    within: np.ndarray, between: np.ndarray, path: str | Path, *, xlabel: str, title: str = ""
) -> Path:
    """Distributions of a pairwise measure within clusters against across clusters.

    Args:
      within, between: the pair values.
      path: PNG file to write.
      xlabel: what the values are.
      title: figure title.

    Returns:
      The path.
    """
    fig = _figure(6.0, 3.2)
    ax = fig.add_subplot()
    values = np.concatenate([np.ravel(within), np.ravel(between)])
    # A clustering of singletons has no within-cluster pair: its histogram is empty.
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    bins = np.linspace(lo, hi, 41)
    ax.hist(between, bins=bins, density=True, alpha=0.6, label=f"across clusters ({len(between)})")
    ax.hist(within, bins=bins, density=True, alpha=0.6, label=f"within clusters ({len(within)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.savefig(path)
    return Path(path)
