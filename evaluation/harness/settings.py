"""Method settings: which sparse method runs, with which planner configuration, under what label.

A *variant* is a family of planner knobs shared by every method (block size, budgets, gamma,
streaming window ...); a *setting* is one method under one variant. Dense attention has no
variant: one dense run is the reference of every variant.

Variants are written `NAME` (a preset) or `NAME=BASE,key=value,...` (a preset with overrides,
under a new name), e.g. `g90=default,gamma=0.9`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from sharedsparse_jax.config import METHODS, SharePrefillConfig

__all__ = [
    "DEFAULT_METHODS",
    "DENSE",
    "PRESET_VARIANTS",
    "Setting",
    "Variant",
    "parse_variant",
    "settings_for",
]

DENSE = "dense"
# The order tables and plots list methods in.
DEFAULT_METHODS = ("dense", "shareprefill", "flexprefill", "vertical_slash", "streaming")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Variant:
    """A named set of SharePrefillConfig overrides (everything except `method`).

    Attributes:
      name: the label used in file names, tables and plots (letters, digits, `-`, `_`, `.`).
      overrides: SharePrefillConfig field -> value.
      description: one line for the report.
    """

    name: str
    overrides: Mapping[str, Any]
    description: str = ""

    def __post_init__(self):
        if not self.name or not all(ch.isalnum() or ch in "-_." for ch in self.name):
            raise ValueError(f"variant name {self.name!r} must be letters, digits, '-', '_', '.'")
        if "method" in self.overrides:
            raise ValueError(f"variant {self.name!r} may not set the method")
        fields = {f.name for f in dataclasses.fields(SharePrefillConfig)}
        unknown = sorted(set(self.overrides) - fields)
        if unknown:
            raise ValueError(f"variant {self.name!r}: unknown SharePrefillConfig fields {unknown}")
        object.__setattr__(self, "overrides", dict(self.overrides))
        SharePrefillConfig(**self.overrides)  # validate once, early

    def config(self, method: str) -> SharePrefillConfig:
        """The planner config of `method` under this variant."""
        return SharePrefillConfig(method=method, **self.overrides)


PRESET_VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant(
            name="default",
            overrides={"streaming_sink": 128, "streaming_window": 1024},
            description=(
                "the reference's evaluation config: block 128, gamma 0.95, tau_sim 0.5, "
                "tau_fb 0.95, tau_qa 0.1, min_budget 1024, dense below 1024 tokens; streaming "
                "keeps a 128-token sink and a 1024-token window (the same floor as min_budget)"
            ),
        ),
        Variant(
            name="small",
            overrides={
                "block_size": 64,
                "min_budget": 256,
                "dense_below": 256,
                "streaming_sink": 64,
                "streaming_window": 256,
            },
            description=(
                "short-prompt variant: block 64, min_budget 256, dense below 256 tokens, "
                "streaming sink 64 + window 256; other knobs as default. Makes ~1K prompts "
                "sparse (16 blocks) instead of dense by construction"
            ),
        ),
    )
}


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_variant(spec: str) -> Variant:
    """A variant from `NAME` (a preset) or `NAME=BASE,key=value,...`.

    Args:
      spec: the command-line spelling.

    Returns:
      The variant.
    """
    if "=" not in spec.split(",")[0]:
        if "," in spec:
            raise ValueError(f"variant {spec!r}: write overrides as NAME=BASE,key=value,...")
        if spec not in PRESET_VARIANTS:
            raise ValueError(f"unknown variant {spec!r}; presets: {sorted(PRESET_VARIANTS)}")
        return PRESET_VARIANTS[spec]
    head, *pairs = spec.split(",")
    name, base = head.split("=", 1)
    if base not in PRESET_VARIANTS:
        raise ValueError(
            f"variant {spec!r}: unknown base {base!r}; presets: {sorted(PRESET_VARIANTS)}"
        )
    overrides = dict(PRESET_VARIANTS[base].overrides)
    changed = []
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"variant {spec!r}: {pair!r} is not key=value")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = _parse_value(value.strip())
        changed.append(f"{key.strip()}={value.strip()}")
    return Variant(
        name=name,
        overrides=overrides,
        description=f"{base} with {', '.join(changed) or 'no change'}",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setting:
    """One method under one variant (dense: no variant).

    Attributes:
      method: a SharePrefillConfig method.
      variant: the variant, None for dense.
    """

    method: str
    variant: Variant | None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if (self.method == DENSE) != (self.variant is None):
            raise ValueError("dense takes no variant, and every sparse method needs one")

    @property
    def label(self) -> str:
        """`dense`, or `<method>@<variant>` (e.g. `flexprefill@default`)."""
        return DENSE if self.variant is None else f"{self.method}@{self.variant.name}"

    @property
    def is_dense(self) -> bool:
        return self.method == DENSE

    def config(self) -> SharePrefillConfig | None:
        """The planner config (None for dense, which runs the model's own dense attention)."""
        return None if self.variant is None else self.variant.config(self.method)

    def is_dense_by_construction(self, num_tokens: int) -> bool:
        """Whether this setting keeps every causal block of a prompt of `num_tokens` tokens.

        Exact, from the planner's rules: prompts under `dense_below` run dense; estimated
        methods keep at least `min_budget` vertical and slash blocks each, so a floor covering
        every block keeps them all; streaming keeps everything when sink + window covers the
        prompt. Such a run is numerically dense attention through another kernel, so the
        harness reuses the dense result instead of running it.

        Args:
          num_tokens: the prompt's real length.

        Returns:
          True when the plan is the full causal mask in every layer and head.
        """
        config = self.config()
        if config is None:
            return True
        if num_tokens < config.dense_below:
            return True
        num_blocks = math.ceil(num_tokens / config.block_size)
        if config.method == "streaming":
            sink = math.ceil(config.streaming_sink / config.block_size)
            window = math.ceil(config.streaming_window / config.block_size)
            return sink + window >= num_blocks
        return config.min_blocks >= num_blocks


def settings_for(methods: list[str] | tuple[str, ...], variants: list[Variant]) -> list[Setting]:
    """Dense once (if asked), then every sparse method under every variant.

    Args:
      methods: method names, in report order.
      variants: the variants.

    Returns:
      The settings, dense first.
    """
    settings = [Setting(method=DENSE, variant=None)] if DENSE in methods else []
    for variant in variants:
        settings += [Setting(method=m, variant=variant) for m in methods if m != DENSE]
    return settings
