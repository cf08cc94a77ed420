"""GGUF files (llama.cpp; `llama` and `qwen2` architectures) to the parameter tree, dequantized.

llama.cpp's converter permutes the q/k projection rows of `llama`-architecture models so that
RoPE rotates adjacent pairs; they are permuted back to the HF half-rotation layout here. `qwen2`
files use the NeoX (half-rotation) layout already and are taken as they are.

Llama 3.1+ files carry `rope_freqs.weight`, the per-frequency divisors of llama3 rope scaling;
it becomes the config's llama3 rope settings, once checked to reproduce the tensor.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from tqdm.auto import tqdm

from models.config import ModelConfig, RopeConfig
from models.convert.common import ParameterFiller, fill_from_hf_layout, target_of
from models.rope import inverse_frequencies

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
ROPE_FREQS = "rope_freqs.weight"
# llama3 scaling that llama.cpp's converter assumes where the HF config leaves a key out; Llama
# 3.1 (factor 8) and 3.2 (factor 32) use these. The factor is read off the tensor.
_LLAMA3_LOW_FREQ_FACTOR = 1.0
_LLAMA3_HIGH_FREQ_FACTOR = 4.0
_LLAMA3_ORIGINAL_CONTEXT = 8192
# Where GGUFReader's constructor was when a damaged file made it fail.
_READER_STAGES = {
    "_build_fields": "metadata",
    "_build_tensor_info": "tensor table",
    "_build_tensors": "tensor data",
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


def open_gguf(path: str | Path) -> GGUFReader:
    """Opens a GGUF file, naming the file and the damaged part when it cannot be read.

    Args:
      path: the .gguf file.

    Returns:
      The reader.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    size = path.stat().st_size
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        return GGUFReader(str(path))
    except (ValueError, IndexError, KeyError, OverflowError, TypeError) as error:
        stage = "header"
        for frame in traceback.extract_tb(error.__traceback__):
            stage = _READER_STAGES.get(frame.name, stage)
        raise ValueError(
            f"{path} is truncated or corrupt: its GGUF {stage} cannot be read from its "
            f"{size} bytes ({type(error).__name__}: {error})"
        ) from error


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


def hf_config_from_gguf(reader: GGUFReader, *, source: str = "GGUF file") -> dict[str, Any]:
    """Builds an HF-style `config.json` dict from GGUF metadata, refusing what it cannot express.

    Args:
      reader: the open GGUF file.
      source: the file's name, for error messages.

    Returns:
      The config dict (model_type "llama" or "qwen2").
    """
    metadata = read_metadata(reader)
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{source}: GGUF general.architecture={arch!r} is not one of {ARCHITECTURES}"
        )
    prefix = f"{arch}."
    unknown = sorted(
        k for k in metadata if k.startswith(prefix) and k[len(prefix) :] not in _KNOWN_ARCH_KEYS
    )
    if unknown:
        raise ValueError(
            f"{source}: GGUF metadata keys {unknown} are not understood; refusing to guess"
        )

    def get(key: str, default: Any = None) -> Any:
        value = metadata.get(prefix + key, default)
        if isinstance(value, list):
            raise ValueError(
                f"{source}: GGUF {prefix + key}={value} varies per layer; not supported"
            )
        return value

    def require(key: str, kind: type) -> Any:
        value = get(key)
        if value is None:
            raise ValueError(f"{source}: GGUF metadata lacks {prefix + key}")
        try:
            return kind(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: GGUF {prefix + key}={value!r} is not a number") from error

    tensors = {tensor.name: tensor for tensor in reader.tensors}
    num_heads = require("attention.head_count", int)
    hidden = require("embedding_length", int)
    head_dim = int(get("attention.key_length", hidden // num_heads))
    for key in ("attention.value_length", "rope.dimension_count"):
        if int(get(key, head_dim)) != head_dim:
            raise ValueError(
                f"{source}: GGUF {prefix + key}={get(key)} differs from head_dim={head_dim}"
            )
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise ValueError(f"{source}: GGUF metadata lacks tokenizer.ggml.tokens (the vocabulary)")
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    if int(get("vocab_size", vocab)) != vocab:
        raise ValueError(
            f"{source}: GGUF {prefix}vocab_size={get('vocab_size')} but {vocab} tokens"
        )
    hf: dict[str, Any] = {
        "model_type": arch,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": require("feed_forward_length", int),
        "num_hidden_layers": require("block_count", int),
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(get("attention.head_count_kv", num_heads)),
        "head_dim": head_dim,
        "rms_norm_eps": require("attention.layer_norm_rms_epsilon", float),
        "max_position_embeddings": require("context_length", int),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in tensors,
        "hidden_act": "silu",
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
    }
    scaling = get("rope.scaling.type", "none")
    if scaling != "none" and ROPE_FREQS in tensors:
        raise ValueError(
            f"{source}: GGUF has both {prefix}rope.scaling.type={scaling!r} and a {ROPE_FREQS!r} "
            "tensor; refusing to guess which scaling applies"
        )
    if scaling == "linear":
        hf["rope_scaling"] = {
            "rope_type": "linear",
            "factor": require("rope.scaling.factor", float),
        }
    elif scaling == "yarn":
        hf["rope_scaling"] = {
            "rope_type": "yarn",
            "factor": require("rope.scaling.factor", float),
            "original_max_position_embeddings": require(
                "rope.scaling.original_context_length", int
            ),
        }
    elif scaling != "none":
        raise ValueError(f"{source}: GGUF {prefix}rope.scaling.type={scaling!r} is not supported")
    if ROPE_FREQS in tensors:
        original = int(get("rope.scaling.original_context_length", _LLAMA3_ORIGINAL_CONTEXT))
        hf["rope_scaling"] = llama3_scaling_from_rope_freqs(
            dequantized(tensors[ROPE_FREQS]),
            theta=hf["rope_theta"],
            head_dim=head_dim,
            original_context=original,
            source=source,
        )
    if arch == "llama":
        hf["attention_bias"] = "blk.0.attn_q.bias" in tensors
        hf["mlp_bias"] = "blk.0.ffn_gate.bias" in tensors
    else:
        hf["use_sliding_window"] = False
    return hf


def llama3_scaling_from_rope_freqs(
    factors: np.ndarray, *, theta: float, head_dim: int, original_context: int, source: str
) -> dict[str, Any]:
    """The llama3 `rope_scaling` dict whose frequencies llama.cpp's `rope_freqs` tensor encodes.

    llama.cpp divides each rotation frequency by its entry of `rope_freqs` (1 for short
    wavelengths, `factor` for long ones, a smooth ramp between). The factor is the largest entry;
    the other settings are the ones llama.cpp's converter writes the tensor from (low 1, high 4,
    the GGUF's original context length or 8192). The result must reproduce every entry.

    Args:
      factors: float32[H // 2], the tensor.
      theta: rope base frequency.
      head_dim: H.
      original_context: the pretraining context the ramp is placed by.
      source: the file's name, for error messages.

    Returns:
      {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
      "original_max_position_embeddings"}.
    """
    factors = np.asarray(factors, np.float32).reshape(-1)
    if factors.shape != (head_dim // 2,):
        raise ValueError(
            f"{source}: GGUF tensor {ROPE_FREQS!r} has {factors.size} entries; head_dim={head_dim} "
            f"needs {head_dim // 2}"
        )
    if not np.all(np.isfinite(factors) & (factors > 0)):
        raise ValueError(
            f"{source}: GGUF tensor {ROPE_FREQS!r} holds non-positive or non-finite entries"
        )
    scaling = {
        "rope_type": "llama3",
        "factor": float(factors.max()),
        "low_freq_factor": _LLAMA3_LOW_FREQ_FACTOR,
        "high_freq_factor": _LLAMA3_HIGH_FREQ_FACTOR,
        "original_max_position_embeddings": original_context,
    }
    rope = RopeConfig(theta=theta, **scaling)
    base, _ = inverse_frequencies(RopeConfig(theta=theta), head_dim)
    scaled, _ = inverse_frequencies(rope, head_dim)
    implied = base / scaled
    if not np.allclose(implied, factors, rtol=1e-4, atol=0):
        worst = int(np.argmax(np.abs(implied - factors) / factors))
        raise ValueError(
            f"{source}: GGUF tensor {ROPE_FREQS!r} is not llama3 rope scaling with factor="
            f"{scaling['factor']}, low_freq_factor={_LLAMA3_LOW_FREQ_FACTOR}, high_freq_factor="
            f"{_LLAMA3_HIGH_FREQ_FACTOR}, original context {original_context}: entry {worst} is "
            f"{factors[worst]}, that scaling gives {implied[worst]}"
        )
    return scaling


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


_FLOAT_TYPES = {
    GGMLQuantizationType.F32: "float32",
    GGMLQuantizationType.F16: "float16",
    GGMLQuantizationType.BF16: "bfloat16",
}


def gguf_source_dtype(reader: GGUFReader) -> str:
    """The dtype that keeps a GGUF file's weights: their float type when every matrix has the
    same one (F32, F16 or BF16), else (quantized matrices) "bfloat16"."""
    kinds = {
        _FLOAT_TYPES.get(tensor.tensor_type) for tensor in reader.tensors if len(tensor.shape) >= 2
    }
    return kinds.pop() if len(kinds) == 1 and None not in kinds else "bfloat16"


def convert_gguf(
    path: str | Path, *, dtype: str = "float32", scratch_dir: str | Path | None = None
) -> tuple[ModelConfig, dict[str, Any], dict[str, Any]]:
    """Dequantizes every tensor of a GGUF file into the parameter tree, strictly.

    Args:
      path: the .gguf file.
      dtype: "float32", "bfloat16" or "float16" for the stored parameters.
      scratch_dir: where the tree's arrays are memory-mapped (None: in host memory).

    Returns:
      The config, the nested parameter tree of numpy arrays and the HF config dict.
    """
    reader = open_gguf(path)
    hf = hf_config_from_gguf(reader, source=str(path))
    config = ModelConfig.from_hf(hf, source=f"{path} (GGUF metadata)")
    filler = ParameterFiller(config, dtype, scratch_dir=scratch_dir)
    is_permuted = hf["model_type"] == "llama"
    for tensor in tqdm(reader.tensors, desc=f"dequantizing {Path(path).name}", leave=False):
        name = tensor.name
        if name == ROPE_FREQS:  # read into the config's rope settings above
            filler.mark_used(name)
            continue
        target, layer = _target_of(name)
        array = dequantized(tensor)
        if is_permuted and target in ("layers/q_proj", "layers/q_bias"):
            array = unpermute_rope_rows(array, config.num_heads)
        elif is_permuted and target in ("layers/k_proj", "layers/k_bias"):
            array = unpermute_rope_rows(array, config.num_kv_heads)
        fill_from_hf_layout(filler, target, array, source=name, layer=layer)
    return config, filler.finish(), hf


def _target_of(name: str) -> tuple[str, int | None]:
    return target_of(
        name,
        top_targets=_TOP_TARGETS,
        layer_tensor=_LAYER_TENSOR,
        layer_targets=_LAYER_TARGETS,
        unknown="GGUF tensor {name!r} is not a known llama/qwen2 parameter",
    )
