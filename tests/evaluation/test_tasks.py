"""Retrieval task generators: determinism, length, depth control and answers an oracle can find."""

import dataclasses
import itertools
import random
import re

import pytest

from evaluation import texts
from evaluation.tasks import (
    PROMPT_FORMATS,
    REPEAT_SENTENCES,
    TASKS,
    NiahTask,
    PasskeyTask,
    VariableTrackingTask,
    generate_sample,
    generate_samples,
    read_jsonl,
    score_predictions,
    score_sample,
    task_needs_essay,
    write_jsonl,
)


def _essay_text(num_sentences: int = 600) -> str:
    rng = random.Random(3)
    subjects = ["The founder", "A startup", "Mr. Graham", "The investor", "Every hacker"]
    verbs = ["builds", "notices", "ignores", "funds", "rewrites"]
    objects = ["a prototype", "the market", "his essay", "an idea", "the old code"]
    sentences = []
    for i in range(num_sentences):
        sentence = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} in year {i}"
        sentences.append(sentence + rng.choice([".", "!", "?"]))
        if i % 37 == 0:
            sentences.append("\n\nApril 2012")
    return " ".join(sentences)


ESSAY = _essay_text()
TOKENIZERS = {
    "bytes": lambda text: list(text.encode()),
    "words": lambda text: [hash(word) % 50_000 for word in text.split()],
}
LENGTHS = {"bytes": (1500, 6000), "words": (350, 1400)}
CASES = [(name, tok) for name in TASKS for tok in TOKENIZERS]

_NEEDLE = re.compile(r"One of the special magic (\w+) for (\S+) is: (\S+?)\.(?=\s|$)")
_QUESTION = re.compile(r"for (.+?) mentioned in the provided text\?")
_PASSKEY = re.compile(r"The pass key is (\d+)\. Remember it\. \1 is the pass key\.")
_VAR_VALUE = re.compile(r"^VAR ([A-Z]+) = (\d+)$", re.M)
_VAR_COPY = re.compile(r"^VAR ([A-Z]+) = VAR ([A-Z]+)$", re.M)


def _generate(name, tokenizer, length, **kwargs):
    kwargs.setdefault("haystack_text", ESSAY)
    return generate_sample(name, length=length, encode=TOKENIZERS[tokenizer], **kwargs)


def _oracle_answers(sample, task=None) -> list[str]:
    """Read the answer off the prompt, the way a perfect reader would."""
    prompt = sample.prompt
    task = task or TASKS[sample.task]
    if isinstance(task, PasskeyTask):
        return [m.group(1) for m in _PASSKEY.finditer(prompt)]
    if isinstance(task, VariableTrackingTask):
        asked = re.findall(r"assigned the value (\d+) in the text above", prompt)[-1]
        holders = {var for var, value in _VAR_VALUE.findall(prompt) if value == asked}
        copies = _VAR_COPY.findall(prompt)
        while True:
            more = {dst for dst, src in copies if src in holders} - holders
            if not more:
                return sorted(holders)
            holders |= more
    values_by_key: dict[str, list[str]] = {}
    for _, key, value in _NEEDLE.findall(prompt):
        values_by_key.setdefault(key, []).append(value)
    asked_keys = re.split(r", and |, | and ", _QUESTION.search(prompt).group(1))
    return sorted(value for key in asked_keys for value in values_by_key[key])


def _unit_tokens(sample, encode) -> int:
    """Tokens of the largest haystack unit: the length can miss the target by about that much."""
    task = TASKS[sample.task]
    if isinstance(task, NiahTask) and task.haystack == "essay":
        units = ESSAY.split()
    elif isinstance(task, NiahTask) and task.haystack == "needle":
        units = sample.prompt.split("\n")
    else:
        units = REPEAT_SENTENCES
    return max(len(encode(unit)) for unit in units) + 1


@pytest.mark.parametrize(("name", "tokenizer"), CASES)
def test_length_answers_and_determinism(name, tokenizer):
    encode = TOKENIZERS[tokenizer]
    for length in LENGTHS[tokenizer]:
        sample = _generate(name, tokenizer, length, seed=5, index=2)
        assert sample == _generate(name, tokenizer, length, seed=5, index=2)
        assert sample.task == name and sample.seed == 5 and sample.index == 2
        assert sample.length == length
        assert sample.num_tokens == len(encode(sample.prompt)) <= length
        assert length - sample.num_tokens <= _unit_tokens(sample, encode)
        assert sorted(sample.answers) == _oracle_answers(sample)
        assert sample.tokens_to_generate == TASKS[name].tokens_to_generate
        if not isinstance(TASKS[name], VariableTrackingTask):
            copies = 2 if name == "passkey" else 1  # the passkey needle states its key twice
            for answer in sample.answers:
                assert sample.prompt.count(answer) == copies, answer  # unambiguous


@pytest.mark.parametrize("name", list(TASKS))
def test_draws_depend_on_seed_and_index_not_length(name):
    short = _generate(name, "bytes", 2000, seed=1, index=0)
    long = _generate(name, "bytes", 5000, seed=1, index=0)
    assert (short.answers, short.depths) == (long.answers, long.depths)
    assert long.haystack_size > short.haystack_size
    others = [_generate(name, "bytes", 2000, seed=s, index=i) for s, i in [(1, 1), (2, 0)]]
    assert all(other.answers != short.answers for other in others)


def _haystack_fraction(prompt: str, needle: str, context_start: str, context_end: str) -> float:
    """Share of the context's characters that come before `needle`."""
    context = prompt.split(context_start, 1)[1].rsplit(context_end, 1)[0]
    position = context.index(needle)
    return position / len(context)


@pytest.mark.parametrize(
    ("name", "depths"),
    [
        ("passkey", (0.0,)),
        ("passkey", (1.0,)),
        ("niah_single_1", (0.3,)),
        ("niah_single_2", (0.75,)),
        ("niah_multikey_2", (0.5,)),
        ("niah_multivalue", (0.9, 0.1, 0.4, 0.6)),
    ],
)
def test_controlled_depths(name, depths):
    sample = _generate(name, "bytes", 8000, depths=depths)
    assert sample.depths == tuple(sorted(depths))
    if name == "passkey":
        needles = [m.group(0) for m in _PASSKEY.finditer(sample.prompt)]
        start, end = "afterwards.\n", "\nWhat is the pass key?"
    else:
        needles = [m.group(0) for m in _NEEDLE.finditer(sample.prompt)]
        start, end = "afterwards.\n", "\nWhat "
        if name == "niah_multikey_2":  # the haystack is made of needles: find the real one
            asked = _QUESTION.search(sample.prompt).group(1)
            needles = [n for n in needles if f" for {asked} is:" in n]
    assert len(needles) == len(depths)
    for needle, depth in zip(needles, sample.depths, strict=True):
        fraction = _haystack_fraction(sample.prompt, needle, start, end)
        assert fraction == pytest.approx(depth, abs=0.05)


def test_variable_tracking_depths_and_example():
    task = VariableTrackingTask(name="vt_two", num_chains=2, num_hops=3)
    depths = (0.1, 0.2, 0.3, 0.9, 0.05, 0.5, 0.6, 0.95)
    sample = generate_sample(task, length=3000, encode=TOKENIZERS["bytes"], depths=depths)
    assert sample.depths == depths and len(sample.answers) == 4
    assert sorted(sample.answers) == _oracle_answers(sample, task)
    real_task = sample.prompt.split("\n\nMemorize and track")[1]
    assigned = [line.split()[1] for line in real_task.split("\n") if line.startswith("VAR ")]
    # Statements appear in depth order, chains interleaved: 0.05 (chain 2), 0.1, 0.2, 0.3
    # (chain 1), 0.5, 0.6 (chain 2), 0.9 (chain 1), 0.95 (chain 2).
    assert [assigned[i] for i in (1, 2, 3, 6)] == list(sample.answers)
    assert sample.prompt.count("Memorize and track") == 2  # the worked example, then the task
    example = sample.prompt.split("\n\nMemorize and track")[0]
    solved = re.search(r"4 variables are assigned the value (\d+), they are: ([A-Z ]+)$", example)
    names = solved.group(2).split()
    assert len(names) == 4 and all(len(name) == 3 for name in names)
    assert f"VAR {names[0]} = {solved.group(1)}" in example
    assert all(f"VAR {b} = VAR {a}" in example for a, b in itertools.pairwise(names))
    with pytest.raises(ValueError, match="non-decreasing"):
        generate_sample(task, length=3000, encode=TOKENIZERS["bytes"], depths=(0.5, 0.1) * 4)
    bare = generate_sample(
        dataclasses.replace(task, with_example=False), length=3000, encode=TOKENIZERS["bytes"]
    )
    assert bare.prompt.count("Memorize and track") == 1


def test_templates_and_prompt_format():
    single = _generate("niah_single_1", "bytes", 2000, prompt_format=PROMPT_FORMATS["chatml"])
    assert single.prompt.startswith("<|im_start|>user\nA special magic number is hidden")
    assert "<|im_end|>\n<|im_start|>assistant\n The special magic number for " in single.prompt
    assert single.prompt.endswith("mentioned in the provided text is")
    multi = _generate("niah_multiquery", "bytes", 3000)
    assert multi.prompt.startswith("Some special magic numbers are hidden")
    assert multi.prompt.endswith("mentioned in the provided text are")
    assert re.search(r"for \S+, \S+, \S+, and \S+ mentioned", multi.prompt)
    uuid = _generate("niah_multikey_3", "bytes", 3000)
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuid.answers[0]
    )
    vt = _generate("vt", "bytes", 2000)
    assert vt.prompt.endswith("5 variables are assigned the value " + vt.prompt.split("value ")[-1])
    assert vt.prompt.endswith("they are:")
    with pytest.raises(ValueError, match="exactly one"):
        _generate("passkey", "bytes", 2000, prompt_format="no marker")


def test_essay_wraps_and_defaults_to_paul_graham(monkeypatch):
    tiny = "A short essay. It ends here."
    sample = _generate("niah_single_2", "bytes", 3000, haystack_text=tiny)
    assert sample.prompt.count("A short essay.") > 20
    assert sorted(sample.answers) == _oracle_answers(sample)
    calls = []
    monkeypatch.setattr(texts, "load_paul_graham_essays", lambda: calls.append(1) or ESSAY)
    samples = generate_samples(
        "niah_single_2", length=1500, encode=TOKENIZERS["bytes"], num_samples=3
    )
    assert calls == [1] and task_needs_essay(TASKS["niah_single_2"])
    assert samples[1] == _generate("niah_single_2", "bytes", 1500, index=1)


def test_generate_samples_and_jsonl(tmp_path):
    samples = generate_samples(
        "niah_multikey_1",
        length=2500,
        encode=TOKENIZERS["bytes"],
        num_samples=4,
        seed=9,
        haystack_text=ESSAY,
    )
    assert [s.index for s in samples] == [0, 1, 2, 3]
    assert len({s.prompt for s in samples}) == 4
    write_jsonl(samples, tmp_path / "cell.jsonl")
    assert read_jsonl(tmp_path / "cell.jsonl") == samples


def test_invalid_definitions():
    with pytest.raises(ValueError, match="num_queries"):
        NiahTask(name="bad", num_keys=1, num_queries=2)
    with pytest.raises(ValueError, match="haystack"):
        NiahTask(name="bad", haystack="novel")
    with pytest.raises(ValueError, match="key_kind"):
        NiahTask(name="bad", key_kind="colors")
    with pytest.raises(ValueError, match="depths"):
        _generate("niah_multivalue", "bytes", 2000, depths=(0.5,))
    with pytest.raises(ValueError, match="depth"):
        _generate("passkey", "bytes", 2000, depths=(1.5,))
    with pytest.raises(ValueError, match="without haystack"):
        _generate("vt", "bytes", 100)
    with pytest.raises(KeyError, match="niah_single_1"):
        _generate("niah_single_9", "bytes", 2000)


def test_scoring():
    sample = _generate("niah_multivalue", "bytes", 2000)
    perfect = "The numbers are " + ", ".join(sample.answers) + "."
    half = " and ".join(sample.answers[:2]).upper()
    scores = score_predictions([sample] * 3, [perfect, half, "\x00I do not know"])
    assert scores.tolist() == [1.0, 0.5, 0.0]
    part = dataclasses.replace(sample, metric="part")
    assert score_sample(part, sample.answers[3]) == 1.0
    assert score_sample(part, "nothing") == 0.0
    with pytest.raises(ValueError, match="2 predictions"):
        score_predictions([sample], ["a", "b"])
