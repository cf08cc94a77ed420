"""Sentence splitting, haystack assembly and fitting a prompt to a token budget."""

import pytest

from evaluation.tasks import haystack


def test_split_sentences():
    text = (
        'Mr. Darcy bowed.  He met J. Doe at 5 p.m. and left!\n"Why?" she asked. (It was late.) '
        "3 days later, e.g. on Monday, it rained... Then it stopped? yes it did."
    )
    assert haystack.split_sentences(text) == [
        "Mr. Darcy bowed.",
        "He met J. Doe at 5 p.m. and left!",
        '"Why?" she asked.',
        "(It was late.)",
        "3 days later, e.g. on Monday, it rained...",
        "Then it stopped? yes it did.",
    ]
    assert haystack.split_sentences("  ") == []
    assert haystack.split_sentences("no final stop") == ["no final stop"]


def test_depth_grid_is_rulers():
    assert len(haystack.DEPTH_GRID) == 40
    assert haystack.DEPTH_GRID[0] == 0.0 and haystack.DEPTH_GRID[-1] == 1.0
    assert haystack.DEPTH_GRID[:4] == (0.0, 0.03, 0.05, 0.08)


def test_essay_haystack_counts_words_and_wraps():
    essay = haystack.EssayHaystack("One two three. Four five. Six seven eight nine.")
    assert essay.num_words == 9
    assert essay.sentences(0) == []
    assert essay.sentences(4) == ["One two three.", "Four"]
    assert essay.sentences(5) == ["One two three.", "Four five."]
    assert essay.sentences(11) == [
        "One two three.",
        "Four five.",
        "Six seven eight nine.",
        "One two",
    ]


@pytest.mark.parametrize("style", ["spaces", "lines", "repeat"])
def test_assemble_places_inserts_at_depths(style):
    units = [f"U{i}." for i in range(10)]
    inserts = [(0.0, "AT0"), (0.5, "AT5"), (0.5, "ALSO5"), (1.0, "AT10"), (0.26, "AT3")]
    text = haystack.assemble(units, 10, inserts, style=style)
    tokens = text.split()
    assert tokens == (
        ["AT0", "U0.", "U1.", "U2.", "AT3", "U3.", "U4.", "AT5", "ALSO5"]
        + ["U5.", "U6.", "U7.", "U8.", "U9.", "AT10"]
    )
    if style == "lines":
        assert text.count("\n") == 14
    if style == "repeat":  # inserts on their own lines, a break after every fifth unit
        lines = text.split("\n")
        assert lines == [
            "AT0",
            "U0. U1. U2.",
            "AT3",
            "U3. U4.",
            "AT5",
            "ALSO5",
            "U5. U6. U7. U8. U9.",
            "AT10",
        ]


def _byte_count(text: str) -> list[int]:
    return list(text.encode())


@pytest.mark.parametrize("length", [40, 57, 300, 1001])
@pytest.mark.parametrize("hint", [None, 0, 3, 10_000])
def test_fit_to_length_finds_the_largest_size(length, hint):
    def build(size: int) -> str:
        return "Q: " + " ".join(f"w{i}" for i in range(size)) + " A:"

    size, text, num_tokens = haystack.fit_to_length(build, _byte_count, length, hint=hint)
    assert text == build(size)
    assert num_tokens == len(text.encode()) <= length
    assert len(build(size + 1).encode()) > length


def test_fit_to_length_errors():
    with pytest.raises(ValueError, match="without haystack"):
        haystack.fit_to_length(lambda n: "x" * (50 + n), _byte_count, 10)
    with pytest.raises(ValueError, match="does not grow"):
        haystack.fit_to_length(lambda n: "x" * (n % 3), lambda text: [], 10)


def test_assemble_measures_depth_by_size_when_given():
    units = ["a", "b", "c", "d", "a long tail unit"]
    sizes = [1, 1, 1, 1, 10]
    by_count = haystack.assemble(units, 5, [(0.5, "X")], style="lines")
    by_size = haystack.assemble(units, 5, [(0.5, "X")], style="lines", sizes=sizes)
    assert by_count.split("\n").index("X") == 3  # round(0.5 * 5)
    assert by_size.split("\n").index("X") == 4  # 4 of 14 characters is nearest to 7
    ends = haystack.assemble(units, 5, [(0.0, "S"), (1.0, "E")], style="lines", sizes=sizes)
    assert ends.split("\n") == ["S", *units, "E"]
    with pytest.raises(ValueError, match="unit sizes"):
        haystack.assemble(units, 5, [(0.5, "X")], style="lines", sizes=[1, 2])
