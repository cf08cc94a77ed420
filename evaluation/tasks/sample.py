"""One generated task sample, prompt formats, and JSON Lines storage."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

__all__ = [
    "PROMPT_FORMATS",
    "TaskSample",
    "apply_prompt_format",
    "read_jsonl",
    "sample_random",
    "write_jsonl",
]

# Wrappers around a task's text; the task's answer prefix follows the wrapper, so a chat model
# starts its reply with it. `{prompt}` marks where the task text goes.
PROMPT_FORMATS: dict[str, str] = {
    "base": "{prompt}",
    # SmolLM2-Instruct and Qwen2.5-Instruct both use ChatML turns (without their default
    # system messages here: add one to the format when a model needs it).
    "chatml": "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
}


def apply_prompt_format(prompt_format: str, text: str) -> str:
    """Put `text` into `prompt_format` at its single `{prompt}` marker (no other formatting).

    Args:
      prompt_format: a wrapper such as `PROMPT_FORMATS["chatml"]`.
      text: the task text.

    Returns:
      The wrapped text.
    """
    if prompt_format.count("{prompt}") != 1:
        raise ValueError(f"a prompt format needs exactly one '{{prompt}}', got {prompt_format!r}")
    before, after = prompt_format.split("{prompt}")
    return before + text + after


def sample_random(task: str, seed: int, index: int, stream: str = "") -> random.Random:
    """Return the random source of one sample: a function of (task, seed, index, stream) only.

    String seeds are hashed with SHA-512 by `random.Random`, so the draws do not depend on the
    process (`PYTHONHASHSEED`), the platform or the target length: the same sample index at two
    lengths has the same needles and depths.

    Args:
      task: the task name.
      seed: the sample set's seed.
      index: the sample's index.
      stream: a name for an independent stream of the same sample (e.g. distractors).

    Returns:
      A seeded `random.Random`.
    """
    return random.Random(f"{task}/{seed}/{index}/{stream}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskSample:
    """One prompt of a retrieval task, with what a correct answer must contain.

    Attributes:
      task: the task name (e.g. `niah_single_1`).
      prompt: the full model input, prompt format and answer prefix included.
      answers: the strings the reply must contain.
      metric: `all` (score = fraction of `answers` found) or `part` (1 if any is found).
      length: the target length in tokens; the prompt has at most this many.
      num_tokens: the prompt's length under the tokenizer it was generated with.
      depths: for each inserted needle (or assignment), in order of appearance, the requested
        depth as a fraction of the haystack: 0 = before all filler, 1 = after it. Prose
        haystacks measure it in characters (needles go to the nearest sentence boundary),
        the others in units (sentences of the repeated filler, distractor lines).
      seed: the seed of the sample set.
      index: the sample's index in the set; (task, seed, index) determine the random draws.
      haystack_size: number of haystack units the prompt holds.
      tokens_to_generate: the generation budget RULER gives this task.
    """

    task: str
    prompt: str
    answers: tuple[str, ...]
    metric: Literal["all", "part"]
    length: int
    num_tokens: int
    depths: tuple[float, ...]
    seed: int
    index: int
    haystack_size: int
    tokens_to_generate: int

    def __post_init__(self):
        if self.metric not in ("all", "part"):
            raise ValueError(f"metric must be 'all' or 'part', got {self.metric!r}")
        if not self.answers:
            raise ValueError(f"sample {self.task}/{self.index} has no answers")

    def to_dict(self) -> dict:
        """Return a JSON-ready dict (tuples become lists)."""
        record = dataclasses.asdict(self)
        record["answers"] = list(self.answers)
        record["depths"] = list(self.depths)
        return record

    @classmethod
    def from_dict(cls, record: dict) -> TaskSample:
        """Rebuild a sample from `to_dict`'s output."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - fields)
        if unknown:
            raise ValueError(f"unknown sample fields {unknown}")
        values = dict(record)
        values["answers"] = tuple(values["answers"])
        values["depths"] = tuple(values["depths"])
        return cls(**values)


def write_jsonl(samples: Iterable[TaskSample], path: str | Path) -> None:
    """Write samples as JSON Lines, one sample per line."""
    with open(path, "w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample.to_dict(), ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[TaskSample]:
    """Read samples written by `write_jsonl`."""
    with open(path, encoding="utf-8") as f:
        return [TaskSample.from_dict(json.loads(line)) for line in f if line.strip()]
