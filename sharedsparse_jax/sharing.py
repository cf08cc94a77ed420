"""The sharing table (offline: which heads share) and the sharing state (online: pivot patterns).

The table is host data: `cluster_of[L, N]` (-1: no cluster) and which clusters share, possibly
per prompt-length band. It reads and writes the reference JSON schema, `{"clusters": {id:
[[layer, head], ...]}, "shared_clusters": [ids]}`, plus our own `"metadata"` and, when the
choice depends on length, `"shared_clusters_by_length": [{"min_tokens": 0, "shared_clusters":
[ids]}, ...]` (then `"shared_clusters"` lists every cluster shared in some band).

The state is a pytree of arrays with static shapes, one slot per shared cluster, threaded
through the layer loop as a value (a scan carry), never stored in a module.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

TABLE_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class SharingTable:
    """Cluster of every (layer, query head) and which clusters share a pivot's pattern.

    Attributes:
      cluster_of: int32[L, N], index into `cluster_ids`, or -1 for a head in no cluster (such a
        head never shares).
      cluster_ids: the clusters' ids as written in the JSON file.
      is_shared: bool[C], whether each cluster shares (in at least one length band).
      metadata: free-form provenance (model, calibration texts, thresholds, tool version).
      band_min_tokens: ascending lower bounds (tokens) of the prompt-length bands, the first 0;
        a prompt of n real tokens uses the last band whose bound is <= n.
      shared_by_band: bool[bands, C], which clusters share in each band (None: is_shared in
        the one band).
    """

    cluster_of: np.ndarray
    cluster_ids: tuple[str, ...]
    is_shared: np.ndarray
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    band_min_tokens: tuple[int, ...] = (0,)
    shared_by_band: np.ndarray | None = None

    def __post_init__(self):
        cluster_of = np.asarray(self.cluster_of)
        if cluster_of.ndim != 2:
            raise ValueError(f"cluster_of must be [L, N], got shape {cluster_of.shape}")
        num_clusters = len(self.cluster_ids)
        if np.asarray(self.is_shared).shape != (num_clusters,):
            raise ValueError(
                f"is_shared has shape {np.asarray(self.is_shared).shape}, expected"
                f" ({num_clusters},) for {num_clusters} clusters"
            )
        if ((cluster_of < -1) | (cluster_of >= num_clusters)).any():
            raise ValueError(f"cluster_of holds indices outside [-1, {num_clusters})")
        if len(set(self.cluster_ids)) != num_clusters:
            raise ValueError(f"duplicate cluster ids in {self.cluster_ids}")
        object.__setattr__(self, "cluster_of", cluster_of.astype(np.int32))
        object.__setattr__(self, "is_shared", np.asarray(self.is_shared, bool))
        bounds = tuple(int(b) for b in self.band_min_tokens)
        if not bounds or bounds[0] != 0 or any(np.diff(bounds) <= 0):
            raise ValueError(
                f"band_min_tokens must start at 0 and increase, got {list(self.band_min_tokens)}"
            )
        by_band = (
            self.is_shared[None]
            if self.shared_by_band is None
            else np.asarray(self.shared_by_band, bool)
        )
        if by_band.shape != (len(bounds), num_clusters):
            raise ValueError(
                f"shared_by_band has shape {by_band.shape}, expected ({len(bounds)},"
                f" {num_clusters}) for {len(bounds)} bands and {num_clusters} clusters"
            )
        if (by_band.any(axis=0) != self.is_shared).any():
            raise ValueError("is_shared must mark exactly the clusters shared in some band")
        object.__setattr__(self, "band_min_tokens", bounds)
        object.__setattr__(self, "shared_by_band", by_band)

    @property
    def num_layers(self) -> int:
        return self.cluster_of.shape[0]

    @property
    def num_heads(self) -> int:
        return self.cluster_of.shape[1]

    @property
    def num_shared(self) -> int:
        """C_s, the number of shared clusters (slots of the sharing state)."""
        return int(self.is_shared.sum())

    @property
    def shared_slot_of(self) -> np.ndarray:
        """int32[L, N]: the sharing-state slot of each head's cluster, -1 if it does not share."""
        slot_of_cluster = np.where(self.is_shared, np.cumsum(self.is_shared) - 1, -1)
        slot = np.where(self.cluster_of >= 0, slot_of_cluster[self.cluster_of], -1)
        return slot.astype(np.int32)

    def measured_dense_below(self, device_kind: str) -> dict[str, Any] | None:
        """The prompt length from which planning pays, as measured by `benchmarks.crossover` and
        stored in metadata["dense_below"][<device kind>].

        Args:
          device_kind: the device planning runs on (`jax.Device.device_kind`).

        Returns:
          {"tokens", "command", "date", "device"}: measured on `device_kind`; where it was not,
          the largest crossover measured on another device of the same maker (the first word of
          the kind: "NVIDIA H100 ..." stands in for "NVIDIA H200"), "device" naming it; None
          where neither was measured.
        """
        measured = dict(self.metadata).get("dense_below", {})
        for kind, entry in measured.items():
            if not isinstance(entry.get("tokens"), int):
                raise ValueError(f"sharing table metadata dense_below[{kind!r}] lacks tokens")
        if device_kind in measured:
            return measured[device_kind] | {"device": device_kind}
        maker = device_kind.split()[:1]
        kin = [kind for kind in measured if maker and kind.split()[:1] == maker]
        if not kin:
            return None
        kind = max(kin, key=lambda k: measured[k]["tokens"])
        return measured[kind] | {"device": kind}

    @property
    def slot_shared_by_band(self) -> np.ndarray:
        """bool[bands, C_s]: which sharing-state slots share in each length band."""
        return self.shared_by_band[:, self.is_shared]

    @classmethod
    def empty(cls, num_layers: int, num_heads: int) -> SharingTable:
        """A table with no clusters: SharePrefill then has no pivots and shares nothing."""
        return cls(
            np.full((num_layers, num_heads), -1, np.int32),
            (),
            np.zeros((0,), bool),
            {"note": "no clusters"},
        )

    def check_model(self, num_layers: int, num_heads: int) -> None:
        """Raises a ValueError if the table was made for another layer or head count."""
        if (self.num_layers, self.num_heads) != (num_layers, num_heads):
            raise ValueError(
                f"sharing table is for {self.num_layers} layers x {self.num_heads} query heads,"
                f" the model has {num_layers} x {num_heads}"
            )

    @classmethod
    def from_json_dict(
        cls, data: Mapping[str, Any], *, num_layers: int, num_heads: int
    ) -> SharingTable:
        """Builds a table from the reference schema, checking it against the model's shape."""
        if not isinstance(data, Mapping) or "clusters" not in data:
            raise ValueError("sharing table must be an object with a 'clusters' key")
        clusters = data["clusters"]
        if not isinstance(clusters, Mapping):
            raise ValueError("'clusters' must map cluster ids to lists of [layer, head]")
        metadata = dict(data.get("metadata", {}))
        for key, want in (("num_layers", num_layers), ("num_heads", num_heads)):
            if key in metadata and metadata[key] != want:
                raise ValueError(
                    f"sharing table metadata says {key}={metadata[key]}, the model has {want}"
                )
        cluster_ids = tuple(str(c) for c in clusters)
        cluster_of = np.full((num_layers, num_heads), -1, np.int32)
        for index, (cluster_id, members) in enumerate(clusters.items()):
            for member in members:
                if (
                    not isinstance(member, (list, tuple))
                    or len(member) != 2
                    or not all(isinstance(x, int) for x in member)
                ):
                    raise ValueError(
                        f"cluster {cluster_id!r}: members must be [layer, head] integer pairs,"
                        f" got {member!r}"
                    )
                layer, head = member
                if not 0 <= layer < num_layers:
                    raise ValueError(
                        f"cluster {cluster_id!r}: layer {layer} out of range [0, {num_layers})"
                    )
                if not 0 <= head < num_heads:
                    raise ValueError(
                        f"cluster {cluster_id!r}: head {head} out of range [0, {num_heads})"
                    )
                if cluster_of[layer, head] >= 0:
                    other = cluster_ids[cluster_of[layer, head]]
                    raise ValueError(
                        f"head [{layer}, {head}] is listed twice (clusters {other!r} and"
                        f" {cluster_id!r})"
                    )
                cluster_of[layer, head] = index

        def shared_flags(shared, where):
            if not isinstance(shared, (list, tuple)) or not all(
                isinstance(s, (str, int)) and not isinstance(s, bool) for s in shared
            ):
                raise ValueError(f"{where} must be a list of cluster ids, got {shared!r}")
            shared = [str(s) for s in shared]
            if len(set(shared)) != len(shared):
                raise ValueError(f"duplicate ids in {where}: {shared}")
            unknown = sorted(set(shared) - set(cluster_ids))
            if unknown:
                raise ValueError(f"{where} names unknown clusters {unknown}")
            return np.array([c in set(shared) for c in cluster_ids], bool)

        is_shared = shared_flags(data.get("shared_clusters", []), "'shared_clusters'")
        bands = data.get("shared_clusters_by_length")
        if bands is None:
            return cls(cluster_of, cluster_ids, is_shared, metadata)
        if not isinstance(bands, list) or not all(
            isinstance(b, Mapping) and set(b) == {"min_tokens", "shared_clusters"} for b in bands
        ):
            raise ValueError(
                "'shared_clusters_by_length' must be a list of {\"min_tokens\": n,"
                f' "shared_clusters": [ids]}} objects, got {bands!r}'
            )
        if not all(isinstance(b["min_tokens"], int) for b in bands):
            raise ValueError(f"band min_tokens must be integers, got {bands!r}")
        by_band = np.stack(
            [
                shared_flags(b["shared_clusters"], f"band {b['min_tokens']}'s shared_clusters")
                for b in bands
            ]
        )
        if (by_band.any(axis=0) != is_shared).any():
            raise ValueError(
                "'shared_clusters' must list exactly the clusters shared in some band of"
                " 'shared_clusters_by_length'"
            )
        bounds = tuple(b["min_tokens"] for b in bands)
        return cls(cluster_of, cluster_ids, is_shared, metadata, bounds, by_band)

    def to_json_dict(self) -> dict[str, Any]:
        clusters = {
            cluster_id: [
                [int(layer), int(head)] for layer, head in np.argwhere(self.cluster_of == index)
            ]
            for index, cluster_id in enumerate(self.cluster_ids)
        }
        metadata = {
            "format_version": TABLE_FORMAT_VERSION,
            **self.metadata,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
        }

        def ids(flags):
            return [c for c, s in zip(self.cluster_ids, flags, strict=True) if s]

        data = {"clusters": clusters, "shared_clusters": ids(self.is_shared), "metadata": metadata}
        if len(self.band_min_tokens) > 1:
            data["shared_clusters_by_length"] = [
                {"min_tokens": bound, "shared_clusters": ids(flags)}
                for bound, flags in zip(self.band_min_tokens, self.shared_by_band, strict=True)
            ]
        return data

    @classmethod
    def load(cls, path: str | Path, *, num_layers: int, num_heads: int) -> SharingTable:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"sharing table {path} is not valid JSON: {e}") from e
        return cls.from_json_dict(data, num_layers=num_layers, num_heads=num_heads)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json_dict(), indent=1) + "\n")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SharingState:
    """What the pivots of one forward pass left for later layers, per (batch, shared slot).

    Attributes:
      has_pivot: bool[B, C]: a pivot was chosen in an earlier layer (its pattern is ready once
        its layer's maps are absorbed).
      pattern: bool[B, C, Tb, Sb]: the pivot's block pattern (per-row gamma coverage of its
        map), over the forward pass's Tb query blocks and Sb key blocks.
      vertical: float32[B, C, Sb]: the pivot's block-pooled vertical profile.
      slash: float32[B, C, Sb]: the pivot's block-pooled slash profile, by block offset.
      vs_vertical, vs_slash: bool[B, C, Sb]: the pivot's own vertical-slash selection.
      vs_ratio: float32[B, C]: how much of the pivot's map its vertical-slash pattern covers.
    """

    has_pivot: jax.Array
    pattern: jax.Array
    vertical: jax.Array
    slash: jax.Array
    vs_vertical: jax.Array
    vs_slash: jax.Array
    vs_ratio: jax.Array

    @classmethod
    def initial(
        cls,
        batch: int,
        num_shared: int,
        num_q_blocks: int,
        num_k_blocks: int | None = None,
        dtype: jnp.dtype = jnp.float32,
    ) -> SharingState:
        """The state at the start of a forward pass over Tb query and Sb key blocks (Sb defaults
        to Tb: a whole prompt): no pivots yet."""
        slots = (batch, num_shared)
        keys = num_q_blocks if num_k_blocks is None else num_k_blocks
        return cls(
            has_pivot=jnp.zeros(slots, bool),
            pattern=jnp.zeros(slots + (num_q_blocks, keys), bool),
            vertical=jnp.zeros(slots + (keys,), dtype),
            slash=jnp.zeros(slots + (keys,), dtype),
            vs_vertical=jnp.zeros(slots + (keys,), bool),
            vs_slash=jnp.zeros(slots + (keys,), bool),
            vs_ratio=jnp.zeros(slots, dtype),
        )
