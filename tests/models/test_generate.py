"""Prefill / decode behaviour: decode against full forward passes, bucket padding, attention
protocol (state threading, stats stacked under scan, array-holding attentions), bad inputs."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks.prefill_latency import LLAMA_8B
from models import generate
from models.attention import DenseAttention
from models.llama import Transformer
from models.random_weights import random_model
from tests.models.helpers import tiny_config


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(qkv_bias=True), seed=3)


def _prompt(rng, batch, length, vocab=97):
    return rng.integers(0, vocab, (batch, length))


@pytest.mark.parametrize("length,new_tokens", [(37, 12), (120, 20)])  # 120 + 20 grows the cache
def test_decode_matches_full_forward(model, length, new_tokens):
    prompt = _prompt(np.random.default_rng(length), 2, length)
    prefilled = generate.prefill(model, prompt)
    decoded = generate.decode(
        model,
        prefilled,
        sampling=generate.SamplingConfig(max_new_tokens=new_tokens),
        return_logits=True,
    )
    tokens = np.asarray(decoded.tokens)
    assert tokens.shape == (2, new_tokens)
    full = np.concatenate([prompt, tokens[:, :-1]], axis=1)
    forward = np.asarray(generate.prefill(model, full, logit_positions="all").logits)
    expected = forward[:, length - 1 :]
    np.testing.assert_allclose(np.asarray(decoded.logits), expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(tokens, expected.argmax(-1))
    assert np.unique(tokens).size > 1  # a degenerate model would not test much
    np.testing.assert_array_equal(np.asarray(decoded.cache.lengths), length + new_tokens)


def test_bucket_padding_does_not_change_logits(model):
    prompt = _prompt(np.random.default_rng(7), 2, 61)
    exact = generate.prefill(model, prompt, logit_positions="all", buckets=[61])
    padded = generate.prefill(model, prompt, logit_positions="all", buckets=[384])
    assert padded.cache.k.shape[2] == 384
    np.testing.assert_allclose(np.asarray(padded.logits), np.asarray(exact.logits), atol=1e-5)
    last = generate.prefill(model, prompt)
    np.testing.assert_allclose(
        np.asarray(last.logits[:, 0]), np.asarray(exact.logits[:, -1]), atol=1e-5
    )


def test_new_lengths_in_a_bucket_do_not_recompile(model):
    rng = np.random.default_rng(1)
    generate.prefill(model, _prompt(rng, 1, 40))
    compiled = generate._prefill_jit._cache_size()
    for length in (41, 77, 128):
        generate.prefill(model, _prompt(rng, 1, length))
    assert generate._prefill_jit._cache_size() == compiled


def test_bucket_length():
    assert [generate.bucket_length(n) for n in (1, 128, 129, 511, 1000, 1100)] == [
        128,
        128,
        256,
        512,
        1024,
        1280,
    ]
    for n in np.random.default_rng(0).integers(1, 200_000, 200):
        bucket = generate.bucket_length(int(n))
        assert bucket % 128 == 0 and n <= bucket <= max(128, 1.25 * n + 128)
    assert generate.bucket_length(300, buckets=[256, 1024, 512]) == 512


@dataclasses.dataclass(frozen=True)
class RecordingAttention:
    """Dense attention that threads a layer counter through the carry and reports stats."""

    def check_model(self, num_layers, num_heads):
        pass

    def init_state(self, batch, num_queries):
        return {
            "calls": jnp.zeros((), jnp.int32),
            "q_energy": jnp.zeros((batch,), jnp.float32),
            "num_queries": jnp.full((batch,), num_queries, jnp.int32),
        }

    def __call__(self, q, k, v, state, *, layer, lengths):
        out, _, _ = DenseAttention()(q, k, v, (), layer=layer, lengths=lengths)
        is_real = jnp.arange(q.shape[1])[None, :] < lengths[:, None]  # [B, T]
        energy = jnp.sum(jnp.where(is_real[:, :, None, None], q * q, 0.0), axis=(1, 2, 3))
        stats = {
            "layer": layer,
            "calls_before": state["calls"],
            "lengths": lengths,
            "num_queries": state["num_queries"],
            "q_energy": energy,
            "kv_heads": jnp.full((k.shape[2],), k.shape[1]),
        }
        new_state = {
            "calls": state["calls"] + 1,
            "q_energy": state["q_energy"] + energy,
            "num_queries": state["num_queries"],
        }
        return out, new_state, stats


def test_attention_state_and_stats_under_scan(model):
    prompt = _prompt(np.random.default_rng(2), 2, 50)
    dense = generate.prefill(model, prompt)
    recorded = generate.prefill(model, prompt, attention=RecordingAttention())
    np.testing.assert_allclose(np.asarray(recorded.logits), np.asarray(dense.logits), atol=1e-5)
    stats = jax.tree.map(np.asarray, recorded.stats)
    num_layers = model.config.num_layers
    np.testing.assert_array_equal(stats["layer"], np.arange(num_layers))
    np.testing.assert_array_equal(stats["calls_before"], np.arange(num_layers))
    np.testing.assert_array_equal(stats["lengths"], np.full((num_layers, 2), 50))
    np.testing.assert_array_equal(stats["num_queries"], np.full((num_layers, 2), 128))
    assert stats["q_energy"].shape == (num_layers, 2) and np.all(stats["q_energy"] > 0)
    # padded keys reach attention: S is the bucket length
    np.testing.assert_array_equal(stats["kv_heads"], np.full((num_layers, 2), 128))
    assert dense.stats == {}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ScaledAttention:
    """An attention object holding an array: its leaves are traced, not baked in."""

    scale: jax.Array
    name: str = dataclasses.field(default="scaled", metadata={"static": True})

    def check_model(self, num_layers, num_heads):
        pass

    def init_state(self, batch, num_queries):
        return ()

    def __call__(self, q, k, v, state, *, layer, lengths):
        out, state, _ = DenseAttention()(q, k, v, state, layer=layer, lengths=lengths)
        return out * self.scale, state, {}


def test_attention_holding_arrays_is_traced(model):
    prompt = _prompt(np.random.default_rng(4), 1, 30)
    one = generate.prefill(model, prompt, attention=ScaledAttention(jnp.float32(1.0)))
    compiled = generate._prefill_jit._cache_size()
    half = generate.prefill(model, prompt, attention=ScaledAttention(jnp.float32(0.5)))
    assert generate._prefill_jit._cache_size() == compiled
    dense = generate.prefill(model, prompt)
    np.testing.assert_allclose(np.asarray(one.logits), np.asarray(dense.logits), atol=1e-5)
    assert not np.allclose(np.asarray(half.logits), np.asarray(dense.logits), atol=1e-3)


def test_stop_tokens_and_top_p(model):
    prompt = _prompt(np.random.default_rng(5), 2, 33)
    greedy = generate.decode(
        model, generate.prefill(model, prompt), sampling=generate.SamplingConfig(max_new_tokens=6)
    )
    greedy_tokens = np.asarray(greedy.tokens)
    # A tiny nucleus keeps only the top token: sampling at temperature 1 becomes greedy.
    nucleus = generate.decode(
        model,
        generate.prefill(model, prompt),
        sampling=generate.SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=1e-6),
        rng=jax.random.key(0),
    )
    np.testing.assert_array_equal(np.asarray(nucleus.tokens), greedy_tokens)
    stop = int(greedy_tokens[0, 2])
    stopped = generate.decode(
        model,
        generate.prefill(model, prompt),
        sampling=generate.SamplingConfig(max_new_tokens=6, stop_tokens=(stop,), pad_token=96),
    )
    first_stop = [list(row).index(stop) + 1 if stop in row else 6 for row in greedy_tokens]
    np.testing.assert_array_equal(np.asarray(stopped.num_tokens), first_stop)
    for row, count, expected in zip(
        np.asarray(stopped.tokens), first_stop, greedy_tokens, strict=True
    ):
        np.testing.assert_array_equal(row[:count], expected[:count])
        assert np.all(row[count:] == 96)


def test_sampling_follows_the_distribution(model):
    prompt = _prompt(np.random.default_rng(6), 1, 20)
    prefilled = generate.prefill(model, prompt)
    probs = np.asarray(jax.nn.softmax(prefilled.logits[0, 0] / 2.0))
    keys = jax.random.split(jax.random.key(1), 4000)
    draws = np.asarray(
        jax.vmap(lambda key: generate._sample(prefilled.logits[:, 0], key, 2.0, 1.0))(keys)
    )[:, 0]
    counts = np.bincount(draws, minlength=probs.size) / draws.size
    top = np.argsort(probs)[-3:]
    np.testing.assert_allclose(counts[top], probs[top], atol=0.03)


def test_prompt_batch_pads_each_prompt_at_the_end(model):
    rng = np.random.default_rng(8)
    rows = [rng.integers(1, 97, n) for n in (5, 2, 7)]
    array, lengths = generate.prompt_batch(model, [row.tolist() for row in rows[:2]] + [rows[2]])
    np.testing.assert_array_equal(lengths, [5, 2, 7])
    assert array.shape == (3, 7) and array.dtype == np.int32
    for row, got in zip(rows, array, strict=True):
        np.testing.assert_array_equal(got[: row.size], row)
        assert (got[row.size :] == 0).all()
    # An end-padded array with its lengths: padding past the longest is cropped, the padding
    # may hold anything (it is never read), and it comes back as 0.
    padded = np.full((3, 9), -1)
    for index, row in enumerate(rows):
        padded[index, : row.size] = row
    again, again_lengths = generate.prompt_batch(model, padded, lengths=[5, 2, 7])
    np.testing.assert_array_equal(again, array)
    np.testing.assert_array_equal(again_lengths, lengths)


def test_bad_inputs_are_refused(model):
    with pytest.raises(ValueError, match="empty prompt"):
        generate.prefill(model, np.zeros((2, 0), np.int32))
    with pytest.raises(ValueError, match="empty prompt"):
        generate.prefill(model, [[]])
    with pytest.raises(ValueError, match=r"ragged batch: prompt lengths \[3, 2\]"):
        generate.prompt_array(model, [[1, 2, 3], [4, 5]])  # block-map collection needs equal
    with pytest.raises(ValueError, match=r"lengths must be in \[1, T=3\].*\[3, 0\]"):
        generate.prefill(model, np.ones((2, 3), np.int32), lengths=[3, 0])
    with pytest.raises(ValueError, match="a list of prompts has its own"):
        generate.prefill(model, [[1, 2, 3], [4, 5]], lengths=[3, 2])
    with pytest.raises(ValueError, match=r"length\) of their row \(lengths \[3, 2\]\)"):
        generate.prefill(model, [[1, 2, 3], [4, 5]], logit_positions=[2])
    with pytest.raises(ValueError, match="longer than the model's context"):
        generate.prefill(model, np.ones((1, 401), np.int32))
    with pytest.raises(ValueError, match="prompt plus max_new_tokens"):
        generate.generate(
            model, np.ones((1, 390), np.int32), sampling=generate.SamplingConfig(max_new_tokens=20)
        )
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 97\)"):
        generate.prefill(model, [[1, 97]])
    with pytest.raises(ValueError, match="needs an rng"):
        generate.decode(
            model,
            generate.prefill(model, [[1, 2]]),
            sampling=generate.SamplingConfig(temperature=0.7),
        )
    with pytest.raises(ValueError, match="last prompt position"):
        generate.decode(
            model,
            generate.prefill(model, [[1, 2, 3]], logit_positions=[0]),
            sampling=generate.SamplingConfig(),
        )
    with pytest.raises(ValueError, match="top_p"):
        generate.SamplingConfig(top_p=0.0)


def test_llama_3_1_8b_shape_compiles_quickly():
    config = LLAMA_8B
    abstract = nnx.eval_shape(lambda: Transformer(config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    spec, dynamic = generate._split_attention(DenseAttention())
    tokens = jax.ShapeDtypeStruct((1, 2048), jnp.int32)
    vector = jax.ShapeDtypeStruct((1,), jnp.int32)
    positions = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    start = time.perf_counter()
    compiled = generate._prefill_jit.lower(
        graphdef, state, tokens, vector, positions, spec, dynamic
    ).compile()
    elapsed = time.perf_counter() - start
    assert compiled is not None
    assert elapsed < 60, f"compiling the 32-layer 8B-shaped prefill took {elapsed:.1f}s"
