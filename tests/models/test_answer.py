"""`models.prefill_and_answer`, the main job as a library call, on a tiny random model."""

from __future__ import annotations

import pytest

from models import AnsweredPrompt, DenseAttention, prefill_and_answer, prefill_attention
from sharedsparse_jax.attention import SharePrefillAttention
from tests.integration import helpers

PROMPT = "It is a truth universally acknowledged, that a single man in possession " * 4


@pytest.fixture(scope="module")
def tiny():
    return helpers.tiny_model(seed=2), helpers.byte_tokenizer()


def test_dense_and_a_plan_that_keeps_every_block_answer_alike(tiny):
    model, tokenizer = tiny
    config = helpers.keep_every_block_config(max_length=512)
    dense = prefill_and_answer(model, tokenizer, PROMPT, attention="dense", max_new_tokens=4)
    full = prefill_and_answer(
        model, tokenizer, PROMPT, attention="vertical_slash", config=config, max_new_tokens=4
    )
    assert isinstance(dense, AnsweredPrompt) and dense.stats == {}
    assert full.new_token_ids == dense.new_token_ids and full.text == dense.text
    assert full.stats["density"] == pytest.approx(1.0)
    assert full.stats["num_vertical_slash"] == 4 * 6
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=True)
    assert dense.prompt_tokens == len(ids)
    assert dense.compile_s > 0 and dense.first_call_s >= dense.prefill_s >= 0
    assert dense.prefill_timed_from == "first call minus compile"


def test_token_ids_repeats_and_an_attention_object(tiny):
    model, tokenizer = tiny
    ids = tokenizer.encode(PROMPT)
    attention = prefill_attention(
        "shareprefill", config=helpers.sparse_config(), table=helpers.tiny_table()
    )
    assert isinstance(attention, SharePrefillAttention) and attention.table is not None
    answer = prefill_and_answer(
        model, tokenizer, ids, attention=attention, max_new_tokens=2, repeats=2
    )
    assert answer.prompt_tokens == len(ids) and 1 <= len(answer.new_token_ids) <= 2
    assert answer.prefill_timed_from == "median of 2 calls after the first"
    assert 0 < answer.stats["density"] < 1 and answer.stats["num_pivot"] == 3
    assert "sharing" in answer.stats
    flex = prefill_attention("flexprefill", table=helpers.tiny_table())
    assert flex.table is None  # only shareprefill shares
    assert isinstance(prefill_attention("dense"), DenseAttention)
    with pytest.raises(ValueError, match="method 'sparse' is not dense or one of"):
        prefill_attention("sparse")
    with pytest.raises(ValueError, match="max_new_tokens >= 1"):
        prefill_and_answer(model, tokenizer, ids, attention="dense", max_new_tokens=0)
