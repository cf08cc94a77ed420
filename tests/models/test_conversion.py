"""Conversion is strict: missing, extra, twice-used and misshapen tensors are refused by name.
GGUF conversion (including llama.cpp's q/k row permutation) checked on tiny files written here
from the oracle's tiny HF checkpoints."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter
from safetensors.numpy import load_file, save_file

from models import checkpoint, generate
from models.config import read_config_json
from models.convert import convert_checkpoint, convert_gguf, convert_safetensors
from models.convert.gguf import unpermute_rope_rows
from tests.models.conftest import load_reference


def _copy_with(tiny_hf_dir: Path, tmp_path: Path, name: str, edit) -> Path:
    """A copy of a tiny HF checkpoint whose tensors (dict) and config (dict) `edit` changes."""
    target = tmp_path / name
    shutil.copytree(tiny_hf_dir / name, target)
    tensors = load_file(target / "model.safetensors")
    config = json.loads((target / "config.json").read_text())
    edit(tensors, config)
    save_file(tensors, target / "model.safetensors")
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda t, c: t.pop("model.layers.1.mlp.up_proj.weight"),
            r"no source tensor filled \['layers/up_proj \(layers \[1\]\)'\]",
        ),
        (lambda t, c: t.pop("model.norm.weight"), r"no source tensor filled \['final_norm'\]"),
        (
            lambda t, c: t.__setitem__("model.layers.0.self_attn.q_norm.weight", np.ones(16, "f4")),
            "'model.layers.0.self_attn.q_norm.weight' is not a known",
        ),
        (
            lambda t, c: t.__setitem__(
                "model.layers.0.self_attn.k_proj.weight",
                t["model.layers.0.self_attn.k_proj.weight"].T.copy(),
            ),
            r"'model.layers.0.self_attn.k_proj.weight' has shape \(64, 32\); the config implies "
            r"\(32, 64\)",
        ),
        (
            lambda t, c: t.__setitem__("model.layers.3.input_layernorm.weight", np.ones(64, "f4")),
            "names layer 3, but the config has 3 layers",
        ),
        (
            lambda t, c: t.__setitem__("model.layers.0.self_attn.o_proj.bias", np.ones(64, "f4")),
            "maps to 'layers/o_bias', which this model config does not have",
        ),
        (
            lambda t, c: c.__setitem__(
                "rope_parameters", {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
            ),
            "rope type 'dynamic' is not supported",
        ),
        (lambda t, c: c.__setitem__("use_magic", True), r"\['use_magic'\] are not understood"),
    ],
    ids=[
        "missing-layer-tensor",
        "missing-norm",
        "extra-tensor",
        "wrong-shape",
        "layer-range",
        "bias-not-in-config",
        "rope-type",
        "config-key",
    ],
)
def test_safetensors_errors_name_the_cause(tiny_hf_dir, tmp_path, edit, message):
    source = _copy_with(tiny_hf_dir, tmp_path, "llama", edit)
    with pytest.raises(ValueError, match=message):
        convert_safetensors(source)


def test_tied_head_must_equal_embedding(tiny_hf_dir, tmp_path):
    def add_head(tensors, config):
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + 1.0

    source = _copy_with(tiny_hf_dir, tmp_path, "llama_linear_tied_gqa3", add_head)
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        convert_safetensors(source)


def test_checkpoint_directory_is_not_overwritten(tiny_hf_dir, tmp_path):
    convert_checkpoint(tiny_hf_dir / "qwen2", tmp_path / "ckpt")
    with pytest.raises(FileExistsError):
        convert_checkpoint(tiny_hf_dir / "qwen2", tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging left behind


def test_unpermute_restores_half_rotation_order():
    rng = np.random.default_rng(0)
    heads, head_dim, width = 3, 8, 5
    hf_rows = rng.standard_normal((heads * head_dim, width))
    # llama.cpp interleaves each head's rows as (0, H/2, 1, H/2 + 1, ...)
    order = np.stack([np.arange(head_dim // 2), np.arange(head_dim // 2) + head_dim // 2], 1)
    order = (np.arange(heads)[:, None] * head_dim + order.reshape(-1)[None]).reshape(-1)
    gguf_rows = hf_rows[order]
    np.testing.assert_array_equal(unpermute_rope_rows(gguf_rows, heads), hf_rows)
    np.testing.assert_array_equal(unpermute_rope_rows(gguf_rows[:, 0], heads), hf_rows[:, 0])


def _llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """The permutation llama.cpp's converter applies to q/k rows of llama models."""
    head_dim = weight.shape[0] // heads
    return (
        weight.reshape(heads, 2, head_dim // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_tiny_gguf(
    hf_dir: Path, path: Path, *, extra_metadata=None, extra_tensors=None, omit=()
) -> Path:
    """Writes an F32 GGUF the way llama.cpp's converter lays out a llama / qwen2 model.

    `omit` names metadata keys (after "<arch>.") to leave out.
    """
    config = json.loads((hf_dir / "config.json").read_text())
    arch = config["model_type"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = GGUFWriter(str(path), arch)
    metadata = {
        "block_count": (writer.add_block_count, config["num_hidden_layers"]),
        "context_length": (writer.add_context_length, config["max_position_embeddings"]),
        "embedding_length": (writer.add_embedding_length, config["hidden_size"]),
        "feed_forward_length": (writer.add_feed_forward_length, config["intermediate_size"]),
        "attention.head_count": (writer.add_head_count, heads),
        "attention.head_count_kv": (writer.add_head_count_kv, kv_heads),
        "attention.layer_norm_rms_epsilon": (writer.add_layer_norm_rms_eps, config["rms_norm_eps"]),
        "rope.freq_base": (writer.add_rope_freq_base, config["rope_parameters"]["rope_theta"]),
    }
    for key, (add, value) in metadata.items():
        if key not in omit:
            add(value)
    writer.add_token_list([f"t{i}" for i in range(config["vocab_size"])])
    for key, value in (extra_metadata or {}).items():
        writer.add_uint32(key, value)
    for name, value in load_file(hf_dir / "model.safetensors").items():
        if name == "model.embed_tokens.weight":
            gguf_name = "token_embd.weight"
        elif name == "model.norm.weight":
            gguf_name = "output_norm.weight"
        elif name == "lm_head.weight":
            gguf_name = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            gguf_name = f"blk.{layer}.{_GGUF_NAMES[rest]}"
            if arch == "llama" and rest.startswith("self_attn.q_proj"):
                value = _llama_cpp_permute(value, heads)
            if arch == "llama" and rest.startswith("self_attn.k_proj"):
                value = _llama_cpp_permute(value, kv_heads)
        writer.add_tensor(gguf_name, np.ascontiguousarray(value, np.float32))
    for name, value in (extra_tensors or {}).items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_cpp_rope_freqs(hf_config: dict, **overrides) -> np.ndarray:
    """`rope_freqs.weight` as llama.cpp's converter (LlamaModel.generate_extra_tensors) computes
    it from an HF config with llama3 rope scaling: the divisor of each rotation frequency."""
    rope = hf_config["rope_parameters"] | overrides
    dim = hf_config["head_dim"]
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_context = rope["original_max_position_embeddings"]
    factors = []
    for freq in freqs.tolist():
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, np.float32)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_gguf_conversion_matches_transformers(tiny_hf_dir, tmp_path, name):
    path = write_tiny_gguf(tiny_hf_dir / name, tmp_path / f"{name}.gguf")
    config, params, hf = convert_gguf(path)
    assert hf["model_type"] == name and config.qkv_bias == (name == "qwen2")
    model = checkpoint.model_from_params(config, params)
    reference = load_reference(tiny_hf_dir / name)
    logits = generate.prefill(model, reference["input_ids"], logit_positions="all").logits
    np.testing.assert_allclose(np.asarray(logits), reference["logits"], atol=1e-4, rtol=1e-4)


def test_gguf_refusals_name_the_cause(tiny_hf_dir, tmp_path):
    source = tiny_hf_dir / "llama"
    path = write_tiny_gguf(
        source, tmp_path / "window.gguf", extra_metadata={"llama.attention.sliding_window": 16}
    )
    with pytest.raises(ValueError, match=r"\['llama.attention.sliding_window'\]"):
        convert_gguf(path)
    path = write_tiny_gguf(
        source,
        tmp_path / "extra.gguf",
        extra_tensors={"blk.0.attn_q_norm.weight": np.ones(16, np.float32)},
    )
    with pytest.raises(ValueError, match="'blk.0.attn_q_norm.weight' is not a known"):
        convert_gguf(path)


def test_gguf_rope_freqs_become_llama3_scaling(tiny_hf_dir, tmp_path):
    source = tiny_hf_dir / "llama3_rope"
    hf_config = json.loads((source / "config.json").read_text())
    factors = llama_cpp_rope_freqs(hf_config)
    assert factors.min() == 1 and factors.max() == 8 and ((factors > 1) & (factors < 8)).any()
    path = write_tiny_gguf(
        source, tmp_path / "llama3.gguf", extra_tensors={"rope_freqs.weight": factors}
    )
    config, params, _ = convert_gguf(path)
    assert config.rope == read_config_json(source / "config.json").rope
    model = checkpoint.model_from_params(config, params)
    reference = load_reference(source)
    logits = generate.prefill(model, reference["input_ids"], logit_positions="all").logits
    np.testing.assert_allclose(np.asarray(logits), reference["logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"high_freq_factor": 2.0}, r"'rope_freqs.weight' is not llama3 rope scaling"),
        ({"original_max_position_embeddings": 2048}, "original context 8192: entry"),
    ],
)
def test_gguf_rope_freqs_that_are_not_llama3_scaling_are_refused(
    tiny_hf_dir, tmp_path, overrides, message
):
    source = tiny_hf_dir / "llama3_rope"
    factors = llama_cpp_rope_freqs(json.loads((source / "config.json").read_text()), **overrides)
    path = write_tiny_gguf(
        source, tmp_path / "x.gguf", extra_tensors={"rope_freqs.weight": factors}
    )
    with pytest.raises(ValueError, match=message):
        convert_gguf(path)
    path = write_tiny_gguf(
        source, tmp_path / "short.gguf", extra_tensors={"rope_freqs.weight": factors[:-1]}
    )
    with pytest.raises(ValueError, match="'rope_freqs.weight' has 7 entries; head_dim=16 needs 8"):
        convert_gguf(path)


def test_truncated_gguf_names_the_file_and_the_part(tiny_hf_dir, tmp_path):
    whole = write_tiny_gguf(tiny_hf_dir / "llama", tmp_path / "whole.gguf")
    data = whole.read_bytes()
    reader = GGUFReader(str(whole))
    cuts = {
        "metadata": 60,
        "tensor table": reader.tensors[0].field.offset + 12,
        "tensor data": len(data) - 100,
    }
    for part, cut in cuts.items():
        path = tmp_path / f"cut-{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"{path} is truncated or corrupt: its GGUF {part}"):
            convert_gguf(path)
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{path} is not a GGUF file"):
        convert_checkpoint(path, tmp_path / "ckpt")


@pytest.mark.parametrize(
    "key", ["block_count", "context_length", "attention.layer_norm_rms_epsilon"]
)
def test_gguf_missing_metadata_is_named(tiny_hf_dir, tmp_path, key):
    path = write_tiny_gguf(tiny_hf_dir / "llama", tmp_path / "x.gguf", omit=(key,))
    with pytest.raises(ValueError, match=rf"{path}: GGUF metadata lacks llama\.{key}"):
        convert_gguf(path)
