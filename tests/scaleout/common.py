"""The tiny model, table, planner config and prompts every scale-out check uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models import checkpoint
from models.random_weights import random_params
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.sharing import SharingTable
from tests.models.helpers import tiny_config

# 16 query heads over 8 kv heads: model axes of 1, 2, 4 and 8 all hold whole GQA groups.
CONFIG = tiny_config(
    num_layers=3, num_heads=16, num_kv_heads=8, head_dim=8, hidden_size=64,
    intermediate_size=96, max_position_embeddings=1024,
)  # fmt: skip
PLANNER = SharePrefillConfig(
    block_size=16, min_budget=16, dense_below=32, tau_qa=0.0, tau_fb=1.0, tau_sim=1.0
)
LENGTH = 200  # padded to a 256-token bucket: a partial block and whole padding blocks
BATCH = 8  # divides by every data axis tried
NEW_TOKENS = 4


def save(directory: Path) -> Path:
    """The tiny model's checkpoint (no tokenizer)."""
    return checkpoint.save_checkpoint(
        directory,
        config=CONFIG,
        params=random_params(CONFIG, 0),
        tokenizer=None,
        conversion={"source": "random", "format": "test", "dtype": "float32"},
    )


def table() -> SharingTable:
    """Four clusters over every (layer, head), three of them shared."""
    labels = np.random.default_rng(0).integers(0, 4, size=(CONFIG.num_layers, CONFIG.num_heads))
    clusters = {str(c): [[int(l), int(h)] for l, h in np.argwhere(labels == c)] for c in range(4)}
    return SharingTable.from_json_dict(
        {"clusters": clusters, "shared_clusters": ["0", "1", "2"]},
        num_layers=CONFIG.num_layers,
        num_heads=CONFIG.num_heads,
    )


def attention(head_axis: str | None = None) -> SharePrefillAttention:
    return SharePrefillAttention(PLANNER, table(), implementation="xla", head_axis=head_axis)


def prompts() -> np.ndarray:
    return np.random.default_rng(1).integers(0, CONFIG.vocab_size, size=(BATCH, LENGTH))
