"""Perplexity, KL and relative error against hand-worked values and a SciPy oracle."""

import math

import numpy as np
import pytest
from scipy import special

from evaluation import metrics


def test_log_softmax_matches_scipy_and_is_shift_invariant():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=30.0, size=(3, 5, 101)).astype(np.float32)
    expected = special.log_softmax(logits.astype(np.float64), axis=-1)
    np.testing.assert_allclose(metrics.log_softmax(logits), expected, rtol=1e-12, atol=1e-12)
    shifted = logits.astype(np.float64) + 1e4
    np.testing.assert_allclose(metrics.log_softmax(shifted), expected, atol=1e-9)


def test_token_log_likelihoods_by_hand():
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]))
    ll = metrics.token_log_likelihoods(logits, [0, 2])
    np.testing.assert_allclose(ll, np.log([0.5, 0.7]))
    uniform = metrics.token_log_likelihoods(np.zeros((2, 4, 10)), np.ones((2, 4), dtype=int))
    np.testing.assert_allclose(uniform, np.full((2, 4), -math.log(10)))
    with pytest.raises(ValueError, match="do not match"):
        metrics.token_log_likelihoods(logits, [0, 1, 2])
    with pytest.raises(ValueError, match="target ids"):
        metrics.token_log_likelihoods(logits, [0, 3])


def test_perplexity_by_hand():
    # Two tokens with probabilities 1/2 and 1/4: PPL = (2 * 4) ** (1/2).
    assert metrics.perplexity(np.log([0.5, 0.25])) == pytest.approx(math.sqrt(8))
    assert metrics.perplexity([math.log(0.5), math.log(0.25)]) == pytest.approx(math.sqrt(8))
    # A uniform model over V tokens has perplexity V.
    assert metrics.perplexity(np.full((3, 7), -math.log(50))) == pytest.approx(50)
    # Ragged windows are pooled token by token: 1 token at p=1/2, 3 tokens at p=1/8.
    windows = [np.log([0.5]), np.log([0.125] * 3)]
    assert metrics.perplexity(windows) == pytest.approx((2 * 8**3) ** 0.25)
    np.testing.assert_allclose(metrics.mean_negative_log_likelihood(windows), np.log([2, 8]))
    # skip drops the first positions of every window.
    skipped = [np.log([0.5, 0.25]), np.log([0.9, 0.125])]
    assert metrics.perplexity(skipped, skip=1) == pytest.approx(math.sqrt(4 * 8))
    with pytest.raises(ValueError, match="scored token"):
        metrics.perplexity(skipped, skip=2)


def test_kl_divergence_by_hand_and_against_scipy():
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert metrics.kl_divergence(np.log(p), np.log(q)) == pytest.approx(expected)
    rng = np.random.default_rng(1)
    ref, cand = rng.normal(size=(2, 6, 300)) * 3
    oracle = special.rel_entr(special.softmax(ref, -1), special.softmax(cand, -1)).sum(-1)
    kl = metrics.kl_divergence(ref, cand)
    np.testing.assert_allclose(kl, oracle, rtol=1e-10)
    np.testing.assert_allclose(metrics.kl_divergence(ref, ref + 5.0), 0.0, atol=1e-12)
    assert np.all(kl > 0)


def test_top1_agreement():
    ref = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    cand = np.array([[0.0, 5.0, 1.0], [0.0, 0.0, 1.0]])
    assert metrics.top1_agreement(ref, cand).tolist() == [True, False]


def test_relative_error():
    ref = np.array([[3.0, 4.0], [0.0, 0.0]])
    cand = np.array([[3.0, 4.5], [0.0, 0.0]])
    assert metrics.relative_error(ref, cand) == pytest.approx(0.1)  # 0.5 / 5
    np.testing.assert_allclose(metrics.relative_error(ref, cand, keep_axes=(0,)), [0.1, 0.0])
    np.testing.assert_allclose(
        metrics.relative_error(ref, ref + [[0, 0], [1, 0]], keep_axes=(-2,)), [0.0, np.inf]
    )
    # Per layer and per head of [B, T, N, H] outputs.
    rng = np.random.default_rng(2)
    dense = rng.normal(size=(3, 1, 8, 4, 16))
    noise = rng.normal(size=dense.shape) * np.array([0.0, 0.01, 0.1])[:, None, None, None, None]
    sparse = dense + noise
    per_layer = metrics.per_layer_relative_error(list(dense), list(sparse))
    expected = [np.linalg.norm(noise[i]) / np.linalg.norm(dense[i]) for i in range(3)]
    np.testing.assert_allclose(per_layer, expected)
    per_head = metrics.per_layer_relative_error(dense, sparse, keep_axes=(2,))
    assert per_head.shape == (3, 4)
    np.testing.assert_allclose(
        per_head[2, 1], np.linalg.norm(noise[2, :, :, 1]) / np.linalg.norm(dense[2, :, :, 1])
    )
