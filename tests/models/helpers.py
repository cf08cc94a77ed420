"""Tiny model configs for tests that need no oracle checkpoint (random weights:
`models.random_weights`)."""

from __future__ import annotations

from models.config import ModelConfig


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(
        model_type="llama",
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_layers=3,
        num_heads=6,
        num_kv_heads=2,
        head_dim=8,
        max_position_embeddings=400,
        rms_norm_eps=1e-5,
    )
    return ModelConfig(**(fields | overrides))
