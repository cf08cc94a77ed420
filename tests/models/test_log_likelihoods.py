"""Prefill's next-token log-likelihoods (`score=True`) against the log-softmax of full logits."""

from __future__ import annotations

import numpy as np
import pytest

from models import prefill, prefill_chunked
from models.random_weights import random_model
from tests.models.helpers import tiny_config


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(max_position_embeddings=512), seed=11)


def _expected(model, prompts: list[list[int]]) -> np.ndarray:
    """float64[B, T - 1]: log-softmax of every position's full logits at the next token (NumPy,
    float64), NaN past each row's last target."""
    logits = np.asarray(prefill(model, prompts, logit_positions="all").logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    longest = max(len(prompt) for prompt in prompts)
    expected = np.full((len(prompts), longest - 1), np.nan)
    for row, prompt in enumerate(prompts):
        positions = np.arange(len(prompt) - 1)
        expected[row, positions] = log_probs[row, positions, prompt[1:]]
    return expected


def _prompts(seed: int, lengths: tuple[int, ...]) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 97, size=n).tolist() for n in lengths]


@pytest.mark.parametrize("score_rows", [37, 2048])  # 37 divides neither T nor the bucket
def test_unpadded_prompt(model, score_rows):
    prompts = _prompts(1, (128,))
    result = prefill(model, prompts, score=True, score_rows=score_rows)
    assert result.log_likelihoods.shape == (1, 127)
    np.testing.assert_allclose(
        np.asarray(result.log_likelihoods), _expected(model, prompts), rtol=0, atol=2e-5
    )


def test_ragged_batch_masks_padding_with_nan(model):
    prompts = _prompts(2, (150, 61, 2, 149))
    result = prefill(model, prompts, score=True, score_rows=50, logit_positions=[0, 1])
    got = np.asarray(result.log_likelihoods)
    assert got.shape == (4, 149)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(_expected(model, prompts)))
    np.testing.assert_allclose(got, _expected(model, prompts), rtol=0, atol=2e-5)
    assert result.logits.shape == (4, 2, model.config.vocab_size)  # the asked logits still come


@pytest.mark.parametrize("score_rows", [24, 64])  # 24 divides neither the chunk nor T
def test_chunked_prefill_scores_across_chunk_boundaries(model, score_rows):
    prompts = _prompts(3, (200, 129, 64))
    result = prefill_chunked(model, prompts, chunk_tokens=64, score=True, score_rows=score_rows)
    got = np.asarray(result.log_likelihoods)
    expected = _expected(model, prompts)
    assert np.isfinite(got[0, [63, 127, 191]]).all()  # targets: the next chunks' first tokens
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
    np.testing.assert_allclose(
        np.asarray(result.logits), np.asarray(prefill(model, prompts).logits), atol=2e-5
    )


def test_without_score_there_are_none(model):
    prompts = _prompts(4, (40,))
    assert prefill(model, prompts).log_likelihoods is None
    assert prefill_chunked(model, prompts, chunk_tokens=16).log_likelihoods is None


def test_score_rows_is_checked(model):
    with pytest.raises(ValueError, match="score_rows must be >= 1"):
        prefill(model, [[1, 2, 3]], score=True, score_rows=0)
    with pytest.raises(ValueError, match="score_rows must be >= 1"):
        prefill_chunked(model, [[1, 2, 3]], chunk_tokens=16, score=True, score_rows=0)
