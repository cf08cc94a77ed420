"""Tiny random HF checkpoints (built by transformers in the oracle environment) converted and
compared logit by logit, greedy continuation by greedy continuation, in float32.

The logits tests parse the config dict exactly as it was handed to transformers, keys left out
included, so that our defaults meet transformers' computation; the saved config.json (which
transformers writes with its defaults filled in) must parse to the same config."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from models import checkpoint, generate
from models.config import ModelConfig, read_config_json
from models.convert import convert_checkpoint, convert_safetensors
from tests.models.conftest import TINY_MODELS, given_config, load_reference

NAMES = [spec["name"] for spec in TINY_MODELS]


@pytest.mark.parametrize("name", NAMES)
def test_saved_config_parses_like_the_given_one(tiny_hf_dir, name):
    saved = read_config_json(tiny_hf_dir / name / "config.json")
    assert ModelConfig.from_hf(given_config(name)) == saved


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(tiny_hf_dir, name):
    config = ModelConfig.from_hf(given_config(name))
    config, params = convert_safetensors(tiny_hf_dir / name, config)
    model = checkpoint.model_from_params(config, params)
    reference = load_reference(tiny_hf_dir / name)
    result = generate.prefill(model, reference["input_ids"], logit_positions="all")
    logits = np.asarray(result.logits)
    assert logits.shape == reference["logits"].shape
    scale = np.abs(reference["logits"]).max()
    assert scale > 1.0  # the oracle's logits are far from uniform: the test can fail
    np.testing.assert_allclose(logits, reference["logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["llama3_rope_bias", "qwen2_yarn", "mistral_head_dim"])
def test_greedy_generation_matches_transformers(tiny_hf_dir, name):
    config, params = convert_safetensors(tiny_hf_dir / name)
    model = checkpoint.model_from_params(config, params)
    reference = load_reference(tiny_hf_dir / name)
    new_tokens = reference["generated"].shape[1]
    prefilled = generate.prefill(model, reference["input_ids"])
    result = generate.decode(
        model, prefilled, sampling=generate.SamplingConfig(max_new_tokens=new_tokens)
    )
    np.testing.assert_array_equal(np.asarray(result.tokens), reference["generated"])


@pytest.mark.parametrize("name", ["llama_linear_tied_gqa3", "qwen2"])
def test_orbax_round_trip(tiny_hf_dir, tmp_path, name):
    directory = convert_checkpoint(tiny_hf_dir / name, tmp_path / "ckpt")
    assert {p.name for p in directory.iterdir()} >= {"config.json", "params", "conversion.json"}
    loaded = checkpoint.load_checkpoint(directory)
    _, params = convert_safetensors(tiny_hf_dir / name)
    restored = checkpoint.load_params(directory, loaded.config)
    for key in ("embed", "final_norm"):
        np.testing.assert_array_equal(np.asarray(restored[key]), params[key])
    for key, value in params["layers"].items():
        np.testing.assert_array_equal(np.asarray(restored["layers"][key]), value)
    assert loaded.conversion["format"] == "hf-safetensors"
    assert loaded.conversion["dtype"] == "float32"
    reference = load_reference(tiny_hf_dir / name)
    logits = generate.prefill(loaded.model, reference["input_ids"], logit_positions="all").logits
    np.testing.assert_allclose(np.asarray(logits), reference["logits"], atol=1e-4, rtol=1e-4)


def test_bfloat16_load_stays_close(tiny_hf_dir, tmp_path):
    directory = convert_checkpoint(tiny_hf_dir / "llama", tmp_path / "ckpt", dtype="bfloat16")
    loaded = checkpoint.load_checkpoint(directory, dtype=jnp.bfloat16)
    assert loaded.model.embed[...].dtype == jnp.bfloat16
    reference = load_reference(tiny_hf_dir / "llama")
    logits = np.asarray(
        generate.prefill(loaded.model, reference["input_ids"], logit_positions="all").logits
    )
    error = np.abs(logits - reference["logits"]).max() / np.abs(reference["logits"]).max()
    assert error < 0.1
