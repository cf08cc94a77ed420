"""Shared inputs and checks for the real GGUF models compared with transformers' GGUF loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from models import generate
from models.checkpoint import LoadedCheckpoint
from models.fetch import fetch_gguf
from tests.oracle import hf_env

# Opening of Jane Austen's "Pride and Prejudice" (1813, public domain).
PASSAGE = """It is a truth universally acknowledged, that a single man in possession of a good \
fortune, must be in want of a wife.

However little known the feelings or views of such a man may be on his first entering a \
neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is \
considered the rightful property of some one or other of their daughters.

"My dear Mr. Bennet," said his lady to him one day, "have you heard that Netherfield Park is let \
at last?"

Mr. Bennet replied that he had not.

"But it is," returned she; "for Mrs. Long has just been here, and she told me all about it."

Mr. Bennet made no answer.

"Do you not want to know who has taken it?" cried his wife impatiently.

"You want to tell me, and I have no objection to hearing it."

This was invitation enough.

"Why, my dear, you must know, Mrs. Long says that Netherfield is taken by a young man of large \
fortune from the north of England; that he came down on Monday in a chaise and four to see the \
place, and was so much delighted with it, that he agreed with Mr. Morris immediately; that he is \
to take possession before Michaelmas, and some of his servants are to be in the house by the end \
of next week."

"What is his name?"

"Bingley."

"Is he married or single?"

"Oh! Single, my dear, to be sure! A single man of large fortune; four or five thousand a year. \
What a fine thing for our girls!"
"""
PASSAGE_TOKENS = 300

TEXTS_WITHOUT_DIGITS = [
    "Hello, world! How are you doing today?",
    "  leading spaces and\ttabs\nnew lines\n\n\nmany   trailing   ",
    "Unicode: café, naïve, Ångström, 東京, emoji 🎉 and ÿ",
    "def f(x):\n    return x ** y  # comment\n\tindented()",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "I'll say they're sure we've seen it's DON'T YOU'LL",
]
TEXTS_WITH_DIGITS = ["In 2024, 12345 apples cost $3.50 (or 1,000,000 in total).", "x1 = y22 + 333"]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a prime number."},
    ],
]


def reference_dir(name: str) -> Path:
    """transformers' results for a built-in model's GGUF (cached)."""
    path = fetch_gguf(name)
    request = {
        "gguf": str(path),
        "texts": TEXTS_WITHOUT_DIGITS + TEXTS_WITH_DIGITS,
        "chats": CHATS,
        "passage": PASSAGE,
        "max_tokens": PASSAGE_TOKENS,
    }
    return hf_env.oracle_results("gguf_reference", request)


def read_reference(directory: Path) -> tuple[dict[str, Any], np.ndarray]:
    return json.loads((directory / "reference.json").read_text()), np.load(directory / "logits.npy")


def passage_logits(loaded: LoadedCheckpoint, ids: list[int]) -> np.ndarray:
    """float32[T, V] next-token logits of every passage position."""
    return np.asarray(generate.prefill(loaded.model, [ids], logit_positions="all").logits[0])


def mean_nll(logits: np.ndarray, ids: list[int]) -> float:
    """Mean next-token negative log-likelihood of ids[1:] (natural log)."""
    logits = logits[:-1].astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(ids) - 1), ids[1:]].mean())
