"""Converted checkpoint directories (the only module that imports orbax).

Layout:
  config.json            HF-style model config (`ModelConfig.to_hf`)
  tokenizer.json         tokenizer (with tokenizer_config.json: special tokens, chat template)
  params/                orbax checkpoint of the parameter tree (`models.llama.parameter_shapes`)
  conversion.json        source, dtype, converter version
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from models.config import ModelConfig, read_config_json
from models.llama import Transformer, parameter_shapes
from models.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    """A model restored from a checkpoint directory, with what came with it."""

    model: Transformer
    config: ModelConfig
    tokenizer: Tokenizer | None
    conversion: dict[str, Any]


def save_checkpoint(
    directory: str | Path,
    *,
    config: ModelConfig,
    params: dict[str, Any],
    tokenizer: Tokenizer | None,
    conversion: dict[str, Any],
) -> Path:
    """Writes a checkpoint directory; it appears complete or not at all (written aside, renamed).

    Args:
      directory: where the checkpoint goes; must not exist yet.
      config: the model config.
      params: the nested parameter tree (numpy or jax arrays), shaped as `parameter_shapes`.
      tokenizer: the tokenizer, or None.
      conversion: provenance (source, dtype, converter version, ...), stored as conversion.json.

    Returns:
      The checkpoint directory.
    """
    directory = Path(directory).absolute()
    if directory.exists():
        raise FileExistsError(f"{directory} already exists")
    _check_tree(config, params)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (staging / "config.json").write_text(json.dumps(config.to_hf(), indent=2) + "\n")
        (staging / "conversion.json").write_text(json.dumps(conversion, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(staging)
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / "params", params)
        checkpointer.wait_until_finished()
        checkpointer.close()
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def read_config(directory: str | Path) -> ModelConfig:
    """The model config of a checkpoint directory."""
    return read_config_json(Path(directory) / "config.json")


def load_params(
    directory: str | Path,
    config: ModelConfig,
    *,
    dtype: Any = None,
    sharding: jax.sharding.Sharding | None = None,
) -> dict[str, Any]:
    """Restores the parameter tree onto devices.

    Args:
      directory: the checkpoint directory.
      config: its config (gives the expected shapes).
      dtype: cast parameters to this dtype (e.g. jnp.bfloat16); None keeps the stored dtype.
      sharding: where every parameter goes; default: the first device.

    Returns:
      The nested parameter tree of jax arrays.
    """
    path = Path(directory).absolute() / "params"
    checkpointer = ocp.StandardCheckpointer()
    stored = checkpointer.metadata(path).item_metadata.tree
    _check_tree(config, stored)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0]) if sharding is None else sharding
    abstract = jax.tree.map(
        lambda meta: jax.ShapeDtypeStruct(
            tuple(meta.shape), meta.dtype if dtype is None else dtype, sharding=sharding
        ),
        stored,
    )
    params = checkpointer.restore(path, abstract)
    checkpointer.close()
    return params


def model_from_params(config: ModelConfig, params: dict[str, Any]) -> Transformer:
    """Builds a `Transformer` around an existing parameter tree (no random initialisation).

    Args:
      config: the model config.
      params: nested parameter tree of arrays (`parameter_shapes` layout); all of one dtype.

    Returns:
      The model.
    """
    _check_tree(config, params)
    dtype = jax.tree.leaves(params)[0].dtype
    abstract = nnx.eval_shape(lambda: Transformer(config, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    return nnx.merge(graphdef, state)


def load_checkpoint(
    directory: str | Path,
    *,
    dtype: Any = None,
    sharding: jax.sharding.Sharding | None = None,
) -> LoadedCheckpoint:
    """Loads model, tokenizer and provenance from a checkpoint directory.

    Args:
      directory: the checkpoint directory.
      dtype: parameter dtype after loading (None: as stored).
      sharding: where parameters go (default: the first device).

    Returns:
      The loaded checkpoint.
    """
    directory = Path(directory)
    if not (directory / "params").is_dir():
        raise FileNotFoundError(f"{directory} is not a checkpoint directory (no params/)")
    config = read_config(directory)
    params = load_params(directory, config, dtype=dtype, sharding=sharding)
    tokenizer = (
        Tokenizer.from_directory(directory) if (directory / "tokenizer.json").is_file() else None
    )
    conversion = json.loads((directory / "conversion.json").read_text())
    return LoadedCheckpoint(
        model=model_from_params(config, params),
        config=config,
        tokenizer=tokenizer,
        conversion=conversion,
    )


def _check_tree(config: ModelConfig, params: dict[str, Any]) -> None:
    """Raises unless `params` has exactly the names and shapes the config implies."""
    expected = _flat(parameter_shapes(config))
    actual = {
        name: tuple(np.shape(leaf)) if not hasattr(leaf, "shape") else tuple(leaf.shape)
        for name, leaf in _flat(params).items()
    }
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    if missing or extra:
        raise ValueError(f"parameter tree mismatch: missing {missing}, unexpected {extra}")
    wrong = {n: (actual[n], expected[n]) for n in expected if actual[n] != tuple(expected[n])}
    if wrong:
        raise ValueError(f"parameter shapes (got, expected) differ from the config: {wrong}")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out |= _flat(value, f"{prefix}{key}/")
        return out
    return {prefix[:-1]: tree}
