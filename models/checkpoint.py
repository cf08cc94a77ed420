"""Converted checkpoint directories (the only module that imports orbax).

Layout:
  config.json            HF-style model config (`ModelConfig.to_hf`)
  tokenizer.json         tokenizer (with tokenizer_config.json: special tokens, chat template)
  params/                orbax checkpoint of the parameter tree (`models.llama.parameter_shapes`)
  conversion.json        source, dtype, converter version

A checkpoint is written into a hidden staging directory beside it (`.<name>.<random>`, holding an
`.owner` file with the writing process's host and pid) and renamed when complete. Staging
directories left by killed processes are removed by the next `save_checkpoint` beside them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from models.config import ModelConfig, extend_context, read_config_json
from models.llama import Transformer, parameter_shapes
from models.sharding import param_shardings
from models.tokenizer import Tokenizer

# A staging directory without an owner record is taken as abandoned after this long; one whose
# owner cannot be checked (another host), after STALE_STAGING_MAX_AGE_S.
UNOWNED_STAGING_MAX_AGE_S = 3600.0
STALE_STAGING_MAX_AGE_S = 7 * 24 * 3600.0
_OWNER_FILE = ".owner"


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
    remove_stale_staging(directory)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        owner = {"host": socket.gethostname(), "pid": os.getpid()}
        (staging / _OWNER_FILE).write_text(json.dumps(owner) + "\n")
        (staging / "config.json").write_text(json.dumps(config.to_hf(), indent=2) + "\n")
        (staging / "conversion.json").write_text(json.dumps(conversion, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(staging)
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / "params", params)
        checkpointer.wait_until_finished()
        checkpointer.close()
        (staging / _OWNER_FILE).unlink()
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def remove_stale_staging(directory: str | Path) -> list[Path]:
    """Deletes the staging directories of `directory` that no running process will finish.

    A staging directory is stale when the process recorded in its owner file is gone (same host),
    when it has no owner file and is older than UNOWNED_STAGING_MAX_AGE_S, or when it is older
    than STALE_STAGING_MAX_AGE_S.

    Args:
      directory: the checkpoint directory whose `.<name>.*` siblings are examined.

    Returns:
      The directories removed.
    """
    directory = Path(directory).absolute()
    if not directory.parent.is_dir():
        return []
    removed = []
    for staging in directory.parent.glob(f".{directory.name}.*"):
        if staging.is_dir() and _is_stale(staging):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


def _is_stale(staging: Path) -> bool:
    try:
        age = time.time() - staging.stat().st_mtime
    except FileNotFoundError:
        return False  # renamed or removed meanwhile
    if age > STALE_STAGING_MAX_AGE_S:
        return True
    try:
        owner = json.loads((staging / _OWNER_FILE).read_text())
        host, pid = owner["host"], int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return age > UNOWNED_STAGING_MAX_AGE_S
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


def checkpoint_problem(directory: str | Path) -> str | None:
    """Why `directory` is not a complete checkpoint directory, or None when it is one.

    Checks the files, that config.json parses, that params/ holds orbax metadata and that the
    stored parameter tree has the names and shapes the config implies (no array data is read).

    Args:
      directory: the checkpoint directory.

    Returns:
      One line saying what is wrong, or None.
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        return f"{directory} is not a directory"
    for name in ("config.json", "conversion.json"):
        if not (directory / name).is_file():
            return f"{directory} has no {name}"
    params = directory / "params"
    if not params.is_dir():
        return f"{directory} has no params/"
    if not any(params.iterdir()):
        return f"{params} is empty"
    if not (params / "_METADATA").is_file():
        return f"{params} has no orbax metadata (_METADATA)"
    try:
        config = read_config(directory)
        json.loads((directory / "conversion.json").read_text())
        _check_tree(config, _stored_tree(params))
    except (OSError, ValueError) as error:
        return f"{directory}: {error}"
    return None


def _stored_tree(params: Path) -> Any:
    """The stored parameter tree's metadata (names, shapes, dtypes) from orbax."""
    checkpointer = ocp.StandardCheckpointer()
    try:
        metadata = checkpointer.metadata(params).item_metadata
    finally:
        checkpointer.close()
    if metadata is None or getattr(metadata, "tree", None) is None:
        raise ValueError(f"{params} holds no readable orbax checkpoint metadata")
    return metadata.tree


def read_config(directory: str | Path) -> ModelConfig:
    """The model config of a checkpoint directory."""
    return read_config_json(Path(directory) / "config.json")


def load_params(
    directory: str | Path,
    config: ModelConfig,
    *,
    dtype: Any = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
    """Restores the parameter tree onto devices.

    Args:
      directory: the checkpoint directory.
      config: its config (gives the expected shapes).
      dtype: cast parameters to this dtype (e.g. jnp.bfloat16); None keeps the stored dtype.
      mesh: a (data, model) mesh: each parameter is restored straight into its shards
        (`models.sharding.param_shardings`), every host reading only its own; None: the
        whole tree on the first device.

    Returns:
      The nested parameter tree of jax arrays.
    """
    path = Path(directory).absolute() / "params"
    stored = _stored_tree(path)
    _check_tree(config, stored)
    checkpointer = ocp.StandardCheckpointer()
    if mesh is None:
        one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: one_device, stored)
    else:
        shardings = param_shardings(config, mesh)
    abstract = jax.tree.map(
        lambda meta, sharding: jax.ShapeDtypeStruct(
            tuple(meta.shape), meta.dtype if dtype is None else dtype, sharding=sharding
        ),
        stored,
        shardings,
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
    mesh: jax.sharding.Mesh | None = None,
    yarn_factor: float | None = None,
) -> LoadedCheckpoint:
    """Loads model, tokenizer and provenance from a checkpoint directory.

    Args:
      directory: the checkpoint directory.
      dtype: parameter dtype after loading (None: as stored).
      mesh: restore the parameters sharded over this (data, model) mesh (None: one device).
      yarn_factor: extend the model's context this many times with YaRN
        (`models.config.extend_context`); None: the context it was trained for.

    Returns:
      The loaded checkpoint.
    """
    directory = Path(directory)
    if not (directory / "params").is_dir():
        raise FileNotFoundError(f"{directory} is not a checkpoint directory (no params/)")
    problem = checkpoint_problem(directory)
    if problem is not None:
        raise ValueError(f"{directory} is not a complete checkpoint: {problem}")
    config = read_config(directory)
    params = load_params(directory, config, dtype=dtype, mesh=mesh)
    if yarn_factor is not None:
        config = extend_context(config, yarn_factor)
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
