"""Ragged batches: every prompt of a batch of different lengths prefills, plans and decodes as it
does alone, with dense attention and with SharePrefill (shared clusters, 16-token blocks).

Alone, a prompt is padded to its own bucket; in the batch, to the bucket of the longest. The
oracle is each prompt run alone: logits at its own positions, its plan (blocks and head
categories per layer), greedy tokens, decode logits and its KV cache.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from models import SamplingConfig, decode, prefill
from models.attention import DenseAttention
from sharedsparse_jax import planner
from sharedsparse_jax.attention import SharePrefillAttention
from tests.integration import helpers

BLOCK = 16
# Buckets 256 / 128 / 128 alone, 256 together; 20 tokens is below dense_below (plans dense).
LENGTHS = (200, 90, 20)
NEW_TOKENS = 6


@dataclasses.dataclass(frozen=True)
class PlanRecorder:
    """SharePrefillAttention that also returns each layer's plan in its stats."""

    inner: SharePrefillAttention

    def init_state(self, batch, num_queries):
        return self.inner.init_state(batch, num_queries)

    def check_model(self, num_layers, num_heads):
        self.inner.check_model(num_layers, num_heads)

    def __call__(self, q, k, v, state, *, layer, lengths):
        plan, _ = planner.plan_layer(
            q,
            k,
            state,
            layer=layer,
            lengths=lengths,
            config=self.inner.config,
            table=self.inner.table,
        )
        out, state, stats = self.inner(q, k, v, state, layer=layer, lengths=lengths)
        return out, state, stats | {"block_mask": plan.block_mask, "category": plan.category}


@pytest.fixture(scope="module")
def model():
    return helpers.tiny_model(seed=5)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(11)
    return [rng.integers(0, 256, n).tolist() for n in LENGTHS]


def _positions(length: int) -> list[int]:
    """Logit positions of a prompt: its first, middle and last token (decode needs the last)."""
    return [0, length // 2, length - 1]


def _prefill_and_decode(model, prompts, attention, sampling):
    positions = np.array([_positions(len(p)) for p in prompts], np.int32)
    prefilled = prefill(model, prompts, attention=attention, logit_positions=positions)
    decoded = decode(model, prefilled, sampling=sampling, return_logits=True)
    return jax.tree.map(np.asarray, (prefilled, decoded))


def _check_batch_equals_alone(model, prompts, attention, sampling):
    """Runs the batch and each prompt alone; returns both for attention-specific checks."""
    batch_prefill, batch_decode = _prefill_and_decode(model, prompts, attention, sampling)
    assert batch_prefill.cache.k.shape[2] == 256
    np.testing.assert_array_equal(batch_prefill.cache.lengths, LENGTHS)
    alone = []
    for row, prompt in enumerate(prompts):
        length = len(prompt)
        one_prefill, one_decode = _prefill_and_decode(model, [prompt], attention, sampling)
        alone.append((one_prefill, one_decode))
        np.testing.assert_array_equal(batch_prefill.positions[row], _positions(length))
        np.testing.assert_allclose(
            batch_prefill.logits[row], one_prefill.logits[0], atol=1e-4, rtol=0, err_msg=f"{row}"
        )
        count = int(one_decode.num_tokens[0])
        assert int(batch_decode.num_tokens[row]) == count, row
        np.testing.assert_array_equal(batch_decode.tokens[row], one_decode.tokens[0])
        np.testing.assert_allclose(
            batch_decode.logits[row, :count], one_decode.logits[0, :count], atol=1e-4, rtol=0
        )
        # Each sequence appended at its own position: the same cache rows as alone.
        cached = int(one_decode.cache.lengths[0])
        assert int(batch_decode.cache.lengths[row]) == cached
        for name in ("k", "v"):
            np.testing.assert_allclose(
                getattr(batch_decode.cache, name)[:, row, :cached],
                getattr(one_decode.cache, name)[:, 0, :cached],
                atol=1e-4,
                rtol=0,
            )
    return batch_prefill, batch_decode, alone


def test_ragged_batch_with_dense_attention_equals_each_prompt_alone(model, prompts):
    greedy = SamplingConfig(max_new_tokens=NEW_TOKENS)
    attention = DenseAttention(implementation="xla")
    _, batch_decode, alone = _check_batch_equals_alone(model, prompts, attention, greedy)
    alone_tokens = np.stack([one_decode.tokens[0] for _, one_decode in alone])
    assert np.unique(alone_tokens).size > 3  # logits that discriminate
    np.testing.assert_array_equal(batch_decode.cache.lengths, np.add(LENGTHS, NEW_TOKENS))

    # A stop token that ends the middle prompt at step 3 (and any other where it comes up).
    stop = int(alone_tokens[1, 2])
    stopping = SamplingConfig(max_new_tokens=NEW_TOKENS, stop_tokens=(stop,), pad_token=255)
    stopped = decode(model, prefill(model, prompts, attention=attention), sampling=stopping)
    for row, tokens in enumerate(alone_tokens):
        count = list(tokens).index(stop) + 1 if stop in tokens else NEW_TOKENS
        assert int(stopped.num_tokens[row]) == count, row
        np.testing.assert_array_equal(np.asarray(stopped.tokens[row, :count]), tokens[:count])
        assert (np.asarray(stopped.tokens[row, count:]) == 255).all()
        # The stop token is emitted but not appended to the cache.
        appended = count - 1 if stop in tokens else count
        assert int(stopped.cache.lengths[row]) == LENGTHS[row] + appended, row
    assert int(stopped.num_tokens[1]) == 3


def test_ragged_batch_with_shareprefill_equals_each_prompt_alone(model, prompts):
    config = dataclasses.replace(helpers.sparse_config(BLOCK), tau_qa=0.15, tau_sim=0.5)
    attention = PlanRecorder(
        SharePrefillAttention(config, helpers.tiny_table(), implementation="xla")
    )
    greedy = SamplingConfig(max_new_tokens=NEW_TOKENS)
    batch_prefill, _, alone = _check_batch_equals_alone(model, prompts, attention, greedy)
    seen = set()
    for row, (one_prefill, _) in enumerate(alone):
        nb = -(-LENGTHS[row] // BLOCK)
        # [L, B, N, Tb, Tb] and [L, B, N]: this prompt's plan, cropped to its own blocks.
        got_mask = batch_prefill.stats["block_mask"][:, row]
        want_mask = one_prefill.stats["block_mask"][:, 0]
        np.testing.assert_array_equal(got_mask[..., :nb, :nb], want_mask[..., :nb, :nb])
        # Blocks past the prompt: the diagonal only, however long the batch's bucket is.
        tb = got_mask.shape[-1]
        diagonal = np.broadcast_to(np.eye(tb, dtype=bool)[nb:], got_mask[..., nb:, :].shape)
        np.testing.assert_array_equal(got_mask[..., nb:, :], diagonal)
        got_category = batch_prefill.stats["category"][:, row]
        np.testing.assert_array_equal(got_category, one_prefill.stats["category"][:, 0])
        for name in ("density", "share_reason", "num_pivot", "num_shared"):
            np.testing.assert_allclose(
                batch_prefill.stats[name][:, row], one_prefill.stats[name][:, 0], err_msg=name
            )
        seen |= {planner.CATEGORIES[c] for c in np.unique(got_category)}
        sparse = one_prefill.stats["density"][:, 0] < 1
        assert sparse.any() == (LENGTHS[row] >= config.dense_below), row
    # Every kind of head the planner makes took part, in some prompt of the batch.
    assert {"dense", "pivot", "shared", "query_aware", "vertical_slash"} <= seen, seen
