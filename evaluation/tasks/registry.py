"""The named retrieval tasks and one entry point that generates samples for any of them."""

from __future__ import annotations

from collections.abc import Sequence

from evaluation.tasks.haystack import Encode
from evaluation.tasks.niah import NiahTask, generate_niah
from evaluation.tasks.passkey import PasskeyTask, generate_passkey
from evaluation.tasks.sample import TaskSample
from evaluation.tasks.variable_tracking import VariableTrackingTask, generate_variable_tracking

__all__ = ["TASKS", "Task", "generate_sample", "generate_samples", "get_task", "task_needs_essay"]

Task = NiahTask | VariableTrackingTask | PasskeyTask

# RULER's retrieval tasks (its `synthetic.yaml`), plus passkey. RULER's aggregation tasks
# (cwe, fwe) and QA tasks (qa_1, qa_2) are not included.
TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        PasskeyTask(name="passkey"),
        NiahTask(name="niah_single_1", haystack="repeat"),
        NiahTask(name="niah_single_2", haystack="essay"),
        NiahTask(name="niah_single_3", haystack="essay", value_kind="uuids"),
        NiahTask(name="niah_multikey_1", haystack="essay", num_keys=4),
        NiahTask(name="niah_multikey_2", haystack="needle"),
        NiahTask(name="niah_multikey_3", haystack="needle", key_kind="uuids", value_kind="uuids"),
        NiahTask(name="niah_multivalue", haystack="essay", num_values=4),
        NiahTask(name="niah_multiquery", haystack="essay", num_keys=4, num_queries=4),
        VariableTrackingTask(name="vt", num_chains=1, num_hops=4),
    )
}


def get_task(name: str) -> Task:
    """Look up a task by name, naming the known ones when it is missing."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def generate_sample(
    task: Task | str,
    *,
    length: int,
    encode: Encode,
    seed: int = 0,
    index: int = 0,
    depths: Sequence[float] | None = None,
    haystack_text: str | None = None,
    prompt_format: str = "{prompt}",
    size_hint: int | None = None,
) -> TaskSample:
    """Generate one sample of any task (see the task's own generator for the details).

    Args:
      task: a task definition or the name of one in `TASKS`.
      length: target prompt length in tokens.
      encode: tokenizer, text -> token ids.
      seed: seed of the sample set.
      index: sample index.
      depths: controlled needle depths (one per needle or statement), or None for random.
      haystack_text: prose for `essay` haystacks (None loads Paul Graham's essays).
      prompt_format: wrapper with one `{prompt}` marker.
      size_hint: a guess of the haystack size.

    Returns:
      The sample.
    """
    if isinstance(task, str):
        task = get_task(task)
    if isinstance(task, NiahTask):
        generate = generate_niah
    elif isinstance(task, VariableTrackingTask):
        generate = generate_variable_tracking
    elif isinstance(task, PasskeyTask):
        generate = generate_passkey
    else:
        raise TypeError(f"not a task definition: {task!r}")
    return generate(
        task,
        length=length,
        encode=encode,
        seed=seed,
        index=index,
        depths=depths,
        haystack_text=haystack_text,
        prompt_format=prompt_format,
        size_hint=size_hint,
    )


def generate_samples(
    task: Task | str,
    *,
    length: int,
    encode: Encode,
    num_samples: int,
    seed: int = 0,
    depths: Sequence[float] | None = None,
    haystack_text: str | None = None,
    prompt_format: str = "{prompt}",
) -> list[TaskSample]:
    """Generate samples 0 .. num_samples - 1 of one task at one length.

    Each sample's draws depend only on (task name, seed, index), so a cell can be extended with
    more samples, or regenerated at another length with the same needles, without changing the
    samples already made. Consecutive samples reuse each other's haystack size as a starting
    guess, which keeps the number of tokenizer calls per sample small.

    Args:
      task: a task definition or the name of one in `TASKS`.
      length: target prompt length in tokens.
      encode: tokenizer, text -> token ids.
      num_samples: how many samples.
      seed: seed of the sample set.
      depths: the same controlled depths for every sample, or None for random ones.
      haystack_text: prose for `essay` haystacks (None loads Paul Graham's essays).
      prompt_format: wrapper with one `{prompt}` marker.

    Returns:
      The samples, in index order.
    """
    if isinstance(task, str):
        task = get_task(task)
    if task_needs_essay(task) and haystack_text is None:
        from evaluation.texts import load_paul_graham_essays

        haystack_text = load_paul_graham_essays()
    samples: list[TaskSample] = []
    size_hint = None
    for index in range(num_samples):
        sample = generate_sample(
            task,
            length=length,
            encode=encode,
            seed=seed,
            index=index,
            depths=depths,
            haystack_text=haystack_text,
            prompt_format=prompt_format,
            size_hint=size_hint,
        )
        size_hint = sample.haystack_size
        samples.append(sample)
    return samples


def task_needs_essay(task: Task) -> bool:
    """Whether the task's haystack is prose (`haystack_text`, Paul Graham's essays by default)."""
    return isinstance(task, NiahTask) and task.haystack == "essay"
