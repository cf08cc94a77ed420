"""Hugging Face safetensors checkpoints (Llama / Mistral / Qwen2 naming) to the parameter tree."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from tqdm.auto import tqdm

from models.config import ModelConfig, read_config_json
from models.convert.common import ParameterFiller, fill_from_hf_layout, target_of

_LAYER_TENSOR = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_TARGETS = {
    "input_layernorm.weight": "layers/attn_norm",
    "post_attention_layernorm.weight": "layers/mlp_norm",
    "self_attn.q_proj.weight": "layers/q_proj",
    "self_attn.k_proj.weight": "layers/k_proj",
    "self_attn.v_proj.weight": "layers/v_proj",
    "self_attn.o_proj.weight": "layers/o_proj",
    "self_attn.q_proj.bias": "layers/q_bias",
    "self_attn.k_proj.bias": "layers/k_bias",
    "self_attn.v_proj.bias": "layers/v_bias",
    "self_attn.o_proj.bias": "layers/o_bias",
    "mlp.gate_proj.weight": "layers/gate_proj",
    "mlp.up_proj.weight": "layers/up_proj",
    "mlp.down_proj.weight": "layers/down_proj",
    "mlp.gate_proj.bias": "layers/gate_bias",
    "mlp.up_proj.bias": "layers/up_bias",
    "mlp.down_proj.bias": "layers/down_bias",
}
_TOP_TARGETS = {
    "model.embed_tokens.weight": "embed",
    "model.norm.weight": "final_norm",
    "lm_head.weight": "lm_head",
}
# Buffers some older checkpoints saved; they are recomputed from the config.
_DERIVED_BUFFERS = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def read_hf_config(directory: str | Path) -> ModelConfig:
    """Reads and validates `config.json` of an HF checkpoint directory."""
    return read_config_json(Path(directory) / "config.json")


def safetensors_files(directory: str | Path) -> list[Path]:
    """The checkpoint's safetensors shards, from the index when there is one."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / name for name in names]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {directory}")
    return files


# safetensors dtype names of the float dtypes a checkpoint can be stored in.
_FLOAT_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float32"}


def safetensors_source_dtype(directory: str | Path) -> str:
    """The float dtype holding most of an HF checkpoint's parameters ("float32", "bfloat16" or
    "float16"; float64 checkpoints are stored as float32). Reads only the files' headers."""
    counts: dict[str, int] = {}
    for path in safetensors_files(directory):
        with safe_open(str(path), framework="numpy") as handle:
            for name in handle.keys():
                tensor = handle.get_slice(name)
                kind = _FLOAT_DTYPES.get(tensor.get_dtype())
                if kind is not None:
                    counts[kind] = counts.get(kind, 0) + int(np.prod(tensor.get_shape()))
    if not counts:
        raise ValueError(f"{directory} holds no floating-point tensors")
    return max(counts, key=counts.get)


def convert_safetensors(
    directory: str | Path,
    config: ModelConfig | None = None,
    *,
    dtype: str = "float32",
    scratch_dir: str | Path | None = None,
) -> tuple[ModelConfig, dict[str, Any]]:
    """Streams every tensor of an HF checkpoint into the parameter tree, strictly.

    Every source tensor must map to exactly one target, every target must be filled exactly once,
    and every shape must match the config; errors name the tensor.

    Args:
      directory: HF checkpoint directory (config.json and *.safetensors).
      config: overrides the directory's config.json.
      dtype: "float32", "bfloat16" or "float16" for the stored parameters.
      scratch_dir: where the tree's arrays are memory-mapped (None: in host memory).

    Returns:
      The config and the nested parameter tree of numpy arrays.
    """
    config = read_hf_config(directory) if config is None else config
    filler = ParameterFiller(config, dtype, scratch_dir=scratch_dir)
    embed_for_tied_head = None
    for path in safetensors_files(directory):
        with safe_open(str(path), framework="numpy") as handle:
            for name in tqdm(list(handle.keys()), desc=path.name, leave=False):
                if _DERIVED_BUFFERS.match(name):
                    continue
                array = handle.get_tensor(name)
                if name == "lm_head.weight" and config.tie_word_embeddings:
                    embed_for_tied_head = array  # checked against the embedding below
                    continue
                target, layer = _target_of(name)
                fill_from_hf_layout(filler, target, array, source=name, layer=layer)
    params = filler.finish()
    if embed_for_tied_head is not None and not np.array_equal(
        embed_for_tied_head.astype(filler.dtype), params["embed"]
    ):
        raise ValueError(
            "lm_head.weight differs from model.embed_tokens.weight but tie_word_embeddings is true"
        )
    return config, params


def _target_of(name: str) -> tuple[str, int | None]:
    return target_of(
        name,
        top_targets=_TOP_TARGETS,
        layer_tensor=_LAYER_TENSOR,
        layer_targets=_LAYER_TARGETS,
        unknown="source tensor {name!r} is not a known Llama/Mistral/Qwen2 parameter",
    )
