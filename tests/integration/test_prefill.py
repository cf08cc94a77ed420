"""Whole-model prefill with SharePrefill: equivalence with dense attention when every block is
kept, a real sharing table under the layer scan, decoding after a sparse prefill, below the
crossover the dense model's own layer loop, SmolLM2."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from models import SamplingConfig, decode, generate, load_builtin, prefill
from models.attention import DenseAttention
from models.compile_time import compile_clock
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.planner import CATEGORIES
from tests.integration import helpers
from tests.models import real_models

BUCKET = 256  # the padded length of every tiny prompt below (one compilation per attention)


@pytest.fixture(scope="module")
def model():
    return helpers.tiny_model(seed=5)


@pytest.fixture(scope="module")
def keep_all():
    """SharePrefill with the tiny model's sharing table, configured to keep every block."""
    return SharePrefillAttention(
        helpers.keep_every_block_config(BUCKET), helpers.tiny_table(), implementation="xla"
    )


@pytest.fixture(scope="module")
def sparse():
    """SharePrefill with the tiny model's sharing table, planning sparsely."""
    return SharePrefillAttention(
        helpers.sparse_config(), helpers.tiny_table(), implementation="xla"
    )


def test_keeping_every_block_equals_dense_prefill_and_decode(model, keep_all):
    """Pivots run dense, the rest keep every column (min_budget >= the prompt)."""
    length = 200  # not a multiple of the block
    prompt = helpers.random_prompt(length, length)
    dense = prefill(
        model, prompt, attention=DenseAttention(implementation="xla"), logit_positions="all"
    )
    got = prefill(model, prompt, attention=keep_all, logit_positions="all")
    want = np.asarray(dense.logits)
    assert np.unique(want.argmax(-1)).size > 3  # logits that discriminate
    np.testing.assert_allclose(np.asarray(got.logits), want, atol=2e-5, rtol=0)
    for got_kv, want_kv in ((got.cache.k, dense.cache.k), (got.cache.v, dense.cache.v)):
        # Positions past the prompt are padding: what they hold may differ.
        np.testing.assert_allclose(
            np.asarray(got_kv[:, :, :length]), np.asarray(want_kv[:, :, :length]), atol=2e-5
        )
    stats = {name: np.asarray(value)[:, 0] for name, value in got.stats.items()}
    np.testing.assert_allclose(stats["density"], 1.0)
    assert stats["num_pivot"][0] == keep_all.table.num_shared  # each shared cluster's pivot
    # Decoding after either prefill (dense attention over the cache) gives the same tokens.
    sampling = SamplingConfig(max_new_tokens=6)
    dense_tokens = np.asarray(decode(model, dense, sampling=sampling).tokens)
    kept_tokens = np.asarray(decode(model, got, sampling=sampling).tokens)
    np.testing.assert_array_equal(kept_tokens, dense_tokens)
    assert np.unique(dense_tokens).size > 1


def test_sharing_table_under_the_scan_then_decode(model, sparse):
    config, table = model.config, sparse.table
    with compile_clock() as first_compile:
        result = prefill(model, helpers.random_prompt(1, 250), attention=sparse)
    stats = {name: np.asarray(value) for name, value in result.stats.items()}
    assert stats["density"].shape == (config.num_layers, 1)
    counts = np.stack([stats[f"num_{name}"][:, 0] for name in CATEGORIES])  # [categories, L]
    np.testing.assert_array_equal(counts.sum(0), config.num_heads)
    pivots, shared = stats["num_pivot"][:, 0], stats["num_shared"][:, 0]
    # No query-aware heads: each shared cluster's layer-0 member is its pivot, and no head
    # shares before a pivot exists; later members of shared clusters share (tau_sim = 1).
    assert pivots[0] == table.num_shared == 3 and pivots.sum() == table.num_shared
    assert shared[0] == 0
    assert 1 <= shared.sum() <= int((table.shared_slot_of[1:] >= 0).sum())
    assert stats["num_query_aware"].sum() == 0 and stats["num_dense"].sum() == 0
    assert (stats["density"] > 0).all() and (stats["density"] <= 1).all()
    assert stats["density"][1:].max() < 1  # later layers are sparse
    assert np.isfinite(np.asarray(result.logits)).all()
    assert first_compile[0] > 0

    with compile_clock() as second_compile:  # another prompt of the same bucket: no recompiling
        prefilled = prefill(model, helpers.random_prompt(2, 230), attention=sparse)
    assert second_compile[0] == 0
    decoded = decode(
        model, prefilled, sampling=SamplingConfig(max_new_tokens=6), return_logits=True
    )
    assert np.asarray(decoded.tokens).shape == (1, 6)
    np.testing.assert_array_equal(np.asarray(decoded.cache.lengths), 230 + 6)
    # Decoding starts from the sparse prefill's logits and continues over its cache.
    np.testing.assert_array_equal(
        np.asarray(decoded.logits[:, 0]), np.asarray(prefilled.logits[:, -1])
    )
    assert int(decoded.tokens[0, 0]) == int(np.asarray(prefilled.logits[0, -1]).argmax())
    assert np.isfinite(np.asarray(decoded.logits)).all()


@dataclasses.dataclass(frozen=True, eq=False)
class PerLayer:
    """The inner attention without its `for_bucket`: the layer loop calls it in every layer."""

    inner: SharePrefillAttention

    def init_state(self, batch, num_queries, num_keys=None):
        return self.inner.init_state(batch, num_queries, num_keys)

    def check_model(self, num_layers, num_heads):
        self.inner.check_model(num_layers, num_heads)

    def __call__(self, q, k, v, state, *, layer, lengths):
        return self.inner(q, k, v, state, layer=layer, lengths=lengths)


def _layer_loop_outputs(model, tokens, lengths, attention) -> int:
    """How many arrays the prefill's layer scan stacks or carries (its outputs)."""
    graphdef, state = nnx.split(model)

    def run(tokens, lengths):
        merged = nnx.merge(graphdef, state)
        return merged.prefill(tokens, lengths, lengths[:, None] - 1, attention)

    jaxpr = jax.make_jaxpr(run)(tokens, lengths)
    (scan,) = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "scan"]
    return len(scan.outvars)


def test_below_dense_below_the_layer_loop_is_the_dense_models(model):
    """A bucket shorter than dense_below runs the dense model's layer loop (nothing carried or
    stacked per layer); its stats, built once, equal those the layers would have stacked."""
    config = dataclasses.replace(helpers.sparse_config(), dense_below=2 * BUCKET)
    below = SharePrefillAttention(config, helpers.tiny_table(), implementation="xla")
    dense = DenseAttention(implementation="xla")
    prompts = [helpers.random_prompt(3, 200)[0].tolist(), helpers.random_prompt(4, 131)[0].tolist()]
    got = prefill(model, prompts, attention=below, logit_positions="all")
    per_layer = prefill(model, prompts, attention=PerLayer(below), logit_positions="all")
    want = prefill(model, prompts, attention=dense, logit_positions="all")
    np.testing.assert_array_equal(np.asarray(got.logits), np.asarray(want.logits))
    assert sorted(got.stats) == sorted(per_layer.stats)
    for name, value in per_layer.stats.items():
        np.testing.assert_array_equal(np.asarray(got.stats[name]), np.asarray(value), name)
    assert got.stats["density"].shape == (model.config.num_layers, 2)
    np.testing.assert_array_equal(np.asarray(got.stats["num_dense"]), model.config.num_heads)

    tokens = np.zeros((2, BUCKET), np.int32)
    lengths = np.asarray([200, 131], np.int32)
    loop_outputs = {
        name: _layer_loop_outputs(model, tokens, lengths, attention)
        for name, attention in (("below", below), ("dense", dense), ("per_layer", PerLayer(below)))
    }
    assert loop_outputs["below"] == loop_outputs["dense"] < loop_outputs["per_layer"]


def test_chunks_below_dense_below_run_the_dense_loop_beside_planned_ones(model):
    """Chunked prefill: chunks over fewer keys than dense_below take the dense loop, later ones
    plan; logits and every chunk's stats equal those of calling the attention per layer."""
    config = dataclasses.replace(helpers.sparse_config(), dense_below=128)
    attention = SharePrefillAttention(config, helpers.tiny_table(), implementation="xla")
    prompt = helpers.random_prompt(6, 250)
    got = generate.prefill_chunked(model, prompt, chunk_tokens=64, attention=attention)
    want = generate.prefill_chunked(model, prompt, chunk_tokens=64, attention=PerLayer(attention))
    np.testing.assert_array_equal(np.asarray(got.logits), np.asarray(want.logits))
    for name, value in want.stats.items():
        np.testing.assert_array_equal(np.asarray(got.stats[name]), np.asarray(value), name)
    num_dense = np.asarray(got.stats["num_dense"])[:, :, 0]  # [chunks, L]
    assert (num_dense[0] == model.config.num_heads).all() and (num_dense[1:] == 0).all()


def test_smollm2_keeping_every_block_equals_dense():
    smollm2 = load_builtin("smollm2-135m-instruct")
    config = smollm2.config
    ids = smollm2.tokenizer.encode(real_models.PASSAGE)[:240]
    dense = prefill(smollm2.model, [ids], logit_positions="all")
    attention = SharePrefillAttention(
        helpers.keep_every_block_config(len(ids), block_size=64),
        helpers.all_heads_table(config.num_layers, config.num_heads),
        implementation="xla",
    )
    shared = prefill(smollm2.model, [ids], attention=attention, logit_positions="all")
    want, got = np.asarray(dense.logits[0]), np.asarray(shared.logits[0])
    np.testing.assert_allclose(got, want, atol=5e-4, rtol=0)
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
    stats = {name: np.asarray(value)[:, 0] for name, value in shared.stats.items()}
    np.testing.assert_allclose(stats["density"], 1.0)
    assert stats["num_pivot"][0] == config.num_heads  # every cluster's pivot is in layer 0
