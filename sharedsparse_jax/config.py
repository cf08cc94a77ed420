"""SharePrefillConfig: every knob of the planner, validated once."""

from __future__ import annotations

import dataclasses
import math

METHODS = ("shareprefill", "vertical_slash", "flexprefill", "streaming", "dense")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SharePrefillConfig:
    """How a layer chooses its blocks. Defaults are those of the reference's evaluation scripts.

    Attributes:
      method: `shareprefill` (pivots, sharing, query-aware and vertical-slash heads),
        `flexprefill` (query-aware + vertical-slash), `vertical_slash` (MInference-style, every
        head vertical-slash with estimated budgets), `streaming` (sink + local window), `dense`.
      block_size: tokens per block (query block == key block).
      gamma: cumulative-mass coverage for budgets, pivot patterns and query-aware selection
        (the reference's pattern_threshold).
      tau_sim: square-root Jensen-Shannon bound for sharing (vertical and slash separately).
      tau_fb: a cluster whose pivot is already covered to >= tau_fb by its own vertical-slash
        pattern does not share; 1 disables this test (unless reference_quirks).
      tau_qa: a head is query-aware when the pooled estimate is within tau_qa of the true
        last-block distribution.
      min_budget: floor on vertical and slash counts, in tokens.
      max_budget: cap on vertical and slash counts, in tokens (None: no cap).
      dense_below: prompts shorter than this many tokens run dense attention in every layer.
      streaming_sink: tokens of the sink kept by `streaming`.
      streaming_window: tokens of the local window kept by `streaming`.
      reference_quirks: reproduce the reference exactly, including its inflated vs_ratio, its
        slash binning from token 0, NaN-deciding Jensen-Shannon terms and its rule that a pivot
        row never reaching gamma keeps one block (algorithm.md 3.8). Off: the documented fixes.
    """

    method: str = "shareprefill"
    block_size: int = 128
    gamma: float = 0.95
    tau_sim: float = 0.5
    tau_fb: float = 0.95
    tau_qa: float = 0.1
    min_budget: int = 1024
    max_budget: int | None = None
    dense_below: int = 1024
    streaming_sink: int = 128
    streaming_window: int = 4096
    reference_quirks: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in (
            "block_size",
            "min_budget",
            "dense_below",
            "streaming_sink",
            "streaming_window",
        ):
            _check_int(name, getattr(self, name))
        if self.max_budget is not None:
            _check_int("max_budget", self.max_budget)
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(
                f"block_size must be a power of two >= 16 (what the Pallas kernels tile), got"
                f" {self.block_size}"
            )
        for name in ("gamma", "tau_fb"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:  # False for NaN too
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        for name in ("tau_sim", "tau_qa"):
            value = getattr(self, name)
            if not value >= 0.0:  # False for NaN too
                raise ValueError(f"{name} must be a number >= 0, got {value}")
        if not isinstance(self.reference_quirks, bool):
            raise ValueError(f"reference_quirks must be a bool, got {self.reference_quirks!r}")
        if self.min_budget < 1:
            raise ValueError(f"min_budget must be >= 1 token, got {self.min_budget}")
        if self.max_budget is not None and self.max_budget < self.min_budget:
            raise ValueError(f"max_budget={self.max_budget} is below min_budget={self.min_budget}")
        if self.dense_below < self.block_size:
            raise ValueError(
                f"dense_below={self.dense_below} must be at least one block"
                f" ({self.block_size} tokens): estimation reads the last full query block"
            )
        if self.streaming_sink < 1 or self.streaming_window < 1:
            raise ValueError(
                f"streaming_sink and streaming_window must be >= 1 token, got"
                f" {self.streaming_sink} and {self.streaming_window}"
            )

    def below_fallback_coverage(self, vs_ratio):
        """Whether a pivot whose own vertical-slash pattern covers vs_ratio of its map may share.

        vs_ratio < tau_fb; tau_fb = 1 lets every pivot share (a ratio of exactly 1 included),
        except with reference_quirks, where the reference's strict comparison stays.
        """
        disabled = self.tau_fb >= 1.0 and not self.reference_quirks
        return vs_ratio < (math.inf if disabled else self.tau_fb)

    @property
    def min_blocks(self) -> int:
        """b_min: the budget floor in blocks."""
        return math.ceil(self.min_budget / self.block_size)

    @property
    def max_blocks(self) -> int | None:
        """b_max before clipping to the prompt's block count (None: no cap)."""
        return None if self.max_budget is None else math.ceil(self.max_budget / self.block_size)


def _check_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer number of tokens, got {value!r}")
