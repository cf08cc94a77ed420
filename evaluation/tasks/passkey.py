"""Passkey retrieval: one number hidden in the repeated "The grass is green..." filler.

The classic long-context probe (Mohtashami and Jaggi, 2023): the needle is "The pass key is
{key}. Remember it. {key} is the pass key." and the question asks for the key. It is the
easiest retrieval task, which makes it the one small models pass at their longest lengths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from evaluation.tasks import haystack as haystack_lib
from evaluation.tasks.sample import TaskSample, apply_prompt_format, sample_random
from evaluation.tasks.words import draw_number

__all__ = ["PasskeyTask", "generate_passkey", "passkey_sentence"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PasskeyTask:
    """A passkey task definition.

    Attributes:
      name: the task name, also part of every sample's random seed.
      digits: digits of the pass key.
      tokens_to_generate: the generation budget.
    """

    name: str = "passkey"
    digits: int = 5
    tokens_to_generate: int = 16

    def __post_init__(self):
        if not 1 <= self.digits <= 18:
            raise ValueError(f"digits must be in [1, 18], got {self.digits}")


def passkey_sentence(key: str) -> str:
    """The needle: `The pass key is {key}. Remember it. {key} is the pass key.`"""
    return f"The pass key is {key}. Remember it. {key} is the pass key."


_INSTRUCTION = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it afterwards."
)


def generate_passkey(
    task: PasskeyTask,
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
    """Generate one passkey sample whose prompt fits `length` tokens.

    Args:
      task: the task definition.
      length: target prompt length in tokens (prompt format and answer prefix included).
      encode: tokenizer, text -> token ids (only the count is used).
      seed: seed of the sample set.
      index: sample index; (task.name, seed, index) fix the key and the depth.
      depths: one depth in [0, 1]; None draws it from RULER's 40-point depth grid.
      haystack_text: unused (the filler is always the repeated sentences).
      prompt_format: wrapper with one `{prompt}` marker (see `PROMPT_FORMATS`).
      size_hint: a guess of the haystack size, to save encodes.

    Returns:
      The sample; `answers` is the key.
    """
    del haystack_text  # same signature as the other generators
    rng = sample_random(task.name, seed, index)
    key = draw_number(rng, task.digits)
    if depths is None:
        depths = [rng.choice(haystack_lib.DEPTH_GRID)]
    depths = [float(d) for d in depths]
    if len(depths) != 1 or not 0.0 <= depths[0] <= 1.0:
        raise ValueError(f"{task.name} needs one depth in [0, 1], got {depths}")
    sentences = haystack_lib.REPEAT_SENTENCES
    inserts = [(depths[0], passkey_sentence(key))]

    def build(size: int) -> str:
        context = haystack_lib.assemble(
            lambda i: sentences[i % len(sentences)], size, inserts, style="repeat"
        )
        text = f"{_INSTRUCTION}\n{context}\nWhat is the pass key?"
        return apply_prompt_format(prompt_format, text) + " The pass key is"

    size, prompt, num_tokens = haystack_lib.fit_to_length(build, encode, length, hint=size_hint)
    return TaskSample(
        task=task.name,
        prompt=prompt,
        answers=(key,),
        metric="all",
        length=length,
        num_tokens=num_tokens,
        depths=tuple(depths),
        seed=seed,
        index=index,
        haystack_size=size,
        tokens_to_generate=task.tokens_to_generate,
    )
