"""Tiny models, tokenizers, checkpoints and sharing tables for the integration tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import AddedToken, decoders, pre_tokenizers

from models import checkpoint
from models.config import ModelConfig
from models.random_weights import random_model, random_params
from models.tokenizer import Tokenizer
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.sharing import SharingTable
from tests.models.helpers import tiny_config as models_tiny_config

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BLOCK = 32


def tiny_config(**overrides) -> ModelConfig:
    """A 4-layer Llama with GQA 6/2 and a byte-level vocabulary (256 bytes + 2 specials)."""
    fields = dict(vocab_size=258, num_layers=4, head_dim=16, max_position_embeddings=1024)
    return models_tiny_config(**(fields | overrides))


def tiny_model(seed: int = 0):
    return random_model(tiny_config(), seed)


def byte_tokenizer() -> Tokenizer:
    """Byte-level tokenizer (one token per byte, no merges) with ChatML specials."""
    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")]
    )
    return Tokenizer(backend, eos_token="<|im_end|>", chat_template=CHATML)


def save_tiny_checkpoint(directory: Path, seed: int = 0, **config_overrides) -> Path:
    """A converted checkpoint directory of the tiny model with the byte tokenizer."""
    config = tiny_config(**config_overrides)
    return checkpoint.save_checkpoint(
        directory,
        config=config,
        params=random_params(config, seed),
        tokenizer=byte_tokenizer(),
        conversion={"source": "random", "format": "test", "dtype": "float32"},
    )


def tiny_table_dict() -> dict:
    """Clusters over the tiny model's 4 x 6 heads: three shared, one not, two heads in none."""
    return {
        "clusters": {
            "a": [[0, 0], [1, 0], [2, 1], [3, 0]],
            "b": [[0, 1], [1, 1], [2, 0], [3, 1]],
            "c": [[0, 2], [1, 3], [2, 2], [3, 2], [3, 3]],
            "d": [[0, 3], [1, 2], [2, 3]],
            "e": [[0, 4], [1, 4], [2, 4], [3, 4]],
        },
        "shared_clusters": ["a", "b", "c"],
    }


def tiny_table() -> SharingTable:
    config = tiny_config()
    return SharingTable.from_json_dict(
        tiny_table_dict(), num_layers=config.num_layers, num_heads=config.num_heads
    )


def write_tiny_table(path: Path) -> Path:
    path.write_text(json.dumps(tiny_table_dict()))
    return path


def all_heads_table(num_layers: int, num_heads: int) -> SharingTable:
    """Every head in the shared cluster of its head index, across all layers."""
    clusters = {str(h): [[layer, h] for layer in range(num_layers)] for h in range(num_heads)}
    return SharingTable.from_json_dict(
        {"clusters": clusters, "shared_clusters": list(clusters)},
        num_layers=num_layers,
        num_heads=num_heads,
    )


def keep_every_block_config(max_length: int, block_size: int = BLOCK) -> SharePrefillConfig:
    """A SharePrefill config under which the planner keeps every causal block.

    gamma = 1: pivot patterns and budgets cover all mass; tau_qa = 0: no head is query-aware
    (the distance is never below 0); min_budget >= the prompt: vertical-slash heads keep every
    column; tau_sim = tau_fb = 1: later cluster members share (the full) pivot pattern.
    """
    return SharePrefillConfig(
        block_size=block_size,
        dense_below=block_size,
        gamma=1.0,
        tau_qa=0.0,
        tau_sim=1.0,
        tau_fb=1.0,
        min_budget=max_length,
    )


def sparse_config(block_size: int = BLOCK) -> SharePrefillConfig:
    """A SharePrefill config that plans short prompts sparsely: no query-aware heads, so every
    shared cluster's first member becomes a pivot, and later members always share (tau_sim and
    tau_fb at 1: random weights give no similar heads to speak of)."""
    return SharePrefillConfig(
        block_size=block_size,
        dense_below=2 * block_size,
        min_budget=block_size,
        gamma=0.9,
        tau_qa=0.0,
        tau_sim=1.0,
        tau_fb=1.0,
    )


def random_prompt(seed: int, length: int, vocab: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (1, length))
