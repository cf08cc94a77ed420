"""Model-output metrics: log-likelihood and perplexity, and fidelity of a sparse run to dense.

All functions take NumPy-convertible arrays (NumPy or JAX; JAX arrays are copied to the host)
and compute in float64. Natural logarithms throughout: log-likelihoods and KL are in nats.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "kl_divergence",
    "log_softmax",
    "mean_negative_log_likelihood",
    "per_layer_relative_error",
    "perplexity",
    "relative_error",
    "token_log_likelihoods",
    "top1_agreement",
]


def log_softmax(logits: ArrayLike, *, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax in float64.

    Args:
      logits: scores, any shape.
      axis: the vocabulary axis.

    Returns:
      float64 log-probabilities, same shape.
    """
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def token_log_likelihoods(logits: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Log-probability of each target token under the logits that predict it.

    Args:
      logits: [..., T, V] scores; row t predicts `targets[..., t]` (for a language model, pass
        the logits of positions 0..T-2 and the tokens 1..T-1).
      targets: [..., T] integer token ids.

    Returns:
      float64[..., T] log-likelihoods (<= 0).
    """
    log_probs = log_softmax(logits)
    ids = np.asarray(targets)
    if log_probs.shape[:-1] != ids.shape:
        raise ValueError(f"logits {log_probs.shape} do not match targets {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= log_probs.shape[-1]):
        raise ValueError(
            f"target ids must be in [0, {log_probs.shape[-1]}), got {ids.min()}..{ids.max()}"
        )
    return np.take_along_axis(log_probs, ids[..., None].astype(np.int64), axis=-1)[..., 0]


def _windows(log_likelihoods: ArrayLike | Sequence[ArrayLike], skip: int) -> list[np.ndarray]:
    """Split input into 1-D float64 windows, each with its first `skip` positions dropped.

    A list or tuple of arrays is a list of windows; a flat list of numbers, a 1-D array or a
    [W, T] array (NumPy or JAX) is one window or W windows.
    """
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    is_ragged = isinstance(log_likelihoods, list | tuple) and not all(
        np.isscalar(x) for x in log_likelihoods
    )
    arrays = list(log_likelihoods) if is_ragged else [log_likelihoods]
    windows = []
    for array in arrays:
        array = np.asarray(array, dtype=np.float64)
        if array.ndim == 2:
            windows += [row[skip:] for row in array]
        elif array.ndim == 1:
            windows.append(array[skip:])
        else:
            raise ValueError(f"log-likelihoods must be 1-D per window, got shape {array.shape}")
    if not windows or any(w.size == 0 for w in windows):
        raise ValueError(f"every window needs a scored token after skipping {skip}")
    return windows


def mean_negative_log_likelihood(
    log_likelihoods: ArrayLike | Sequence[ArrayLike], *, skip: int = 0
) -> np.ndarray:
    """Mean negative log-likelihood of each window (the per-window numbers to pair and compare).

    Args:
      log_likelihoods: one window's [T] log-likelihoods, a [W, T] array, or a sequence of
        windows (lengths may differ).
      skip: positions at the start of every window left out (e.g. to score only tokens that
        have at least `skip` tokens of context).

    Returns:
      float64[W] mean NLL per window, in nats per token.
    """
    return np.array([-np.mean(w) for w in _windows(log_likelihoods, skip)])


def perplexity(log_likelihoods: ArrayLike | Sequence[ArrayLike], *, skip: int = 0) -> float:
    """Perplexity over all scored tokens of all windows: exp(total NLL / number of tokens).

    Windows are pooled token by token (PG-19 style), so longer windows weigh more.

    Args:
      log_likelihoods: one window's [T] log-likelihoods, a [W, T] array, or a sequence of
        windows (lengths may differ).
      skip: positions at the start of every window left out.

    Returns:
      The perplexity (>= 1).
    """
    windows = _windows(log_likelihoods, skip)
    total = sum(float(np.sum(w)) for w in windows)
    count = sum(w.size for w in windows)
    return float(np.exp(-total / count))


def kl_divergence(
    reference_logits: ArrayLike, candidate_logits: ArrayLike, *, axis: int = -1
) -> np.ndarray:
    """KL(reference || candidate) between next-token distributions given as logits.

    The reference is dense attention, the candidate a sparse method: the result is the expected
    extra code length, in nats, of predicting the dense model's distribution with the sparse one.

    Args:
      reference_logits: [..., V] scores of the reference.
      candidate_logits: [..., V] scores of the candidate, same shape.
      axis: the vocabulary axis.

    Returns:
      float64[...] divergences (>= 0), one per position.
    """
    ref = log_softmax(reference_logits, axis=axis)
    cand = log_softmax(candidate_logits, axis=axis)
    if ref.shape != cand.shape:
        raise ValueError(f"logit shapes differ: {ref.shape} and {cand.shape}")
    divergence = np.sum(np.exp(ref) * (ref - cand), axis=axis)
    return np.maximum(divergence, 0.0)  # rounding can leave tiny negatives


def top1_agreement(reference_logits: ArrayLike, candidate_logits: ArrayLike) -> np.ndarray:
    """Whether the greedy next token is the same under both runs.

    Args:
      reference_logits: [..., V] scores of the reference.
      candidate_logits: [..., V] scores of the candidate.

    Returns:
      bool[...] per position.
    """
    ref = np.asarray(reference_logits)
    cand = np.asarray(candidate_logits)
    if ref.shape != cand.shape:
        raise ValueError(f"logit shapes differ: {ref.shape} and {cand.shape}")
    return np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)


def relative_error(
    reference: ArrayLike, candidate: ArrayLike, *, keep_axes: Sequence[int] = ()
) -> np.ndarray:
    """Relative Frobenius error ||candidate - reference|| / ||reference||.

    Args:
      reference: the reference tensor, e.g. dense attention output [B, T, N, H].
      candidate: the candidate, same shape.
      keep_axes: axes not reduced, e.g. (2,) for one error per head of a [B, T, N, H] output.

    Returns:
      float64 array over `keep_axes` (a 0-d array when none). Where the reference is all zeros
      the error is 0 if the candidate is too, else inf.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"shapes differ: {ref.shape} and {cand.shape}")
    keep = {axis % ref.ndim for axis in keep_axes}
    reduce = tuple(axis for axis in range(ref.ndim) if axis not in keep)
    error = np.sqrt(np.sum((cand - ref) ** 2, axis=reduce))
    norm = np.sqrt(np.sum(ref**2, axis=reduce))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(
            norm > 0, error / np.where(norm > 0, norm, 1.0), np.where(error > 0, np.inf, 0.0)
        )
    return ratio


def per_layer_relative_error(
    reference_layers: Sequence[ArrayLike] | ArrayLike,
    candidate_layers: Sequence[ArrayLike] | ArrayLike,
    *,
    keep_axes: Sequence[int] = (),
) -> np.ndarray:
    """`relative_error` for each layer's attention output.

    Args:
      reference_layers: L tensors (or one array with a leading L axis) from the dense run.
      candidate_layers: the same from the sparse run.
      keep_axes: axes of each layer's tensor not reduced (e.g. the head axis).

    Returns:
      float64[L, *kept] errors.
    """
    if len(reference_layers) != len(candidate_layers):
        raise ValueError(
            f"{len(reference_layers)} reference layers, {len(candidate_layers)} candidate"
        )
    return np.stack(
        [
            relative_error(ref, cand, keep_axes=keep_axes)
            for ref, cand in zip(reference_layers, candidate_layers, strict=True)
        ]
    )
