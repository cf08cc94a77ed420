"""models.collect on a tiny random model: exact block maps against a NumPy softmax oracle."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models import DenseAttention, generate
from models.collect import BlockMapCollector, collect_block_maps
from models.random_weights import random_model
from sharedsparse_jax.config import SharePrefillConfig
from tests.models.helpers import tiny_config
from tests.oracle import numpy_attention

LENGTH, BLOCK = 200, 32  # padded to a 256-token bucket; 6 whole blocks, 8 tokens left over
PLANNER = SharePrefillConfig(block_size=64, min_budget=64, dense_below=64)


@dataclasses.dataclass(frozen=True)
class RecordingAttention:
    """Dense attention that also returns q and k as stats (for the oracle)."""

    def check_model(self, num_layers, num_heads):
        pass

    def init_state(self, batch, num_queries):
        return ()

    def __call__(self, q, k, v, state, *, layer, lengths):
        out, state, _ = DenseAttention(implementation="xla")(
            q, k, v, state, layer=layer, lengths=lengths
        )
        return out, state, {"q": q, "k": k}


def oracle_maps(q: np.ndarray, k: np.ndarray, length: int, block_size: int) -> np.ndarray:
    """[L, N, Tb, Tb] block-averaged causal softmax maps in float64 (GQA by h // G), over the
    whole blocks of `length` tokens (the collector keeps those)."""
    probs = numpy_attention.causal_probabilities(q[:, :length], k[:, :length])
    whole = length // block_size
    return numpy_attention.block_map(probs, length, block_size)[..., :whole, :whole]


@pytest.fixture(scope="module")
def tiny():
    """A tiny random model, its prompts, the collected maps and a dense run recording q, k."""
    model = random_model(tiny_config(), seed=3)
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, LENGTH))
    collector = BlockMapCollector(block_size=BLOCK, estimate_config=PLANNER, implementation="xla")
    collected = collect_block_maps(model, tokens, collector)
    recorded = generate.prefill(model, tokens, attention=RecordingAttention())
    return model, tokens, collected, recorded


def test_collected_maps_match_the_softmax_oracle(tiny):
    _, _, collected, recorded = tiny
    q = np.asarray(recorded.stats["q"], np.float64)  # [L, B, T, N, H]
    k = np.asarray(recorded.stats["k"], np.float64)
    assert collected.block_maps.shape == (2, 3, 6, 6, 6)  # [B, L, N, Tb, Tb]
    assert collected.length == 192
    for b in range(2):
        want = oracle_maps(q[:, b], k[:, b], LENGTH, BLOCK)
        np.testing.assert_allclose(collected.block_maps[b], want, atol=2e-5)
    np.testing.assert_allclose(collected.block_maps.sum(-1), 1.0, atol=1e-5)


def test_collector_output_is_dense_attention_and_estimates_are_recorded(tiny):
    model, tokens, collected, recorded = tiny
    collector = BlockMapCollector(block_size=BLOCK, estimate_config=PLANNER, implementation="xla")
    result = generate.prefill(model, tokens, attention=collector)  # compiled by the fixture
    np.testing.assert_allclose(result.logits, recorded.logits, atol=2e-4, rtol=1e-4)
    assert collected.estimates["vertical"].shape == (2, 3, 6, 4)  # 200 tokens: 4 blocks of 64
    assert collected.estimates["query_aware"].dtype == bool
    np.testing.assert_allclose(collected.estimates["vertical"].sum(-1), 1.0, atol=1e-5)


def test_collector_refusals(tiny):
    model, tokens, _, _ = tiny
    with pytest.raises(ValueError, match="block_size"):
        BlockMapCollector(block_size=0)
    with pytest.raises(ValueError, match="no whole block"):
        collect_block_maps(model, tokens[:, :20], BlockMapCollector(block_size=BLOCK))
