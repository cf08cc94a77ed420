"""Checkpoint conversion: HF safetensors directories and GGUF files into checkpoint directories."""

from __future__ import annotations

import tempfile
from pathlib import Path

from models.checkpoint import save_checkpoint
from models.convert.common import CONVERTER_VERSION, STORED_DTYPES
from models.convert.gguf import convert_gguf, gguf_source_dtype, open_gguf
from models.convert.safetensors_hf import convert_safetensors, safetensors_source_dtype
from models.tokenizer import Tokenizer

__all__ = [
    "CONVERTER_VERSION",
    "STORED_DTYPES",
    "convert_checkpoint",
    "convert_gguf",
    "convert_safetensors",
    "source_dtype",
]


def source_dtype(source: str | Path) -> str:
    """The stored dtype that `dtype="auto"` converts a source to: the source's own float dtype
    (an HF checkpoint's, or a GGUF file's unquantized one), bfloat16 for quantized GGUF files.

    Args:
      source: HF checkpoint directory or .gguf file.

    Returns:
      "float32", "bfloat16" or "float16".
    """
    source = Path(source)
    if source.is_file():
        return gguf_source_dtype(open_gguf(source))
    if source.is_dir():
        return safetensors_source_dtype(source)
    raise FileNotFoundError(f"{source} does not exist")


def convert_checkpoint(source: str | Path, destination: str | Path, *, dtype: str = "auto") -> Path:
    """Converts an HF safetensors directory or a GGUF file into a checkpoint directory.

    Tensors are read one at a time into memory-mapped scratch files beside the destination and
    written from there, so the whole model is never held in host memory beside its source.

    Args:
      source: HF checkpoint directory (config.json, *.safetensors, tokenizer files) or a .gguf.
      destination: the checkpoint directory to create (must not exist).
      dtype: "auto" (`source_dtype`), "float32", "bfloat16" or "float16" for the stored
        parameters.

    Returns:
      The checkpoint directory.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    if dtype == "auto":
        dtype = source_dtype(source)
    if dtype not in STORED_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not auto or one of {STORED_DTYPES}")
    destination = Path(destination).absolute()
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Not named `.<name>.*`: save_checkpoint takes those for abandoned staging directories.
    scratch_prefix = f".{destination.name}-scratch."
    with tempfile.TemporaryDirectory(prefix=scratch_prefix, dir=destination.parent) as scratch:
        if source.is_file():
            config, params, _ = convert_gguf(source, dtype=dtype, scratch_dir=scratch)
            tokenizer = Tokenizer.from_gguf(open_gguf(source), source=str(source))
            source_format = "gguf"
        else:
            config, params = convert_safetensors(source, dtype=dtype, scratch_dir=scratch)
            has_tokenizer = (source / "tokenizer.json").is_file()
            tokenizer = Tokenizer.from_directory(source) if has_tokenizer else None
            source_format = "hf-safetensors"
        conversion = {
            "source": str(source.absolute()),
            "format": source_format,
            "dtype": dtype,
            "converter_version": CONVERTER_VERSION,
        }
        return save_checkpoint(
            destination, config=config, params=params, tokenizer=tokenizer, conversion=conversion
        )
