"""Offline calibration: cluster heads by their attention maps and choose the shared clusters.

Works on arrays of block maps (collecting them from a model is `models.collect`); the CLI is
`sharedsparse-calibrate` (`sharedsparse_cli.calibrate`). Modules: `maps` (resampling, features,
distances), `autoencoder` (the map autoencoder), `cluster` (embeddings, hierarchical
clustering), `selection` (the online rule replayed on held-out maps), `observations`
(similarity and stability measures), `pipeline` (all of it, and the table), `figures`
(matplotlib plots).
"""

from sharedsparse_jax.calibrate.autoencoder import (
    AutoencoderConfig,
    MapAutoencoder,
    TrainedAutoencoder,
    train_autoencoder,
)
from sharedsparse_jax.calibrate.cluster import (
    DEFAULT_EMBEDDING,
    DEFAULT_THRESHOLDS,
    EMBEDDINGS,
    ClusterConfig,
    HeadClustering,
    cluster_embedded,
    cluster_embeddings,
    cluster_heads,
    embed_heads,
)
from sharedsparse_jax.calibrate.maps import (
    hellinger_distances,
    map_features,
    pool_maps,
    resample_maps,
)
from sharedsparse_jax.calibrate.observations import (
    adjusted_rand_index,
    cross_coverage,
    distance_summary,
    pair_groups,
    similarity_report,
    within_between_distances,
)
from sharedsparse_jax.calibrate.pipeline import (
    TOOL_VERSION,
    Calibration,
    CalibrationConfig,
    build_table,
    calibrate,
    grid_maps,
    length_bands,
    sharing_sample,
    stability,
    sweep,
)
from sharedsparse_jax.calibrate.selection import (
    ClusterSharing,
    HeadEvidence,
    SelectionConfig,
    SharingSample,
    head_evidence,
    simulate_sharing,
)

__all__ = [
    "DEFAULT_EMBEDDING",
    "DEFAULT_THRESHOLDS",
    "EMBEDDINGS",
    "TOOL_VERSION",
    "AutoencoderConfig",
    "Calibration",
    "CalibrationConfig",
    "ClusterConfig",
    "ClusterSharing",
    "HeadClustering",
    "HeadEvidence",
    "MapAutoencoder",
    "SelectionConfig",
    "SharingSample",
    "TrainedAutoencoder",
    "adjusted_rand_index",
    "build_table",
    "calibrate",
    "cluster_embedded",
    "cluster_embeddings",
    "cluster_heads",
    "cross_coverage",
    "distance_summary",
    "embed_heads",
    "grid_maps",
    "head_evidence",
    "hellinger_distances",
    "length_bands",
    "map_features",
    "pair_groups",
    "pool_maps",
    "resample_maps",
    "sharing_sample",
    "similarity_report",
    "simulate_sharing",
    "stability",
    "sweep",
    "train_autoencoder",
    "within_between_distances",
]
