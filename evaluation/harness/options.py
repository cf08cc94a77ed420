"""What an evaluation run is asked to do (EvalOptions) and what it did (RunReport)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from evaluation.harness.settings import DENSE, Setting, Variant, settings_for
from evaluation.harness.store import TEXT
from evaluation.tasks import get_task


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """What to evaluate.

    Attributes:
      models: model names (built-in names or `tiny-random`).
      tasks: `text` (perplexity and fidelity on Austen windows) and retrieval task names.
      text_lengths: model -> window lengths in tokens.
      retrieval_lengths: model -> prompt lengths in tokens.
      methods: method names; dense always runs (it is every comparison's reference).
      variants: planner variants the sparse methods run under.
      windows: text windows per (model, length).
      samples: retrieval task -> samples per cell (`default` for the others).
      kl_positions: last positions per window whose next-token KL to dense is measured.
      max_new_tokens: cap on generated tokens (None: each task's RULER budget).
      seed: seed of the retrieval samples.
      dtype: `auto`, `float32`, `bfloat16` or `float16`.
      table: `builtin`, `none` or a table JSON path (shareprefill's sharing table).
      yarn_factor: extend every model's context this many times with YaRN (> 1; results are
        kept under the model's name with the factor, `store.model_label`); None: the trained
        context.
      device_budget_s: stop starting new units after this many seconds (None: no limit).
      documents: texts to cut windows from (None: Jane Austen's novels).
      haystack_text: prose for essay haystacks (None: Paul Graham's essays).
    """

    models: Sequence[str]
    tasks: Sequence[str]
    text_lengths: Mapping[str, Sequence[int]]
    retrieval_lengths: Mapping[str, Sequence[int]]
    methods: Sequence[str]
    variants: Sequence[Variant]
    windows: int = 4
    samples: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"default": 50})
    kl_positions: int = 64
    max_new_tokens: int | None = None
    seed: int = 0
    dtype: str = "auto"
    table: str = "builtin"
    yarn_factor: float | None = None
    device_budget_s: float | None = None
    documents: Mapping[str, str] | None = None
    haystack_text: str | None = None

    def __post_init__(self):
        for task in self.tasks:
            if task != TEXT:
                get_task(task)
        if self.windows < 1 or self.kl_positions < 1:
            raise ValueError(
                f"windows and kl_positions must be >= 1: {self.windows}, {self.kl_positions}"
            )
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.yarn_factor is not None and not self.yarn_factor > 1:
            raise ValueError(f"yarn_factor must be above 1, got {self.yarn_factor}")
        if any(n < 1 for n in self.samples.values()):
            raise ValueError(f"samples per cell must be >= 1, got {dict(self.samples)}")

    def samples_for(self, task: str) -> int:
        return self.samples.get(task, self.samples.get("default", 50))

    def settings(self) -> list[Setting]:
        """Dense, then every sparse method under every variant."""
        return settings_for([DENSE, *[m for m in self.methods if m != DENSE]], list(self.variants))


@dataclasses.dataclass
class RunReport:
    """What a call did: units run, units found done, cells skipped and why, budget stop."""

    units_run: int = 0
    units_done_before: int = 0
    units_reused: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)
    stopped_by_budget: bool = False
    seconds: float = 0.0
