"""config.json parsing: every family and rope variant accepted, everything else refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.config import ModelConfig, RopeConfig, extend_context, read_config_json
from models.rope import inverse_frequencies
from tests.models.conftest import TINY_MODELS

LLAMA_3_1_8B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}
QWEN2_5_7B = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
    "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"},
}
MISTRAL_7B_V03 = {
    "architectures": ["MistralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.42.0.dev0",
    "use_cache": True,
    "vocab_size": 32768,
}


@pytest.mark.parametrize(
    "hf", [LLAMA_3_1_8B, QWEN2_5_7B, MISTRAL_7B_V03], ids=["llama3.1", "qwen2.5", "mistral"]
)
def test_real_configs_parse_and_round_trip(hf):
    config = ModelConfig.from_hf(hf)
    assert ModelConfig.from_hf(config.to_hf()) == config
    assert config.head_dim == 128 and config.num_layers in (28, 32)


def test_parsed_fields():
    llama = ModelConfig.from_hf(LLAMA_3_1_8B)
    assert llama.eos_token_ids == (128001, 128008, 128009) and llama.group_size == 4
    assert llama.rope == RopeConfig(
        rope_type="llama3",
        theta=500000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    qwen = ModelConfig.from_hf(QWEN2_5_7B)
    assert qwen.qkv_bias and not qwen.o_bias and qwen.rope.rope_type == "yarn"
    assert qwen.rope.original_max_position_embeddings == 32768


@pytest.mark.parametrize("spec", TINY_MODELS, ids=[s["name"] for s in TINY_MODELS])
def test_tiny_configs_round_trip(spec):
    config = ModelConfig.from_hf(spec["config"] | {"model_type": spec["family"]})
    assert ModelConfig.from_hf(config.to_hf()) == config


def test_transformers_5_rope_parameters():
    hf = dict(LLAMA_3_1_8B)
    scaling, theta = hf.pop("rope_scaling"), hf.pop("rope_theta")
    hf["rope_parameters"] = scaling | {"rope_theta": theta}
    assert ModelConfig.from_hf(hf) == ModelConfig.from_hf(LLAMA_3_1_8B)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"my_new_flag": True}, r"keys \['my_new_flag'\] are not understood"),
        ({"quantization_config": {"bits": 4}}, "quantization_config"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"model_type": "gemma"}, "model_type='gemma'"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "'dynamic'"),
        ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "'longrope'"),
        (
            {"rope_scaling": {"rope_type": "linear", "factor": 2.0, "beta": 1}},
            r"keys \['beta'\] are not understood for type 'linear'",
        ),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "needs keys"),
        ({"num_key_value_heads": 5}, "not a multiple of num_kv_heads=5"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ],
)
def test_llama_refusals_name_the_cause(change, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf(LLAMA_3_1_8B | change)


def test_sliding_windows_are_refused():
    with pytest.raises(ValueError, match="sliding_window=4096 < max_position_embeddings=32768"):
        ModelConfig.from_hf(MISTRAL_7B_V03 | {"sliding_window": 4096})
    with pytest.raises(ValueError, match="use_sliding_window=true"):
        ModelConfig.from_hf(QWEN2_5_7B | {"use_sliding_window": True, "max_window_layers": 21})
    with pytest.raises(ValueError, match="sliding_attention"):
        ModelConfig.from_hf(
            QWEN2_5_7B | {"layer_types": ["full_attention"] * 27 + ["sliding_attention"]}
        )
    # a window as long as the context masks nothing
    assert ModelConfig.from_hf(MISTRAL_7B_V03 | {"sliding_window": 32768})


def test_dataclass_validation():
    with pytest.raises(ValueError, match="head_dim=7"):
        ModelConfig(
            model_type="llama",
            vocab_size=10,
            hidden_size=8,
            intermediate_size=8,
            num_layers=1,
            num_heads=1,
            num_kv_heads=1,
            head_dim=7,
        )
    with pytest.raises(ValueError, match="needs a positive factor"):
        RopeConfig(rope_type="linear")


def test_default_and_linear_frequencies():
    rope = RopeConfig(theta=10000.0)
    inv_freq, scale = inverse_frequencies(rope, 16)
    np.testing.assert_allclose(inv_freq, 1.0 / 10000.0 ** (np.arange(0, 16, 2) / 16), rtol=1e-6)
    assert scale == 1.0
    linear, _ = inverse_frequencies(RopeConfig(rope_type="linear", factor=4.0), 16)
    np.testing.assert_allclose(linear, inv_freq / 4, rtol=1e-6)


def test_llama3_frequencies_by_regime():
    rope = RopeConfig(
        rope_type="llama3",
        theta=500000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    base, _ = inverse_frequencies(RopeConfig(theta=500000.0), 128)
    scaled, _ = inverse_frequencies(rope, 128)
    wavelength = 2 * np.pi / base
    short, long = wavelength < 8192 / 4, wavelength > 8192
    np.testing.assert_allclose(scaled[short], base[short], rtol=1e-6)
    np.testing.assert_allclose(scaled[long], base[long] / 8, rtol=1e-6)
    middle = ~short & ~long
    assert middle.any() and np.all(scaled[middle] < base[middle])
    assert np.all(scaled[middle] > base[middle] / 8)


def test_yarn_without_context_keys_takes_the_family_context():
    hf = QWEN2_5_7B | {"rope_scaling": {"type": "yarn", "factor": 4.0}}
    del hf["max_position_embeddings"]
    config = ModelConfig.from_hf(hf)
    # Qwen2Config: max_position_embeddings=32768, which YaRN takes as its original context.
    assert config.max_position_embeddings == 32768
    assert config.rope.original_max_position_embeddings == 32768


@pytest.mark.parametrize(
    "family,context,kv_heads,bos,eos",
    [("llama", 2048, 4, 1, (2,)), ("mistral", 131072, 8, 1, (2,)), ("qwen2", 32768, 32, None, ())],
)
def test_absent_keys_take_transformers_defaults(family, context, kv_heads, bos, eos):
    hf = {
        "model_type": family,
        "vocab_size": 256,
        "hidden_size": 512,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 32 if family == "qwen2" else 4 if family == "llama" else 8,
    }
    if family == "mistral":
        hf["sliding_window"] = None
    config = ModelConfig.from_hf(hf)
    assert config.max_position_embeddings == context
    assert config.num_kv_heads == kv_heads
    assert config.rms_norm_eps == 1e-6 and config.rope == RopeConfig(theta=10000.0)
    assert not config.tie_word_embeddings
    assert (config.bos_token_id, config.eos_token_ids) == (bos, eos)


def test_mistral_without_sliding_window_key_gets_the_default_window():
    hf = dict(MISTRAL_7B_V03)
    del hf["sliding_window"]
    # MistralConfig's default window of 4096 masks keys in a 32768-token context.
    with pytest.raises(ValueError, match="no sliding_window key.*default window of 4096"):
        ModelConfig.from_hf(hf)
    # ... and masks nothing when the context is no longer than the window.
    assert ModelConfig.from_hf(hf | {"max_position_embeddings": 4096}).max_position_embeddings


def test_swish_is_silu():
    assert ModelConfig.from_hf(LLAMA_3_1_8B | {"hidden_act": "swish"}) == ModelConfig.from_hf(
        LLAMA_3_1_8B
    )


@pytest.mark.parametrize("key", ["num_hidden_layers", "vocab_size", "num_attention_heads"])
def test_missing_shape_keys_name_the_file(tmp_path, key):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in LLAMA_3_1_8B.items() if k != key}))
    with pytest.raises(ValueError, match=rf"{path} lacks the required key\(s\) \['{key}'\]"):
        read_config_json(path)


def test_broken_config_files_name_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama",')
    with pytest.raises(ValueError, match=rf"{path} is not valid JSON"):
        read_config_json(path)
    path.write_text(json.dumps(LLAMA_3_1_8B | {"rms_norm_eps": None}))
    with pytest.raises(ValueError, match=rf"{path}: rms_norm_eps=None must be a positive number"):
        read_config_json(path)


def test_extend_context_is_yarn_in_config_json():
    """extend_context(config, 4) is what config.json with Qwen2.5's documented YaRN block gives."""
    hf = {
        "model_type": "qwen2", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 112,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
    }  # fmt: skip
    extended = extend_context(ModelConfig.from_hf(hf), 4)
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert extended == ModelConfig.from_hf(
        hf | {"max_position_embeddings": 131072, "rope_scaling": yarn}
    )
    assert extended.max_position_embeddings == 131072
    with pytest.raises(ValueError, match="already uses 'yarn'"):
        extend_context(extended, 2)
    with pytest.raises(ValueError, match="above 1"):
        extend_context(ModelConfig.from_hf(hf), 1.0)
