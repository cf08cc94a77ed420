"""Variable tracking (RULER's `vt`): follow chains of assignments hidden in filler text.

A chain is `VAR ABCDE = 12345`, then `VAR FGHIJ = VAR ABCDE`, ... (`num_hops` copies), one
statement per line, placed at increasing depths of the repeated "The grass is green..." filler.
Several chains may be interleaved; the question gives the first chain's number and asks for
every variable that holds it. The reply must name all `num_hops + 1` of them
(`string_match_all`). As in RULER, one worked example (short filler, three-letter names, its
answer included) precedes the real task.
"""

from __future__ import annotations

import dataclasses
import random
import string
from collections.abc import Sequence

from evaluation.tasks import haystack as haystack_lib
from evaluation.tasks.sample import TaskSample, apply_prompt_format, sample_random

__all__ = ["VariableTrackingTask", "generate_variable_tracking"]

_EXAMPLE_FILLER_UNITS = 20  # four repeats of the five filler sentences
_EXAMPLE_MAX_HOPS = 10


@dataclasses.dataclass(frozen=True, kw_only=True)
class VariableTrackingTask:
    """A variable-tracking task definition.

    Attributes:
      name: the task name, also part of every sample's random seed.
      num_chains: chains hidden; the question is about the first.
      num_hops: assignments after the first in each chain.
      with_example: put one solved example before the task, as RULER does.
      tokens_to_generate: the generation budget.
    """

    name: str = "vt"
    num_chains: int = 1
    num_hops: int = 4
    with_example: bool = True
    tokens_to_generate: int = 30

    def __post_init__(self):
        if self.num_chains < 1 or self.num_hops < 1:
            raise ValueError(
                f"num_chains={self.num_chains} and num_hops={self.num_hops} must be >= 1"
            )

    @property
    def num_statements(self) -> int:
        """Assignment statements per sample: `num_chains * (num_hops + 1)`."""
        return self.num_chains * (self.num_hops + 1)


@dataclasses.dataclass(frozen=True)
class _Chains:
    names: list[list[str]]  # per chain, its variables in assignment order
    numbers: list[str]  # per chain, the number its first variable is given
    statements: list[str]  # all chains, chain-major
    depths: list[float]  # one per statement, chain-major, increasing within a chain


def _draw_chains(
    rng: random.Random,
    *,
    num_chains: int,
    num_hops: int,
    name_length: int,
    exclude_numbers: set[str],
    depths: Sequence[float] | None,
) -> _Chains:
    per_chain = num_hops + 1
    names: list[str] = []
    while len(names) < num_chains * per_chain:
        name = "".join(rng.choices(string.ascii_uppercase, k=name_length))
        if name not in names:
            names.append(name)
    numbers: list[str] = []
    while len(numbers) < num_chains:
        number = str(rng.randint(10000, 99999))
        if number not in numbers and number not in exclude_numbers:
            numbers.append(number)
    chains = [names[c * per_chain : (c + 1) * per_chain] for c in range(num_chains)]
    statements = []
    for chain, number in zip(chains, numbers, strict=True):
        statements.append(f"VAR {chain[0]} = {number}")
        statements += [f"VAR {chain[j + 1]} = VAR {chain[j]}" for j in range(num_hops)]
    if depths is None:
        depths = []
        for _ in range(num_chains):
            depths += sorted(round(rng.random(), 4) for _ in range(per_chain))
    else:
        depths = [float(d) for d in depths]
        chain_depths = [depths[c * per_chain : (c + 1) * per_chain] for c in range(num_chains)]
        if (
            len(depths) != num_chains * per_chain
            or not all(0.0 <= d <= 1.0 for d in depths)
            or any(list(ds) != sorted(ds) for ds in chain_depths)
        ):
            raise ValueError(
                f"need {num_chains * per_chain} depths in [0, 1], chain by chain, "
                f"non-decreasing within each chain; got {depths}"
            )
    return _Chains(chains, numbers, statements, list(depths))


def _task_text(context: str, number: str, num_names: int) -> tuple[str, str]:
    """Return (instruction with the context, answer prefix)."""
    text = (
        "Memorize and track the chain(s) of variable assignment hidden in the following text."
        f"\n\n{context}\nQuestion: Find all variables that are assigned the value {number} in "
        "the text above."
    )
    prefix = (
        " Answer: According to the chain(s) of variable assignment in the text above, "
        f"{num_names} variables are assigned the value {number}, they are:"
    )
    return text, prefix


def _filler(size: int, inserts: Sequence[tuple[float, str]]) -> str:
    sentences = haystack_lib.REPEAT_SENTENCES
    return haystack_lib.assemble(
        lambda i: sentences[i % len(sentences)], size, inserts, style="repeat"
    )


def generate_variable_tracking(
    task: VariableTrackingTask,
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
    """Generate one variable-tracking sample whose prompt fits `length` tokens.

    Args:
      task: the task definition.
      length: target prompt length in tokens (prompt format, example and answer prefix
        included).
      encode: tokenizer, text -> token ids (only the count is used).
      seed: seed of the sample set.
      index: sample index; (task.name, seed, index) fix names, numbers, depths and example.
      depths: one depth in [0, 1] per statement, chain by chain, non-decreasing within a
        chain; None draws them uniformly.
      haystack_text: unused (the filler is always the repeated sentences).
      prompt_format: wrapper with one `{prompt}` marker (see `PROMPT_FORMATS`).
      size_hint: a guess of the haystack size, to save encodes.

    Returns:
      The sample; `answers` are the first chain's variables in assignment order.
    """
    del haystack_text  # same signature as the other generators
    chains = _draw_chains(
        sample_random(task.name, seed, index),
        num_chains=task.num_chains,
        num_hops=task.num_hops,
        name_length=5,
        exclude_numbers=set(),
        depths=depths,
    )
    example = ""
    if task.with_example:
        # Three-letter names and different numbers: nothing in the example can be mistaken for
        # part of the real chains.
        example_hops = min(task.num_hops, _EXAMPLE_MAX_HOPS)
        shown = _draw_chains(
            sample_random(task.name, seed, index, "example"),
            num_chains=task.num_chains,
            num_hops=example_hops,
            name_length=3,
            exclude_numbers=set(chains.numbers),
            depths=None,
        )
        text, prefix = _task_text(
            _filler(_EXAMPLE_FILLER_UNITS, list(zip(shown.depths, shown.statements, strict=True))),
            shown.numbers[0],
            example_hops + 1,
        )
        example = f"{text}{prefix} {' '.join(shown.names[0])}\n\n"
    inserts = list(zip(chains.depths, chains.statements, strict=True))

    def build(size: int) -> str:
        text, prefix = _task_text(_filler(size, inserts), chains.numbers[0], task.num_hops + 1)
        return apply_prompt_format(prompt_format, example + text) + prefix

    size, prompt, num_tokens = haystack_lib.fit_to_length(build, encode, length, hint=size_hint)
    return TaskSample(
        task=task.name,
        prompt=prompt,
        answers=tuple(chains.names[0]),
        metric="all",
        length=length,
        num_tokens=num_tokens,
        depths=tuple(chains.depths),
        seed=seed,
        index=index,
        haystack_size=size,
        tokens_to_generate=task.tokens_to_generate,
    )
