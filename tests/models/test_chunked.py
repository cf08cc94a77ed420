"""Chunked prefill: chunk after chunk over a growing cache gives the whole prompt's prefill."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import SamplingConfig, decode, prefill, prefill_chunked
from models.random_weights import random_model
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.dense import dense_causal_attention
from sharedsparse_jax.sharing import SharingTable
from tests.models.helpers import tiny_config

CHUNK = 64


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(max_position_embeddings=512), seed=3)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(5)
    return [rng.integers(0, 97, size=n).tolist() for n in (200, 150, 64)]


def test_dense_chunks_equal_the_whole_prompt(model, prompts):
    whole = prefill(model, prompts, logit_positions="all")
    chunked = prefill_chunked(model, prompts, chunk_tokens=CHUNK, logit_positions="all")
    for row, prompt in enumerate(prompts):  # positions past a row's end are padding
        np.testing.assert_allclose(
            np.asarray(chunked.logits[row, : len(prompt)]),
            np.asarray(whole.logits[row, : len(prompt)]),
            rtol=0,
            atol=2e-5,
        )
    last = prefill_chunked(model, prompts, chunk_tokens=CHUNK)
    whole_last = prefill(model, prompts)
    np.testing.assert_allclose(np.asarray(last.logits), np.asarray(whole_last.logits), atol=2e-5)
    sampling = SamplingConfig(max_new_tokens=5)
    np.testing.assert_array_equal(
        np.asarray(decode(model, last, sampling=sampling).tokens),
        np.asarray(decode(model, whole_last, sampling=sampling).tokens),
    )


def test_shareprefill_chunks_keeping_every_block_equal_dense(model, prompts):
    config = SharePrefillConfig(
        block_size=16, min_budget=512, dense_below=32, gamma=1.0, tau_qa=0.0, tau_fb=1.0
    )
    labels = {str(h): [[layer, h] for layer in range(model.config.num_layers)] for h in range(6)}
    table = SharingTable.from_json_dict(
        {"clusters": labels, "shared_clusters": list(labels)},
        num_layers=model.config.num_layers,
        num_heads=6,
    )
    attention = SharePrefillAttention(config, table, implementation="xla")
    chunked = prefill_chunked(model, prompts, chunk_tokens=CHUNK, attention=attention)
    np.testing.assert_allclose(
        np.asarray(chunked.logits), np.asarray(prefill(model, prompts).logits), atol=2e-5
    )
    stats = {k: np.asarray(v) for k, v in chunked.stats.items()}
    assert stats["density"].shape == (4, model.config.num_layers, 3)  # [chunks, L, B]
    np.testing.assert_array_equal(stats["density"], 1.0)
    assert stats["num_pivot"].sum() > 0  # each chunk chooses its pivots afresh
    assert (stats["causal_blocks"][3, :, 1:] == 0).all()  # chunk 4 is past those prompts


def test_shareprefill_chunks_plan_sparsely(model, prompts):
    config = SharePrefillConfig(block_size=16, min_budget=16, dense_below=32, tau_qa=0.05)
    attention = SharePrefillAttention(config, None, implementation="xla")
    chunked = prefill_chunked(model, prompts, chunk_tokens=CHUNK, attention=attention)
    stats = {k: np.asarray(v) for k, v in chunked.stats.items()}
    kept, causal = stats["kept_blocks"].sum(), stats["causal_blocks"].sum()
    assert 0 < kept < causal
    assert np.isfinite(np.asarray(chunked.logits)).all()


def test_chunk_size_is_checked(model, prompts):
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1"):
        prefill_chunked(model, prompts, chunk_tokens=0)


@pytest.mark.parametrize(
    "num_queries, num_keys", [(256, 640), (200, 584), (384, 384 + 128), (96, 96 + 64), (40, 72)]
)
def test_cudnn_chunks_run_the_kernel_with_every_causal_block(num_queries, num_keys):
    # cuDNN aligns causal masks with the first key: a chunk (T < S) takes the block-sparse
    # kernel with every causal block, which must equal XLA's end-aligned window.
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    q = jax.random.normal(keys[0], (2, num_queries, 6, 64), jnp.float32)
    k = jax.random.normal(keys[1], (2, num_keys, 2, 64), jnp.float32)
    v = jax.random.normal(keys[2], (2, num_keys, 2, 64), jnp.float32)
    want = dense_causal_attention(q, k, v, implementation="xla")
    got = dense_causal_attention(q, k, v, implementation="cudnn")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


def test_cudnn_chunks_must_start_on_a_block_boundary():
    q = jnp.zeros((1, 100, 2, 64))
    k = v = jnp.zeros((1, 300, 2, 64))
    with pytest.raises(ValueError, match="must start on a multiple of 16"):
        dense_causal_attention(q, k, v, implementation="cudnn")
