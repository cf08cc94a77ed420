"""Checkpoint conversion: HF safetensors directories and GGUF files into checkpoint directories."""

from __future__ import annotations

from pathlib import Path

from models.checkpoint import save_checkpoint
from models.convert.common import CONVERTER_VERSION
from models.convert.gguf import convert_gguf, open_gguf
from models.convert.safetensors_hf import convert_safetensors
from models.tokenizer import Tokenizer

__all__ = ["CONVERTER_VERSION", "convert_checkpoint", "convert_gguf", "convert_safetensors"]


def convert_checkpoint(
    source: str | Path, destination: str | Path, *, dtype: str = "float32"
) -> Path:
    """Converts an HF safetensors directory or a GGUF file into a checkpoint directory.

    Args:
      source: HF checkpoint directory (config.json, *.safetensors, tokenizer files) or a .gguf.
      destination: the checkpoint directory to create (must not exist).
      dtype: "float32", "bfloat16" or "float16" for the stored parameters.

    Returns:
      The checkpoint directory.
    """
    source = Path(source)
    if source.is_file():
        config, params, _ = convert_gguf(source, dtype=dtype)
        tokenizer = Tokenizer.from_gguf(open_gguf(source), source=str(source))
        source_format = "gguf"
    elif source.is_dir():
        config, params = convert_safetensors(source, dtype=dtype)
        has_tokenizer = (source / "tokenizer.json").is_file()
        tokenizer = Tokenizer.from_directory(source) if has_tokenizer else None
        source_format = "hf-safetensors"
    else:
        raise FileNotFoundError(f"{source} does not exist")
    conversion = {
        "source": str(source.absolute()),
        "format": source_format,
        "dtype": dtype,
        "converter_version": CONVERTER_VERSION,
    }
    return save_checkpoint(
        destination, config=config, params=params, tokenizer=tokenizer, conversion=conversion
    )
