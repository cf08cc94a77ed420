"""Random models for tests that need no oracle checkpoint."""

from __future__ import annotations

import numpy as np

from models import checkpoint
from models.config import ModelConfig
from models.llama import Transformer, parameter_shapes


def random_params(config: ModelConfig, seed: int) -> dict:
    """Fresh normal parameters (norm weights around 1), large enough that logits are peaked."""
    rng = np.random.default_rng(seed)

    def draw(name: str, shape: tuple[int, ...]):
        if name.endswith("norm"):
            return (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        if name.endswith("bias"):
            return (0.1 * rng.standard_normal(shape)).astype(np.float32)
        fan_in = shape[1] if name.startswith("layers/") else shape[0]
        if name == "embed":
            fan_in = 1
        return (rng.standard_normal(shape) * 1.5 / np.sqrt(fan_in)).astype(np.float32)

    shapes = parameter_shapes(config)
    params = {k: draw(k, v) for k, v in shapes.items() if k != "layers"}
    params["layers"] = {k: draw(f"layers/{k}", v) for k, v in shapes["layers"].items()}
    return params


def random_model(config: ModelConfig, seed: int = 0) -> Transformer:
    return checkpoint.model_from_params(config, random_params(config, seed))


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
