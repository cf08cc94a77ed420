"""Random weights of a model's shape: tests, smoke runs and timing without a checkpoint.

    model = random_model(config, seed=0, dtype=jnp.bfloat16)

Every parameter is drawn on the device inside one jit (no host copy, so an 8B-shaped model
fits where its weights fit): projection weights normal with standard deviation 1.5 / sqrt(fan
in), the embedding with 1.5, norm weights 1 + 0.2 N(0, 1), biases 0.1 N(0, 1). The scales make
logits peaked, so that greedy decoding and attention patterns are not flat.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from models.checkpoint import model_from_params
from models.config import ModelConfig
from models.llama import Transformer, parameter_shapes
from models.sharding import param_shardings

__all__ = ["random_model", "random_params"]


def _scale(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, standard deviation) of a parameter's entries."""
    if name.endswith("norm"):
        return 1.0, 0.2
    if name.endswith("bias"):
        return 0.0, 0.1
    if name == "embed":
        return 0.0, 1.5
    fan_in = shape[1] if name.startswith("layers/") else shape[0]
    return 0.0, 1.5 / fan_in**0.5


def random_params(
    config: ModelConfig, seed: int = 0, *, dtype: Any = jnp.float32, mesh: Any = None
) -> dict:
    """A parameter tree of `config`'s shapes (`models.llama.parameter_shapes`), drawn on device.

    Args:
      config: the model config.
      seed: the draw's seed.
      dtype: parameter dtype.
      mesh: draw each parameter straight into its shards over this (data, model) mesh
        (`models.sharding.param_shardings`); None: one device.

    Returns:
      The nested tree of jax arrays.
    """
    shapes = parameter_shapes(config)
    flat = {k: v for k, v in shapes.items() if k != "layers"}
    flat |= {f"layers/{k}": v for k, v in shapes["layers"].items()}

    shardings = None
    if mesh is not None:
        by_name = param_shardings(config, mesh)
        shardings = {name: by_name[name] for name in flat if "/" not in name}
        shardings |= {f"layers/{k}": v for k, v in by_name["layers"].items()}

    @functools.partial(jax.jit, out_shardings=shardings)
    def draw() -> dict[str, jax.Array]:
        keys = jax.random.split(jax.random.key(seed), len(flat))
        out = {}
        for key, (name, shape) in zip(keys, sorted(flat.items()), strict=True):
            mean, std = _scale(name, tuple(shape))
            out[name] = (mean + std * jax.random.normal(key, tuple(shape))).astype(dtype)
        return out

    arrays = draw()
    params = {k: arrays[k] for k in flat if not k.startswith("layers/")}
    params["layers"] = {k: arrays[f"layers/{k}"] for k in shapes["layers"]}
    return params


def random_model(
    config: ModelConfig, seed: int = 0, *, dtype: Any = jnp.float32, mesh: Any = None
) -> Transformer:
    """A `Transformer` of `config`'s shape with `random_params` weights (sharded over `mesh`)."""
    return model_from_params(config, random_params(config, seed, dtype=dtype, mesh=mesh))
