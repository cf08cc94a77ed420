"""Fixtures for model tests: tiny random HF checkpoints and real-model references, both from the
transformers oracle (tests/oracle), cached across runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.oracle import hf_env

_BASE = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 112,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}

# One entry per model family / rope variant / bias and tying option the config accepts.
TINY_MODELS: list[dict[str, Any]] = [
    {"name": "llama", "family": "llama", "config": _BASE},
    {
        "name": "llama3_rope_bias",
        "family": "llama",
        "config": _BASE
        | {
            "attention_bias": True,
            "mlp_bias": True,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
    },
    {
        "name": "llama_linear_tied_gqa3",
        "family": "llama",
        "config": _BASE
        | {
            "hidden_size": 96,
            "num_attention_heads": 6,
            "num_key_value_heads": 2,
            "tie_word_embeddings": True,
            "rope_scaling": {"rope_type": "linear", "factor": 2.5},
        },
    },
    {"name": "qwen2", "family": "qwen2", "config": _BASE | {"rope_theta": 1000000.0}},
    {
        "name": "qwen2_yarn",
        "family": "qwen2",
        "config": _BASE
        | {
            "rope_scaling": {
                "type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 128,
            },
        },
        "length": 150,
    },
    {
        "name": "mistral_head_dim",
        "family": "mistral",
        "config": _BASE
        | {
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "sliding_window": None,
        },
    },
    # Configs that leave keys out: transformers fills in its family defaults.
    {
        "name": "llama_defaults",  # no kv heads, context, eps, theta, llama3 original context
        "family": "llama",
        "config": {
            key: _BASE[key]
            for key in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
            )
        }
        | {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
            }
        },
    },
    {
        "name": "qwen2_yarn_defaults",  # YaRN with neither context key
        "family": "qwen2",
        "config": {k: v for k, v in _BASE.items() if k != "max_position_embeddings"}
        | {"rope_scaling": {"type": "yarn", "factor": 4.0}},
        "length": 150,
    },
    {
        "name": "mistral_default_window",  # no sliding_window (4096 >= 512: masks nothing), 8 kv
        "family": "mistral",
        "config": {k: v for k, v in _BASE.items() if k != "num_key_value_heads"}
        | {"num_attention_heads": 16, "head_dim": 16},
    },
    {
        "name": "llama3_rope",  # Llama 3.1 rope, no biases (for rope_freqs GGUFs); swish = silu
        "family": "llama",
        "config": _BASE
        | {
            "hidden_act": "swish",
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        },
    },
]


def _request() -> dict[str, Any]:
    models = []
    for seed, spec in enumerate(TINY_MODELS):
        models.append(
            {
                "name": spec["name"],
                "family": spec["family"],
                "config": spec["config"],
                "seed": 1000 + seed,
                "batch": 2,
                "length": spec.get("length", 45),
                "new_tokens": 6,
            }
        )
    return {"models": models}


@pytest.fixture(scope="session")
def tiny_hf_dir() -> Path:
    """Directory with one HF safetensors checkpoint per TINY_MODELS entry, each holding
    reference.npz (input_ids, logits, greedy `generated` tokens) from transformers."""
    try:
        return hf_env.oracle_results("tiny_models", _request())
    except hf_env.OracleUnavailable as error:
        pytest.skip(str(error))


def given_config(name: str) -> dict[str, Any]:
    """The config dict a TINY_MODELS entry hands transformers (keys left out stay out)."""
    spec = next(spec for spec in TINY_MODELS if spec["name"] == name)
    return spec["config"] | {"model_type": spec["family"]}


def load_reference(model_dir: Path) -> dict[str, np.ndarray]:
    with np.load(model_dir / "reference.npz") as data:
        return {key: data[key] for key in data.files}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
