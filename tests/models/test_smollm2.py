"""SmolLM2-135M-Instruct from its Q4_1 GGUF against transformers' own GGUF loader (float32)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models import generate
from models.fetch import load_builtin
from tests.models import real_models

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():
    return load_builtin(NAME)


@pytest.fixture(scope="module")
def reference():
    return real_models.read_reference(real_models.reference_dir(NAME))


def test_config_from_gguf(smollm2):
    config = smollm2.config
    assert (config.model_type, config.num_layers, config.num_heads, config.num_kv_heads) == (
        "llama",
        30,
        9,
        3,
    )
    assert (config.head_dim, config.hidden_size, config.vocab_size) == (64, 576, 49152)
    assert config.tie_word_embeddings and config.rope.theta == 100000.0
    assert config.max_position_embeddings == 8192
    assert smollm2.conversion["format"] == "gguf"


def test_logits_match_transformers(smollm2, reference):
    result, hf_logits = reference
    logits = real_models.passage_logits(smollm2, result["passage_ids"])
    assert logits.shape == hf_logits.shape == (real_models.PASSAGE_TOKENS, 49152)
    np.testing.assert_allclose(logits, hf_logits, atol=5e-4, rtol=0)
    assert np.array_equal(logits.argmax(-1), hf_logits.argmax(-1))


def test_perplexity_is_sensible(smollm2, reference):
    result, _ = reference
    ids = result["passage_ids"]
    nll = real_models.mean_nll(real_models.passage_logits(smollm2, ids), ids)
    assert abs(nll - result["passage_nll"]) < 1e-4
    assert 2.0 < math.exp(nll) < 30.0  # recorded in docs/models.md


def test_tokenizer_matches_transformers(smollm2, reference):
    result, _ = reference
    tokenizer = smollm2.tokenizer
    for text, expected in zip(real_models.TEXTS_WITHOUT_DIGITS, result["encodings"], strict=False):
        assert tokenizer.encode(text) == expected, text
        assert tokenizer.decode(expected) == text
    assert (
        tokenizer.encode(real_models.PASSAGE)[: real_models.PASSAGE_TOKENS]
        == (result["passage_ids"])
    )


def test_digits_are_split_individually(smollm2):
    # SmolLM2's tokenizer (llama.cpp's "smollm" pre-tokenizer) gives every digit its own token.
    tokenizer = smollm2.tokenizer
    for text in real_models.TEXTS_WITH_DIGITS:
        pieces = [tokenizer.decode([i]) for i in tokenizer.encode(text)]
        assert "".join(pieces) == text
        for piece in pieces:
            assert not any(c.isdigit() for c in piece) or len(piece.strip()) == 1, pieces


def test_chat_template_matches_transformers(smollm2, reference):
    result, _ = reference
    rendered = [
        smollm2.tokenizer.apply_chat_template(chat, add_generation_prompt=generation)
        for chat in real_models.CHATS
        for generation in (True, False)
    ]
    assert rendered == result["chat_texts"]


def test_greedy_answer(smollm2):
    tokenizer = smollm2.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=True
    )
    sampling = generate.SamplingConfig(max_new_tokens=12, stop_tokens=(tokenizer.eos_token_id,))
    tokens, _ = generate.generate(smollm2.model, [prompt], sampling=sampling)
    assert "Paris" in tokenizer.decode(tokens[0])
