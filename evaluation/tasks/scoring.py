"""Exact-match scoring of generated replies, as RULER scores its synthetic tasks.

Scores are in [0, 1] per sample (RULER reports them x100). Matching is case-insensitive
substring containment: a reply scores on an answer if the answer occurs anywhere in it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from evaluation.tasks.sample import TaskSample

__all__ = [
    "clean_prediction",
    "score_predictions",
    "score_sample",
    "string_match_all",
    "string_match_part",
]

_CONTROL_CHARS = re.compile(r"[\x00-\x1f]")


def clean_prediction(text: str) -> str:
    """Strip a reply and turn control characters into newlines (RULER's post-processing)."""
    return _CONTROL_CHARS.sub("\n", text.strip()).strip()


def string_match_all(prediction: str, answers: Sequence[str]) -> float:
    """Fraction of the answers that occur in the prediction (case-insensitive).

    Args:
      prediction: the model's reply.
      answers: the expected strings (at least one).

    Returns:
      A score in [0, 1].
    """
    if not answers:
        raise ValueError("string_match_all needs at least one answer")
    reply = prediction.lower()
    return sum(answer.lower() in reply for answer in answers) / len(answers)


def string_match_part(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if any answer occurs in the prediction (case-insensitive), else 0.0.

    Args:
      prediction: the model's reply.
      answers: the accepted strings (at least one).

    Returns:
      0.0 or 1.0.
    """
    if not answers:
        raise ValueError("string_match_part needs at least one answer")
    reply = prediction.lower()
    return float(any(answer.lower() in reply for answer in answers))


def score_sample(sample: TaskSample, prediction: str) -> float:
    """Score one reply with the sample's metric, after `clean_prediction`.

    Args:
      sample: the generated sample.
      prediction: the model's reply (the text generated after the prompt).

    Returns:
      A score in [0, 1].
    """
    match = string_match_all if sample.metric == "all" else string_match_part
    return match(clean_prediction(prediction), sample.answers)


def score_predictions(samples: Sequence[TaskSample], predictions: Sequence[str]) -> np.ndarray:
    """Score replies sample by sample.

    Args:
      samples: the samples.
      predictions: one reply per sample, in the same order.

    Returns:
      float64[len(samples)] scores in [0, 1]; their mean is the task score.
    """
    if len(samples) != len(predictions):
        raise ValueError(f"{len(samples)} samples but {len(predictions)} predictions")
    return np.array(
        [score_sample(s, p) for s, p in zip(samples, predictions, strict=True)], dtype=np.float64
    )
