"""One model over many devices: meshes, sharding rules and attention inside shard_map.

A mesh has a `data` axis (the batch) and a `model` axis (tensor parallelism: query and kv heads,
the MLP's hidden units). Every parameter has logical axes (`PARAMETER_AXES`); `LOGICAL_RULES`
maps logical axes to mesh axes, as MaxText and jax-llm-examples do. Parameters are placed by
those rules (`param_shardings`, used by `models.checkpoint.load_params` so each host restores
only its shards), XLA partitions the matmuls from them, and attention runs inside
`jax.shard_map` (`ShardedAttention`): each device plans and attends its own heads, a kv head
together with its query heads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from models.attention import PrefillAttention, bucket_attention
from models.config import ModelConfig
from models.llama import parameter_shapes

DATA, MODEL = "data", "model"
MESH_AXES = (DATA, MODEL)

# Logical axes of every parameter (models.llama.parameter_shapes).
PARAMETER_AXES: dict[str, tuple[str, ...]] = {
    "embed": ("vocab", "embed"),
    "final_norm": ("embed",),
    "lm_head": ("embed", "vocab"),
    "attn_norm": ("layers", "embed"),
    "q_proj": ("layers", "embed", "q_heads", "head_dim"),
    "k_proj": ("layers", "embed", "kv_heads", "head_dim"),
    "v_proj": ("layers", "embed", "kv_heads", "head_dim"),
    "o_proj": ("layers", "q_heads", "head_dim", "embed"),
    "mlp_norm": ("layers", "embed"),
    "gate_proj": ("layers", "embed", "mlp"),
    "up_proj": ("layers", "embed", "mlp"),
    "down_proj": ("layers", "mlp", "embed"),
    "q_bias": ("layers", "q_heads", "head_dim"),
    "k_bias": ("layers", "kv_heads", "head_dim"),
    "v_bias": ("layers", "kv_heads", "head_dim"),
    "o_bias": ("layers", "embed"),
    "gate_bias": ("layers", "mlp"),
    "up_bias": ("layers", "mlp"),
    "down_bias": ("layers", "embed"),
}
# Logical axis -> mesh axis (None: replicated).
LOGICAL_RULES: dict[str, str | None] = {
    "batch": DATA,
    "q_heads": MODEL,
    "kv_heads": MODEL,
    "mlp": MODEL,
    "vocab": None,
    "embed": None,
    "layers": None,
    "head_dim": None,
    "sequence": None,
}


def partition_spec(logical_axes: Sequence[str]) -> P:
    """The PartitionSpec of a tensor with these logical axes."""
    return P(*(LOGICAL_RULES[axis] for axis in logical_axes))


def parse_mesh_shape(text: str) -> dict[str, int]:
    """`data=2,model=4` -> {"data": 2, "model": 4}; an axis left out has size 1.

    Raises:
      ValueError naming what is wrong (unknown axis, repeated axis, size below 1).
    """
    shape = dict.fromkeys(MESH_AXES, 1)
    seen = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, size = part.partition("=")
        name = name.strip()
        if name not in MESH_AXES or not size.strip().isdigit() or name in seen:
            raise ValueError(
                f"mesh shape {text!r}: write axis=size pairs over {MESH_AXES}, each once, e.g."
                " 'data=1,model=8'"
            )
        seen.add(name)
        shape[name] = int(size)
        if shape[name] < 1:
            raise ValueError(f"mesh shape {text!r}: {name} must be >= 1")
    return shape


def make_mesh(shape: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, model) mesh over `devices` (default: every device of every process).

    One process may use the first data x model of its devices; a mesh of several processes
    spans all of their devices.

    Raises:
      ValueError when the devices are too few (or, over several processes, not all used).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = tuple(shape.get(axis, 1) for axis in MESH_AXES)
    needed = math.prod(sizes)
    if needed > len(devices) or (needed < len(devices) and jax.process_count() > 1):
        raise ValueError(
            f"mesh data={sizes[0]}, model={sizes[1]} needs {needed} devices, there are"
            f" {len(devices)}"
        )
    # Auto axes: XLA propagates the parameters' shardings to the activations and reshards at
    # the shard_map boundary (explicit axes would make every mismatch a type error).
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(sizes, MESH_AXES, axis_types=axis_types, devices=devices[:needed])


def check_mesh(config: ModelConfig, mesh: Mesh) -> None:
    """Raises a ValueError if the model cannot be split over the mesh's model axis.

    Each model shard holds whole GQA groups: the kv heads, the query heads and the MLP's hidden
    units must divide by the axis size.
    """
    size = mesh.shape[MODEL]
    if config.num_kv_heads < size:
        raise ValueError(
            f"model axis of size {size} is larger than the {config.num_kv_heads} kv heads: a kv"
            " head and its query heads stay on one device, so the model axis can be at most"
            f" {config.num_kv_heads}"
        )
    for what, count in (
        ("kv heads", config.num_kv_heads),
        ("query heads", config.num_heads),
        ("MLP hidden units", config.intermediate_size),
    ):
        if count % size:
            raise ValueError(f"the model's {count} {what} do not divide by the model axis {size}")


def param_shardings(config: ModelConfig, mesh: Mesh) -> dict[str, Any]:
    """NamedShardings of the parameter tree (`models.llama.parameter_shapes` layout)."""
    check_mesh(config, mesh)

    def sharding_of(name: str) -> NamedSharding:
        return NamedSharding(mesh, partition_spec(PARAMETER_AXES[name]))

    shapes = parameter_shapes(config)
    tree: dict[str, Any] = {name: sharding_of(name) for name in shapes if name != "layers"}
    tree["layers"] = {name: sharding_of(name) for name in shapes["layers"]}
    return tree


@dataclasses.dataclass(frozen=True, eq=False)
class ShardedAttention:
    """A prefill attention run inside `jax.shard_map`: batch over `data`, heads over `model`.

    Each device gets its batch rows and its consecutive heads (whole GQA groups). Dense
    attention needs nothing else; a SharePrefillAttention must be built with
    `head_axis="model"` so its cross-head steps (pivot choice, pattern hand-off, stats) become
    collectives over that axis. The state and stats come back per batch row, the same on every
    model shard.

    Attributes:
      inner: the attention each device runs on its shard.
      mesh: a mesh with axes ("data", "model").
    """

    inner: PrefillAttention
    mesh: Mesh

    def init_state(self, batch: int, num_queries: int, num_keys: int | None = None) -> Any:
        return self.inner.init_state(batch, num_queries, num_keys)

    def check_model(self, num_layers: int, num_heads: int) -> None:
        self.inner.check_model(num_layers, num_heads)
        if num_heads % self.mesh.shape[MODEL]:
            raise ValueError(
                f"{num_heads} query heads do not divide by the model axis {self.mesh.shape[MODEL]}"
            )

    def for_bucket(self, lengths, **bucket) -> tuple[ShardedAttention, dict | None]:
        """The inner attention's choice for this bucket (`bucket_attention`), still sharded."""
        inner, known_stats = bucket_attention(self.inner, lengths, **bucket)
        return (self if inner is self.inner else ShardedAttention(inner, self.mesh)), known_stats

    def __call__(self, q, k, v, state, *, layer, lengths):
        """One layer; q [B, T, N, H], k and v [B, S, K, H] as for the inner attention."""
        batch = q.shape[0]
        if batch % self.mesh.shape[DATA]:
            raise ValueError(
                f"batch {batch} does not divide by the data axis {self.mesh.shape[DATA]}"
            )
        if k.shape[2] % self.mesh.shape[MODEL]:
            raise ValueError(
                f"{k.shape[2]} kv heads do not divide by the model axis {self.mesh.shape[MODEL]}"
            )
        heads = partition_spec(("batch", "sequence", "q_heads", "head_dim"))
        kv_heads = partition_spec(("batch", "sequence", "kv_heads", "head_dim"))
        rows = P(DATA)  # every state and stats leaf has the batch first

        def attend(q, k, v, state, layer, lengths):
            return self.inner(q, k, v, state, layer=layer, lengths=lengths)

        return jax.shard_map(
            attend,
            mesh=self.mesh,
            in_specs=(heads, kv_heads, kv_heads, rows, P(), rows),
            out_specs=(heads, rows, rows),
            # The library's loops start from constants that the shards then vary; the state and
            # stats are replicated over "model" by the inner attention's own collectives.
            check_vma=False,
        )(q, k, v, state, layer, lengths)
