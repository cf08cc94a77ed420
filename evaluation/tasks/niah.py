"""Needle-in-a-haystack retrieval (RULER's `niah_*` tasks), written from the task definitions.

A needle is the sentence "One of the special magic {values} for {key} is: {value}." Keys and
values are words (`adjective-noun`), 7-digit numbers or UUIDs. A sample hides
`num_keys * num_values` needles at depths of a haystack and asks for the values of
`num_queries` of the keys; the reply must contain every asked value (`string_match_all`).

Haystacks: `repeat` ("The grass is green. The sky is blue. ..."), `essay` (prose split into
sentences, RULER uses Paul Graham's essays) and `needle` (distractor needles with other keys,
one per line).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Literal

from evaluation.tasks import haystack as haystack_lib
from evaluation.tasks.sample import TaskSample, apply_prompt_format, sample_random
from evaluation.tasks.words import NeedleKind, draw_distinct

__all__ = ["NiahTask", "generate_niah", "needle_sentence"]

_KINDS = ("words", "numbers", "uuids")


@dataclasses.dataclass(frozen=True, kw_only=True)
class NiahTask:
    """A needle-in-a-haystack task definition.

    Attributes:
      name: the task name, also part of every sample's random seed.
      haystack: `repeat`, `essay` or `needle`.
      key_kind: what keys are: `words`, `numbers` or `uuids`.
      value_kind: what values are.
      num_keys: distinct keys hidden.
      num_values: values per key (each its own needle).
      num_queries: keys asked about (at most `num_keys`).
      tokens_to_generate: the generation budget.
    """

    name: str
    haystack: Literal["repeat", "essay", "needle"] = "essay"
    key_kind: NeedleKind = "words"
    value_kind: NeedleKind = "numbers"
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1
    tokens_to_generate: int = 128

    def __post_init__(self):
        if self.haystack not in ("repeat", "essay", "needle"):
            raise ValueError(f"haystack must be repeat, essay or needle, got {self.haystack!r}")
        if self.key_kind not in _KINDS or self.value_kind not in _KINDS:
            raise ValueError(
                f"key_kind and value_kind must be in {_KINDS}, got "
                f"{self.key_kind!r} and {self.value_kind!r}"
            )
        if min(self.num_keys, self.num_values, self.num_queries) < 1:
            raise ValueError(
                f"num_keys={self.num_keys}, num_values={self.num_values} and "
                f"num_queries={self.num_queries} must all be >= 1"
            )
        if self.num_queries > self.num_keys:
            raise ValueError(f"num_queries={self.num_queries} exceeds num_keys={self.num_keys}")
        if self.num_keys * self.num_values > len(haystack_lib.DEPTH_GRID):
            raise ValueError(f"at most {len(haystack_lib.DEPTH_GRID)} needles per sample")

    @property
    def num_needles(self) -> int:
        """Needles per sample: `num_keys * num_values`."""
        return self.num_keys * self.num_values


def needle_sentence(value_kind: str, key: str, value: str) -> str:
    """The needle text: `One of the special magic {value_kind} for {key} is: {value}.`"""
    return f"One of the special magic {value_kind} for {key} is: {value}."


def _task_text(task: NiahTask, context: str, query: str) -> tuple[str, str]:
    """Return (instruction with the context, answer prefix) for the asked keys."""
    kinds = task.value_kind
    if task.num_queries * task.num_values == 1:
        kind = kinds[:-1]
        text = (
            f"A special magic {kind} is hidden within the following text. Make sure to "
            f"memorize it. I will quiz you about the {kind} afterwards.\n{context}\n"
            f"What is the special magic {kind} for {query} mentioned in the provided text?"
        )
        return text, f" The special magic {kind} for {query} mentioned in the provided text is"
    text = (
        f"Some special magic {kinds} are hidden within the following text. Make sure to "
        f"memorize it. I will quiz you about the {kinds} afterwards.\n{context}\n"
        f"What are all the special magic {kinds} for {query} mentioned in the provided text?"
    )
    return text, f" The special magic {kinds} for {query} mentioned in the provided text are"


def _join_keys(keys: Sequence[str]) -> str:
    """`a`, `a and b`, `a, b, and c`."""
    if len(keys) <= 2:
        return " and ".join(keys)
    return ", ".join(keys[:-1]) + ", and " + keys[-1]


class _Distractors:
    """Distractor needles, drawn on demand from their own random stream."""

    def __init__(self, task: NiahTask, rng, exclude: set[str]):
        self._lines: list[str] = []
        self._stream = self._generate(task, rng, exclude)

    @staticmethod
    def _generate(task: NiahTask, rng, exclude: set[str]) -> Iterator[str]:
        seen = set(exclude)  # distractors never repeat a real key or value, nor each other
        while True:
            key = draw_distinct(task.key_kind, rng, 1, seen)[0]
            seen.add(key)
            value = draw_distinct(task.value_kind, rng, 1, seen)[0]
            seen.add(value)
            yield needle_sentence(task.value_kind, key, value)

    def __call__(self, index: int) -> str:
        while len(self._lines) <= index:
            self._lines.append(next(self._stream))
        return self._lines[index]


def generate_niah(
    task: NiahTask,
    *,
    length: int,
    encode: haystack_lib.Encode,
    seed: int = 0,
    index: int = 0,
    depths: Sequence[float] | None = None,
    haystack_text: str | None = None,
    prompt_format: str = "{prompt}",
    size_hint: int | None = None,
) -> TaskSample:
    """Generate one needle-in-a-haystack sample whose prompt fits `length` tokens.

    Args:
      task: the task definition.
      length: target prompt length in tokens (prompt format and answer prefix included); the
        haystack grows until one more unit would exceed it.
      encode: tokenizer, text -> token ids (only the count is used).
      seed: seed of the sample set.
      index: sample index; (task.name, seed, index) fix keys, values, depths and distractors.
      depths: one depth in [0, 1] per needle (controlled placement); None draws them from
        RULER's 40-point depth grid without replacement.
      haystack_text: prose for the `essay` haystack; None loads Paul Graham's essays
        (`evaluation.texts.load_paul_graham_essays`, which may download them).
      prompt_format: wrapper with one `{prompt}` marker (see `PROMPT_FORMATS`).
      size_hint: a guess of the haystack size, e.g. the previous sample's, to save encodes.

    Returns:
      The sample; `answers` are the asked values in query order.
    """
    rng = sample_random(task.name, seed, index)
    keys = draw_distinct(task.key_kind, rng, task.num_keys)
    values = draw_distinct(task.value_kind, rng, task.num_needles, exclude=set(keys))
    values_of_key = [
        values[k * task.num_values : (k + 1) * task.num_values] for k in range(len(keys))
    ]
    needles = [
        needle_sentence(task.value_kind, key, value)
        for key, key_values in zip(keys, values_of_key, strict=True)
        for value in key_values
    ]
    rng.shuffle(needles)
    if depths is None:
        depths = sorted(rng.sample(haystack_lib.DEPTH_GRID, task.num_needles))
    else:
        depths = sorted(float(d) for d in depths)
        if len(depths) != task.num_needles or not all(0.0 <= d <= 1.0 for d in depths):
            raise ValueError(
                f"{task.name} needs {task.num_needles} depths in [0, 1], got {list(depths)}"
            )
    asked = rng.sample(range(task.num_keys), task.num_queries)
    answers = tuple(value for k in asked for value in values_of_key[k])
    query = _join_keys([keys[k] for k in asked])

    inserts = list(zip(depths, needles, strict=True))
    if task.haystack == "repeat":
        sentences = haystack_lib.REPEAT_SENTENCES

        def make_context(size: int) -> str:
            units = lambda i: sentences[i % len(sentences)]
            return haystack_lib.assemble(units, size, inserts, style="repeat")

    elif task.haystack == "essay":
        if haystack_text is None:
            from evaluation.texts import load_paul_graham_essays

            haystack_text = load_paul_graham_essays()
        essay = haystack_lib.essay_haystack(haystack_text)

        def make_context(size: int) -> str:
            # size counts words; needles go between sentences, at depths measured in characters
            units = essay.sentences(size)
            sizes = [len(unit) + 1 for unit in units]
            return haystack_lib.assemble(units, len(units), inserts, style="spaces", sizes=sizes)

    else:
        distractors = _Distractors(
            task, sample_random(task.name, seed, index, "distractors"), {*keys, *values}
        )

        def make_context(size: int) -> str:
            return haystack_lib.assemble(distractors, size, inserts, style="lines")

    def build(size: int) -> str:
        text, answer_prefix = _task_text(task, make_context(size), query)
        return apply_prompt_format(prompt_format, text) + answer_prefix

    size, prompt, num_tokens = haystack_lib.fit_to_length(build, encode, length, hint=size_hint)
    return TaskSample(
        task=task.name,
        prompt=prompt,
        answers=answers,
        metric="all",
        length=length,
        num_tokens=num_tokens,
        depths=tuple(depths),
        seed=seed,
        index=index,
        haystack_size=size,
        tokens_to_generate=task.tokens_to_generate,
    )
