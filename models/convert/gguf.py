"""GGUF files (llama.cpp; `llama` and `qwen2` architectures) to the parameter tree, dequantized.

llama.cpp's converter permutes the q/k projection rows of `llama`-architecture models so that
RoPE rotates adjacent pairs; they are permuted back to the HF half-rotation layout here. `qwen2`
files use the NeoX (half-rotation) layout already and are taken as they are.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from tqdm.auto import tqdm

from models.config import ModelConfig
from models.convert.common import ParameterFiller, fill_from_hf_layout

ARCHITECTURES = ("llama", "qwen2")

_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)$")
_LAYER_TARGETS = {
    "attn_norm.weight": "layers/attn_norm",
    "ffn_norm.weight": "layers/mlp_norm",
    "attn_q.weight": "layers/q_proj",
    "attn_k.weight": "layers/k_proj",
    "attn_v.weight": "layers/v_proj",
    "attn_output.weight": "layers/o_proj",
    "attn_q.bias": "layers/q_bias",
    "attn_k.bias": "layers/k_bias",
    "attn_v.bias": "layers/v_bias",
    "attn_output.bias": "layers/o_bias",
    "ffn_gate.weight": "layers/gate_proj",
    "ffn_up.weight": "layers/up_proj",
    "ffn_down.weight": "layers/down_proj",
    "ffn_gate.bias": "layers/gate_bias",
    "ffn_up.bias": "layers/up_bias",
    "ffn_down.bias": "layers/down_bias",
}
_TOP_TARGETS = {
    "token_embd.weight": "embed",
    "output_norm.weight": "final_norm",
    "output.weight": "lm_head",
}
# Architecture metadata keys (after "<arch>.") that this converter reads or checks.
_KNOWN_ARCH_KEYS = frozenset(
    {
        "attention.head_count",
        "attention.head_count_kv",
        "attention.key_length",
        "attention.layer_norm_rms_epsilon",
        "attention.value_length",
        "block_count",
        "context_length",
        "embedding_length",
        "feed_forward_length",
        "rope.dimension_count",
        "rope.freq_base",
        "rope.scaling.factor",
        "rope.scaling.finetuned",
        "rope.scaling.original_context_length",
        "rope.scaling.type",
        "vocab_size",
    }
)


def read_metadata(reader: GGUFReader) -> dict[str, Any]:
    """Every metadata field except the large tokenizer arrays, as Python values."""
    skip = {
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.scores",
    }
    return {
        name: field.contents()
        for name, field in reader.fields.items()
        if name not in skip and not name.startswith("GGUF.")
    }


def hf_config_from_gguf(reader: GGUFReader) -> dict[str, Any]:
    """Builds an HF-style `config.json` dict from GGUF metadata, refusing what it cannot express.

    Args:
      reader: the open GGUF file.

    Returns:
      The config dict (model_type "llama" or "qwen2").
    """
    metadata = read_metadata(reader)
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"GGUF general.architecture={arch!r} is not one of {ARCHITECTURES}")
    prefix = f"{arch}."
    unknown = sorted(
        k for k in metadata if k.startswith(prefix) and k[len(prefix) :] not in _KNOWN_ARCH_KEYS
    )
    if unknown:
        raise ValueError(f"GGUF metadata keys {unknown} are not understood; refusing to guess")

    def get(key: str, default: Any = None) -> Any:
        value = metadata.get(prefix + key, default)
        if isinstance(value, list):
            raise ValueError(f"GGUF {prefix + key}={value} varies per layer; not supported")
        return value

    tensors = {tensor.name for tensor in reader.tensors}
    if "rope_freqs.weight" in tensors:
        raise ValueError(
            "GGUF tensor 'rope_freqs.weight' (precomputed rope frequency factors) is not supported"
        )
    num_heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    head_dim = int(get("attention.key_length", hidden // num_heads))
    for key in ("attention.value_length", "rope.dimension_count"):
        if int(get(key, head_dim)) != head_dim:
            raise ValueError(f"GGUF {prefix + key}={get(key)} differs from head_dim={head_dim}")
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    if int(get("vocab_size", vocab)) != vocab:
        raise ValueError(f"GGUF {prefix}vocab_size={get('vocab_size')} but {vocab} tokens")
    hf: dict[str, Any] = {
        "model_type": arch,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(get("attention.head_count_kv", num_heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(get("context_length")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in tensors,
        "hidden_act": "silu",
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
    }
    scaling = get("rope.scaling.type", "none")
    if scaling == "linear":
        hf["rope_scaling"] = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    elif scaling == "yarn":
        hf["rope_scaling"] = {
            "rope_type": "yarn",
            "factor": float(get("rope.scaling.factor")),
            "original_max_position_embeddings": int(get("rope.scaling.original_context_length")),
        }
    elif scaling != "none":
        raise ValueError(f"GGUF {prefix}rope.scaling.type={scaling!r} is not supported")
    if arch == "llama":
        hf["attention_bias"] = "blk.0.attn_q.bias" in tensors
        hf["mlp_bias"] = "blk.0.ffn_gate.bias" in tensors
    else:
        hf["use_sliding_window"] = False
    return hf


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's pair-interleaving of q/k rows (weight [n*H, D] or bias [n*H]).

    Within each head, llama.cpp orders rows (0, H/2, 1, H/2+1, ...); HF orders them (0, 1, ...).
    """
    head_dim = weight.shape[0] // num_heads
    rest = weight.shape[1:]
    heads = weight.reshape(num_heads, head_dim // 2, 2, *rest)
    return np.swapaxes(heads, 1, 2).reshape(weight.shape)


def dequantized(tensor: Any) -> np.ndarray:
    """A GGUF tensor as float32 numpy, in the HF (out, in) layout."""
    array = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    return array.reshape(shape)


def convert_gguf(
    path: str | Path, *, dtype: str = "float32"
) -> tuple[ModelConfig, dict[str, Any], dict[str, Any]]:
    """Dequantizes every tensor of a GGUF file into the parameter tree, strictly.

    Args:
      path: the .gguf file.
      dtype: "float32", "bfloat16" or "float16" for the stored parameters.

    Returns:
      The config, the nested parameter tree of numpy arrays and the HF config dict.
    """
    reader = GGUFReader(str(path))
    hf = hf_config_from_gguf(reader)
    config = ModelConfig.from_hf(hf)
    filler = ParameterFiller(config, dtype)
    is_permuted = hf["model_type"] == "llama"
    for tensor in tqdm(reader.tensors, desc=f"dequantizing {Path(path).name}", leave=False):
        name = tensor.name
        target, layer = _target_of(name)
        array = dequantized(tensor)
        if is_permuted and target in ("layers/q_proj", "layers/q_bias"):
            array = unpermute_rope_rows(array, config.num_heads)
        elif is_permuted and target in ("layers/k_proj", "layers/k_bias"):
            array = unpermute_rope_rows(array, config.num_kv_heads)
        fill_from_hf_layout(filler, target, array, source=name, layer=layer)
    return config, filler.finish(), hf


def _target_of(name: str) -> tuple[str, int | None]:
    if name in _TOP_TARGETS:
        return _TOP_TARGETS[name], None
    match = _LAYER_TENSOR.match(name)
    if match and match.group(2) in _LAYER_TARGETS:
        return _LAYER_TARGETS[match.group(2)], int(match.group(1))
    raise ValueError(f"GGUF tensor {name!r} is not a known llama/qwen2 parameter")
