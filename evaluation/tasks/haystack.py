"""Haystacks: the filler text of retrieval tasks, insertion at depths, and fitting to a length.

A haystack is a sequence of *units* (sentences of a repeated paragraph, sentences of an essay
collection, or distractor lines); a task inserts its needles at fractional depths of the unit
sequence and picks the number of units whose prompt fits a token budget (`fit_to_length`).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Literal

__all__ = [
    "DEPTH_GRID",
    "REPEAT_SENTENCES",
    "Encode",
    "assemble",
    "EssayHaystack",
    "essay_haystack",
    "fit_to_length",
    "split_sentences",
]

Encode = Callable[[str], Sequence[int]]

# RULER's repeated haystack (and the classic passkey filler), one unit per sentence.
REPEAT_SENTENCES: tuple[str, ...] = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)

# RULER's depth grid: 40 evenly spaced percentages from 0 to 100, as fractions.
DEPTH_GRID: tuple[float, ...] = tuple(round(100 * i / 39) / 100 for i in range(40))

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al no vol fig inc ltd co corp dept est "
    "approx jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k a.m p.m ph.d".split()
)
# End punctuation, optional closing quotes/brackets, whitespace, then something that can open a
# sentence (a capital or a digit, possibly behind an opening quote or bracket).
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]*[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences with a regular expression (a stand-in for nltk's punkt).

    Whitespace runs become single spaces first. A boundary is `.`, `!` or `?` (plus closing
    quotes or brackets) followed by a space and a capital letter or digit, except after common
    abbreviations (`Mr.`, `e.g.`, ...) and single-letter initials.

    Args:
      text: the prose.

    Returns:
      The sentences, stripped, in order; joining them with spaces gives the normalised text.
    """
    text = re.sub(r"\s+", " ", text).strip()
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if text[match.start()] == ".":
            last_word = text[start : match.start()].rsplit(" ", 1)[-1].lower()
            if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
                continue
        sentences.append(text[start : match.end()].rstrip())
        start = match.end()
    if start < len(text):
        sentences.append(text[start:])
    return sentences


class EssayHaystack:
    """Prose cut to a number of words, as sentences: the `essay` haystack.

    The size unit is a word (as in RULER, which takes the first n words of the essays and then
    splits them into sentences), so a prompt can be fitted to within a token or two. The last
    sentence is cut short where the word budget ends; past the end of the text, it starts over.

    Args:
      text: the prose.
    """

    def __init__(self, text: str):
        self._sentences = split_sentences(text)
        if not self._sentences:
            raise ValueError("the haystack text has no sentences")
        self._words = [sentence.split(" ") for sentence in self._sentences]
        self._ends = list(itertools.accumulate(len(words) for words in self._words))

    @property
    def num_words(self) -> int:
        """Words in one pass over the text."""
        return self._ends[-1]

    def sentences(self, num_words: int) -> list[str]:
        """The first `num_words` words of the (cyclically repeated) text, as sentences."""
        full_passes, rest = divmod(num_words, self.num_words)
        sentences = self._sentences * full_passes
        whole = bisect.bisect_right(self._ends, rest)  # sentences that fit entirely
        sentences += self._sentences[:whole]
        used = self._ends[whole - 1] if whole else 0
        if rest > used:
            sentences.append(" ".join(self._words[whole][: rest - used]))
        return sentences


@functools.lru_cache(maxsize=4)
def essay_haystack(text: str) -> EssayHaystack:
    """`EssayHaystack(text)`, cached: every sample of a task set reads the same long text."""
    return EssayHaystack(text)


def _insertion_points(
    num_units: int, depths: Sequence[float], sizes: Sequence[int] | None
) -> list[int]:
    """Map fractional depths to the unit boundaries (0..num_units) to insert at.

    Without sizes every unit counts the same: the boundary is `round(depth * num_units)`. With
    sizes, it is the boundary whose share of the total size is nearest to the depth.
    """
    if sizes is None:
        return [min(num_units, int(depth * num_units + 0.5)) for depth in depths]
    if len(sizes) != num_units:
        raise ValueError(f"{len(sizes)} unit sizes for {num_units} units")
    boundaries = [0, *itertools.accumulate(sizes)]
    points = []
    for depth in depths:
        target = depth * boundaries[-1]
        after = min(bisect.bisect_left(boundaries, target), num_units)
        before = max(after - 1, 0)
        nearer = before if target - boundaries[before] <= boundaries[after] - target else after
        points.append(nearer)
    return points


def assemble(
    units: Callable[[int], str] | Sequence[str],
    num_units: int,
    inserts: Sequence[tuple[float, str]],
    *,
    style: Literal["repeat", "spaces", "lines"],
    sizes: Sequence[int] | None = None,
) -> str:
    """Build a haystack of `num_units` units with texts inserted at fractional depths.

    Args:
      units: the haystack's units (sentences or lines), or a function from index to unit.
      num_units: how many units.
      inserts: (depth in [0, 1], text) pairs; depth 0 is before the first unit, 1 after the
        last. Texts at the same point keep their order in `inserts`.
      style: how pieces are joined. `spaces`: all pieces with single spaces (prose).
        `lines`: one piece per line. `repeat`: units with spaces and a line break after every
        `len(REPEAT_SENTENCES)`-th unit, inserted texts on lines of their own.
      sizes: the size of each unit (e.g. its characters), to measure depth by amount of text
        rather than by count of units; None counts units.

    Returns:
      The text, without leading or trailing whitespace.
    """
    if not callable(units):
        units = units.__getitem__
    points = _insertion_points(num_units, [depth for depth, _ in inserts], sizes)
    order = sorted(range(len(inserts)), key=lambda i: (points[i], i))
    pieces: list[tuple[str, bool]] = []
    next_insert = 0
    for unit in range(num_units + 1):
        while next_insert < len(order) and points[order[next_insert]] == unit:
            pieces.append((inserts[order[next_insert]][1], True))
            next_insert += 1
        if unit < num_units:
            pieces.append((units(unit), False))
    if style == "spaces":
        return " ".join(text for text, _ in pieces)
    if style == "lines":
        return "\n".join(text for text, _ in pieces)
    if style != "repeat":
        raise ValueError(f"style must be 'repeat', 'spaces' or 'lines', got {style!r}")
    out: list[str] = []
    unit = 0
    for text, is_insert in pieces:
        if is_insert:
            if out and out[-1] == " ":
                out[-1] = "\n"
            out += [text, "\n"]
        else:
            unit += 1
            out += [text, "\n" if unit % len(REPEAT_SENTENCES) == 0 else " "]
    return "".join(out).strip()


def fit_to_length(
    build: Callable[[int], str],
    encode: Encode,
    length: int,
    *,
    hint: int | None = None,
) -> tuple[int, str, int]:
    """Find the largest haystack size whose text encodes to at most `length` tokens.

    The token count is assumed to grow with the size (it does for any sane tokenizer, up to
    boundary effects of a token or two). The search refines a guess with secant steps on the
    mean tokens per unit, then brackets and bisects: about five encodes per call.

    Args:
      build: haystack size -> the full prompt text.
      encode: tokenizer; only the length of its result is used.
      length: the token budget.
      hint: a guess of the size (e.g. the previous sample's), skipping the rate estimate.

    Returns:
      (size, text, number of tokens), with number of tokens <= `length`.

    Raises:
      ValueError: even an empty haystack exceeds `length`, or the text does not grow.
    """
    counts: dict[int, int] = {}

    def count(size: int) -> int:
        if size not in counts:
            counts[size] = len(encode(build(size)))
        return counts[size]

    if count(0) > length:
        raise ValueError(
            f"the prompt without haystack already has {count(0)} tokens, over the target {length}"
        )
    limit = 64 * length + 1024  # far beyond any tokenizer's characters per token
    base = count(0)
    if hint is None:
        probe = 64
        hint = int((length - base) * probe / max(count(probe) - base, 1))
    guess = min(max(hint, 0), limit)
    # Secant steps on the mean tokens per unit: from a fair guess this lands within a unit or
    # two of the answer, so the bracketing below starts with steps of one unit.
    for _ in range(3):
        if guess == 0:
            break
        rate = max(count(guess) - base, 1) / guess
        update = min(max(guess + int((length - count(guess)) / rate), 0), limit)
        if update == guess:
            break
        guess = update
    step = 1
    # Bracket: lo fits, hi does not.
    if count(guess) <= length:
        lo, hi = guess, None
        while hi is None:
            candidate = lo + step
            if candidate > limit:
                raise ValueError(
                    f"{limit} haystack units still fit in {length} tokens: the prompt does not "
                    "grow with the haystack (does encode return one id per token?)"
                )
            if count(candidate) <= length:
                lo, step = candidate, step * 2
            else:
                hi = candidate
    else:
        lo, hi = None, guess
        while lo is None:
            candidate = max(hi - step, 0)
            if count(candidate) <= length:
                lo = candidate
            else:
                hi, step = candidate, step * 2
    while hi - lo > 1:
        middle = (lo + hi) // 2
        if count(middle) <= length:
            lo = middle
        else:
            hi = middle
    return lo, build(lo), count(lo)
