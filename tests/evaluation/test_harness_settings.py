"""Variants and settings: parsing, labels, and the dense-by-construction rule vs the planner."""

import jax
import numpy as np
import pytest

from evaluation.harness.settings import (
    PRESET_VARIANTS,
    Setting,
    Variant,
    parse_variant,
    settings_for,
)
from sharedsparse_jax import planner, stats
from sharedsparse_jax.sharing import SharingState


def test_presets_and_overrides():
    assert parse_variant("default") is PRESET_VARIANTS["default"]
    variant = parse_variant("g90=small,gamma=0.9,max_budget=none")
    assert variant.name == "g90"
    config = variant.config("flexprefill")
    assert (config.block_size, config.gamma, config.max_budget) == (64, 0.9, None)
    assert config.min_budget == PRESET_VARIANTS["small"].overrides["min_budget"]
    assert "gamma=0.9" in variant.description


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope", "unknown variant"),
        ("x=nope,gamma=0.9", "unknown base"),
        ("x=default,gamma", "not key=value"),
        ("x=default,colour=red", "unknown SharePrefillConfig fields"),
        ("x=default,gamma=2.0", "gamma"),
        ("bad name=default", "letters, digits"),
    ],
)
def test_bad_variants_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_variant(spec)


def test_variant_may_not_set_method():
    with pytest.raises(ValueError, match="method"):
        Variant(name="v", overrides={"method": "dense"})


def test_settings_labels_and_order():
    variants = [PRESET_VARIANTS["default"], PRESET_VARIANTS["small"]]
    settings = settings_for(["dense", "flexprefill", "streaming"], variants)
    assert [s.label for s in settings] == [
        "dense",
        "flexprefill@default",
        "streaming@default",
        "flexprefill@small",
        "streaming@small",
    ]
    with pytest.raises(ValueError, match="no variant"):
        Setting(method="dense", variant=variants[0])
    with pytest.raises(ValueError, match="needs one"):
        Setting(method="streaming", variant=None)


def _planned_density(setting: Setting, num_tokens: int, padded: int) -> float:
    """Density of one layer's plan from the planner itself, on random q and k."""
    config = setting.config()
    rng = np.random.default_rng(num_tokens)
    q = rng.standard_normal((1, padded, 4, 16)).astype(np.float32)
    k = rng.standard_normal((1, padded, 2, 16)).astype(np.float32)
    lengths = np.array([num_tokens], np.int32)
    state = SharingState.initial(1, 0, -(-padded // config.block_size))
    plan, _ = planner.plan_layer(
        jax.numpy.asarray(q),
        jax.numpy.asarray(k),
        state,
        layer=0,
        lengths=lengths,
        config=config,
        table=None,
    )
    return float(stats.layer_stats(plan, lengths, config.block_size)["density"][0])


@pytest.mark.parametrize(
    "method, num_tokens",
    [
        ("flexprefill", 200),  # under dense_below
        ("flexprefill", 256),  # the budget floor covers all 8 blocks
        ("vertical_slash", 256),
        ("streaming", 200),
        ("streaming", 256),  # sink 1 + window 6 blocks < 8: not dense
        ("streaming", 224),  # 7 blocks: dense
    ],
)
def test_dense_by_construction_agrees_with_the_planner(method, num_tokens):
    variant = parse_variant(
        "t=small,block_size=32,min_budget=256,dense_below=224,streaming_sink=32,"
        "streaming_window=192"
    )
    setting = Setting(method=method, variant=variant)
    density = _planned_density(setting, num_tokens, padded=256)
    if setting.is_dense_by_construction(num_tokens):
        assert density == 1.0
    else:  # only streaming's plan is input-independent, so only it must then be sparse
        assert method == "streaming" and density < 1.0
