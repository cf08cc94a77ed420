"""Where a model comes from: a built-in name, a converted checkpoint directory, an HF safetensors
directory or a GGUF file. The last two are converted once into the cache and found there again.

    from models.sources import load_source
    loaded, name = load_source("path/to/Llama-3.1-8B-Instruct")   # converted once, then loaded

A source's converted directory is `<cache>/checkpoints/<name>-<digest>-<dtype>-v<version>`,
where the digest covers the source's absolute path and its files' sizes and modification times:
an edited source converts again, an unchanged one never does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from models.cache import cache_root
from models.checkpoint import LoadedCheckpoint, checkpoint_problem, load_checkpoint
from models.config import ModelConfig, read_config_json
from models.convert import CONVERTER_VERSION, STORED_DTYPES, source_dtype
from models.convert.gguf import hf_config_from_gguf, open_gguf
from models.fetch import BUILTIN_MODELS, builtin_checkpoint, cached_conversion

__all__ = [
    "conversion_target",
    "load_source",
    "resolve_source",
    "source_name",
    "source_problem",
]


def source_problem(source: str, *, needs_tokenizer: bool = True) -> str | None:
    """What is wrong with a model source, read without converting or loading it (None: nothing).

    Reads a converted directory's metadata, an HF directory's config.json, or a GGUF file's
    metadata (not its tensors), so that a damaged source is named before any work starts.

    Args:
      source: a built-in name, a converted checkpoint directory, an HF safetensors directory or
        a .gguf file.
      needs_tokenizer: a directory without tokenizer.json is a problem (prompts are text).

    Returns:
      One line naming the source, or None.
    """
    if source in BUILTIN_MODELS:
        return None
    path = Path(source).expanduser()
    if not path.exists():
        return (
            f"{source}: not a built-in model ({', '.join(BUILTIN_MODELS)}) and no such file or"
            " directory"
        )
    try:
        if path.is_dir():
            if (path / "params").is_dir():
                problem = checkpoint_problem(path)
                if problem is not None:
                    return f"{source}: {problem}"
            elif not (path / "config.json").is_file():
                return f"{source}: neither params/ nor config.json in it"
            else:
                read_config_json(path / "config.json")
            if needs_tokenizer and not (path / "tokenizer.json").is_file():
                return f"{source}: no tokenizer.json in it, so no prompt can be encoded"
            return None
        ModelConfig.from_hf(
            hf_config_from_gguf(open_gguf(path), source=str(path)), source="its GGUF metadata"
        )
    except (OSError, ValueError) as error:
        # Errors about the file name it already.
        return str(error) if str(error).startswith(str(path)) else f"{source}: {error}"
    return None


def source_name(source: str) -> str:
    """The model's name: a built-in name (also for a built-in's converted directory, so that its
    shipped sharing table applies), else the source's directory name or file name without
    `.gguf`."""
    if source in BUILTIN_MODELS:
        return source
    path = Path(source).expanduser()
    if (path / "params").is_dir():
        return next((b for b in BUILTIN_MODELS if path.name.startswith(f"{b}-")), path.name)
    return path.name.removesuffix(".gguf")


def conversion_target(source: str, *, dtype: str = "auto") -> Path | None:
    """The cache directory an HF directory or GGUF file converts into (None for a built-in name
    or a converted directory, which need no conversion here).

    Args:
      source: the model source.
      dtype: stored dtype, "auto" (`models.convert.source_dtype`) or one of STORED_DTYPES.
    """
    path = Path(source).expanduser()
    if source in BUILTIN_MODELS or (path / "params").is_dir():
        return None
    if dtype == "auto":
        dtype = source_dtype(path)
    if dtype not in STORED_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not auto or one of {STORED_DTYPES}")
    name = f"{source_name(source)}-{_source_digest(path)}-{dtype}-v{CONVERTER_VERSION}"
    return cache_root() / "checkpoints" / name


def resolve_source(source: str, *, dtype: str = "auto") -> Path:
    """The converted checkpoint directory of a source, fetching or converting it once.

    Args:
      source: a built-in name (fetched and converted once, stored in float32), a converted
        checkpoint directory (used as it is), an HF safetensors directory or a .gguf file
        (converted once into the cache).
      dtype: stored dtype of a conversion: "auto" keeps the source's float dtype (bfloat16 for
        quantized GGUF files), or one of STORED_DTYPES.

    Returns:
      The checkpoint directory.
    """
    if source in BUILTIN_MODELS:
        return builtin_checkpoint(source)
    path = Path(source).expanduser()
    if (path / "params").is_dir():
        return path
    problem = source_problem(source, needs_tokenizer=False)
    if problem is not None:
        raise ValueError(problem)
    stored = source_dtype(path) if dtype == "auto" else dtype
    return cached_conversion(path, conversion_target(source, dtype=stored), dtype=stored)


def load_source(
    source: str,
    *,
    dtype: Any = None,
    stored_dtype: str = "auto",
    mesh: Any = None,
    yarn_factor: float | None = None,
) -> tuple[LoadedCheckpoint, str]:
    """Loads a model from any source (see `resolve_source`), converting it once if needed.

    Args:
      source: the model source.
      dtype: parameter dtype after loading (e.g. jnp.bfloat16); None keeps the stored one.
      stored_dtype: the stored dtype of a conversion ("auto" or one of STORED_DTYPES).
      mesh: restore the parameters sharded over this (data, model) mesh (None: one device).
      yarn_factor: extend the context with YaRN (`models.config.extend_context`).

    Returns:
      The loaded checkpoint and the model's name (`source_name`).
    """
    directory = resolve_source(source, dtype=stored_dtype)
    loaded = load_checkpoint(directory, dtype=dtype, mesh=mesh, yarn_factor=yarn_factor)
    return loaded, source_name(source)


def _source_digest(path: Path) -> str:
    """A short digest of a source's absolute path, sizes and modification times."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256(str(path.absolute()).encode())
    for file in files:
        info = file.stat()
        digest.update(f"{file.name}:{info.st_size}:{info.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]
