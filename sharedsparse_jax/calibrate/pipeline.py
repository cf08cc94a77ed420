"""The offline pipeline on arrays of maps: cluster heads, choose shared clusters, build the table.

Collecting maps from a model lives in `models.collect`; `sharedsparse-calibrate` joins the two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from sharedsparse_jax.calibrate import maps
from sharedsparse_jax.calibrate.cluster import (
    ClusterConfig,
    HeadClustering,
    cluster_embedded,
    cluster_heads,
)
from sharedsparse_jax.calibrate.observations import adjusted_rand_index
from sharedsparse_jax.calibrate.selection import (
    ClusterSharing,
    HeadEvidence,
    SelectionConfig,
    SharingSample,
    simulate_sharing,
)
from sharedsparse_jax.sharing import SharingTable

TOOL_VERSION = "sharedsparse-calibrate 1"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationConfig:
    """Everything the offline pipeline decides with.

    Attributes:
      grid: G, the side of the resampled maps the heads are clustered on.
      cluster: embedding and hierarchical clustering settings.
      selection: the simulated planner and the thresholds for sharing.
    """

    grid: int = 32
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    selection: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)

    def __post_init__(self):
        if self.grid < 4:
            raise ValueError(f"grid must be >= 4, got {self.grid}")
        if self.cluster.embedding == "autoencoder" and self.cluster.autoencoder.grid != self.grid:
            raise ValueError(
                f"the autoencoder's grid ({self.cluster.autoencoder.grid}) must equal grid"
                f" ({self.grid})"
            )


class Calibration(NamedTuple):
    """The pipeline's result: the clustering, what sharing measured, and the table."""

    clustering: HeadClustering
    sharing: ClusterSharing
    table: SharingTable


def grid_maps(block_maps: np.ndarray, length: int, block_size: int, grid: int) -> np.ndarray:
    """Resamples a prompt's block maps to the clustering grid.

    Args:
      block_maps: [..., Tb, Tb] for a prompt of `length` tokens in blocks of `block_size`.
      length: real tokens.
      block_size: tokens per block.
      grid: G.

    Returns:
      float32[..., G, G].
    """
    rows = np.clip(length - np.arange(block_maps.shape[-1]) * block_size, 0, block_size)
    return maps.resample_maps(block_maps, grid, rows_per_block=rows)


def sharing_sample(
    block_maps: np.ndarray,
    length: int,
    block_size: int,
    estimates: Mapping[str, np.ndarray],
    planner_block_size: int,
) -> SharingSample:
    """One held-out prompt's maps pooled to the planner's blocks, with its estimates.

    Args:
      block_maps: [L, N, Tb, Tb] in blocks of `block_size` (which must divide the planner's).
      length: real tokens.
      block_size: tokens per block of `block_maps`.
      estimates: the planner's last-block estimates ([L, N, ...], `models.collect` names).
      planner_block_size: the planner's block size.

    Returns:
      The sample.
    """
    if planner_block_size % block_size:
        raise ValueError(
            f"the maps' block size {block_size} must divide the planner's {planner_block_size}"
        )
    pooled = maps.pool_maps(block_maps, planner_block_size // block_size, length, block_size)
    return SharingSample(
        block_maps=pooled,
        vertical=np.asarray(estimates["vertical"], np.float32),
        slash=np.asarray(estimates["slash"], np.float32),
        num_vertical=np.asarray(estimates["num_vertical"], np.int32),
        num_slash=np.asarray(estimates["num_slash"], np.int32),
        query_aware=np.asarray(estimates["query_aware"], bool),
    )


def build_table(
    labels: np.ndarray, is_shared: np.ndarray, metadata: Mapping[str, Any] | None = None
) -> SharingTable:
    """A sharing table from cluster labels; ids are "1".."C" in order of first member.

    Args:
      labels: int[L, N] cluster 0..C-1 of every head (every head in a cluster).
      is_shared: bool[C] which clusters share.
      metadata: provenance to store with the table.

    Returns:
      The table.
    """
    labels = np.asarray(labels)
    num_clusters = int(labels.max()) + 1 if labels.size else 0
    if labels.min(initial=0) < 0 or set(np.unique(labels)) != set(range(num_clusters)):
        raise ValueError("labels must number clusters 0..C-1 with every cluster used")
    is_shared = np.asarray(is_shared, bool)
    if is_shared.shape != (num_clusters,):
        raise ValueError(f"is_shared must be [{num_clusters}], got shape {is_shared.shape}")
    return SharingTable(
        cluster_of=labels.astype(np.int32),
        cluster_ids=tuple(str(c + 1) for c in range(num_clusters)),
        is_shared=is_shared,
        metadata=dict(metadata or {}),
    )


def calibrate(
    cluster_maps: np.ndarray,
    heldout: Sequence[SharingSample],
    config: CalibrationConfig,
    metadata: Mapping[str, Any] | None = None,
    *,
    clustering: HeadClustering | None = None,
    evidence: Sequence[HeadEvidence] | None = None,
) -> Calibration:
    """Clusters heads on calibration maps and chooses shared clusters on held-out samples.

    Args:
      cluster_maps: [S, L, N, G, G] grid maps of the calibration samples.
      heldout: held-out samples at the planner's block size.
      config: the pipeline's settings.
      metadata: provenance (model, texts, lengths); the settings are added.
      clustering: the clustering of `cluster_maps` under `config.cluster`, when already made.
      evidence: `head_evidence` of the held-out samples, when already computed.

    Returns:
      The clustering, the sharing measurements and the table.
    """
    if clustering is None:
        clustering = cluster_heads(cluster_maps, config.cluster)
    if clustering.labels.shape != tuple(cluster_maps.shape[1:3]):
        raise ValueError(
            f"clustering is for {clustering.labels.shape} heads, the maps for"
            f" {cluster_maps.shape[1:3]}"
        )
    sharing = simulate_sharing(clustering.labels, heldout, config.selection, evidence=evidence)
    planner = config.selection.planner
    settings = {
        "tool_version": TOOL_VERSION,
        "grid": config.grid,
        "embedding": config.cluster.embedding,
        "linkage": config.cluster.linkage,
        "distance_threshold": config.cluster.threshold,
        "min_coverage": config.selection.min_coverage,
        "min_coverage_gain": config.selection.min_coverage_gain,
        "min_saving": config.selection.min_saving,
        "min_share_rate": config.selection.min_share_rate,
        "min_size": config.selection.min_size,
        "planner": {
            "block_size": planner.block_size,
            "gamma": planner.gamma,
            "tau_sim": planner.tau_sim,
            "tau_fb": planner.tau_fb,
            "tau_qa": planner.tau_qa,
            "min_budget": planner.min_budget,
        },
    }
    if config.cluster.embedding == "autoencoder":
        settings["autoencoder"] = dataclasses.asdict(config.cluster.autoencoder)
    table = build_table(clustering.labels, sharing.is_shared, {**(metadata or {}), **settings})
    return Calibration(clustering, sharing, table)


def length_bands(
    lengths: Sequence[int], is_shared: Sequence[np.ndarray]
) -> tuple[tuple[int, ...], np.ndarray]:
    """Length bands of a table from the shared clusters chosen at each calibration length.

    A band reaches from the geometric mean of two neighbouring calibration lengths to the next
    such mean (the first from 0); neighbouring bands with the same choice are merged.

    Args:
      lengths: ascending calibration lengths in tokens.
      is_shared: bool[C] per length.

    Returns:
      The bands' lower bounds (the first 0) and bool[bands, C].
    """
    if len(lengths) != len(is_shared) or not lengths:
        raise ValueError(f"one choice per length: {len(lengths)} lengths, {len(is_shared)} choices")
    if any(b <= a for a, b in zip(lengths[:-1], lengths[1:], strict=True)):
        raise ValueError(f"lengths must increase, got {list(lengths)}")
    bounds, rows = [0], [np.asarray(is_shared[0], bool)]
    for a, b, flags in zip(lengths[:-1], lengths[1:], is_shared[1:], strict=True):
        flags = np.asarray(flags, bool)
        if (flags != rows[-1]).any():
            bounds.append(int(round((a * b) ** 0.5)))
            rows.append(flags)
    return tuple(bounds), np.stack(rows)


def stability(
    embeddings: Mapping[str, np.ndarray],
    pairs: Mapping[str, tuple[str, str]],
    threshold: float,
    linkage: str = "average",
) -> dict[str, float]:
    """Adjusted Rand index between clusterings of the same heads made from different inputs.

    Args:
      embeddings: input name -> [L, N, E] embeddings made from that input alone.
      pairs: comparison name -> (input name, input name); pairs naming a missing input are
        skipped.
      threshold, linkage: the clustering cut.

    Returns:
      comparison name -> ARI.
    """
    labels = {
        name: cluster_embedded(e, threshold, linkage).labels for name, e in embeddings.items()
    }
    return {
        name: adjusted_rand_index(labels[a], labels[b])
        for name, (a, b) in pairs.items()
        if a in labels and b in labels
    }


def sweep(
    embeddings: Mapping[str, Mapping[str, np.ndarray]],
    pairs: Mapping[str, tuple[str, str]],
    thresholds: Sequence[float],
    heldout: Sequence[SharingSample],
    selection: SelectionConfig,
    *,
    linkage: str = "average",
    evidence: Sequence[HeadEvidence] | None = None,
) -> list[dict[str, Any]]:
    """Stability and sharing quality of each embedding over a range of thresholds.

    Args:
      embeddings: embedding name -> input name -> [L, N, E]; input "all" is the clustering the
        table would use.
      pairs: stability comparisons, as for `stability`.
      thresholds: distance cuts to try.
      heldout: held-out samples for the sharing simulation.
      selection: the selection config.
      linkage: scipy linkage method.
      evidence: `head_evidence` of the held-out samples.

    Returns:
      One row per (embedding, threshold): clusters, ARIs ("ari_<pair>"), shared clusters and
      heads, the model-wide saving, the size-weighted mean coverage of all clusters and the
      size-weighted coverage gain of the shared ones.
    """
    rows = []
    for embedding, inputs in embeddings.items():
        for threshold in thresholds:
            clustering = cluster_embedded(inputs["all"], threshold, linkage)
            sharing = simulate_sharing(clustering.labels, heldout, selection, evidence=evidence)
            shared = sharing.is_shared
            aris = stability(inputs, pairs, threshold, linkage)
            rows.append(
                {
                    "embedding": embedding,
                    "threshold": float(threshold),
                    "clusters": clustering.num_clusters,
                    **{f"ari_{name}": value for name, value in aris.items()},
                    "shared_clusters": int(shared.sum()),
                    "shared_heads": int(sharing.size[shared].sum()),
                    "model_saving": sharing.model_saving,
                    "mean_coverage": _weighted_mean(sharing.coverage, sharing.size),
                    "shared_gain": _weighted_mean(
                        sharing.coverage_gain[shared], sharing.size[shared]
                    ),
                }
            )
    return rows


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    values, weights = np.asarray(values, float), np.asarray(weights, float)
    keep = ~np.isnan(values)
    if not keep.any() or weights[keep].sum() == 0:
        return float("nan")
    return float(np.average(values[keep], weights=weights[keep]))
