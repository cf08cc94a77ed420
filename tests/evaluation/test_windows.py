"""Non-overlapping windows over documents."""

import numpy as np
import pytest

from evaluation import windows


def test_count_and_document_windows():
    assert windows.count_windows(10_000, 4096) == 2
    assert windows.count_windows(4095, 4096) == 0
    all_windows = windows.document_windows("emma", 10_000, 1000)
    assert [(w.slot, w.start, w.stop) for w in all_windows] == [
        (i, 1000 * i, 1000 * (i + 1)) for i in range(10)
    ]
    assert all(w.length == 1000 and w.document == "emma" for w in all_windows)
    spread = windows.document_windows("emma", 10_000, 1000, max_windows=4)
    assert [w.slot for w in spread] == [0, 3, 6, 9]
    assert [w.slot for w in windows.document_windows("emma", 10_000, 1000, max_windows=1)] == [0]
    assert len(windows.document_windows("emma", 10_000, 1000, max_windows=50)) == 10
    with pytest.raises(ValueError):
        windows.count_windows(10, 0)


def test_plan_and_summary():
    counts = {"sensesensibility": 5000, "emma": 12_500, "persuasion": 900}
    plan = windows.plan_windows(counts, 1024, max_windows_per_document=3)
    assert windows.summarize_windows(plan) == {"sensesensibility": 3, "emma": 3}
    chosen = windows.plan_windows(counts, 1024, documents=["emma"])
    assert windows.summarize_windows(chosen) == {"emma": 12}
    starts = [w.start for w in chosen]
    assert starts == sorted(starts) and len(set(starts)) == 12
    with pytest.raises(KeyError, match="mansfieldpark"):
        windows.plan_windows(counts, 1024, documents=["mansfieldpark"])


def test_tokenize_and_iterate():
    documents = {"a": "one two three four five six seven", "b": "x y z"}
    vocab = {}
    tokens = windows.tokenize_documents(
        documents, lambda text: [vocab.setdefault(w, len(vocab)) for w in text.split()]
    )
    assert tokens["a"].dtype == np.int32 and tokens["a"].tolist() == list(range(7))
    plan = windows.plan_windows({name: ids.size for name, ids in tokens.items()}, 3)
    pairs = list(windows.iter_window_tokens(tokens, plan))
    assert [ids.tolist() for _, ids in pairs] == [[0, 1, 2], [3, 4, 5], [7, 8, 9]]
    too_long = windows.Window(document="b", slot=1, start=3, stop=6)
    with pytest.raises(ValueError, match="ends past"):
        list(windows.iter_window_tokens(tokens, [too_long]))


def test_interleaved_windows_round_robin_and_stable_prefix():
    counts = {"a": 10 * 100, "b": 3 * 100 + 50, "c": 99}
    chosen = windows.interleaved_windows(counts, 100, 5, per_document=4)
    assert [(w.document, w.slot) for w in chosen] == [
        ("a", 0),
        ("b", 0),
        ("a", 3),
        ("b", 1),
        ("a", 6),
    ]
    more = windows.interleaved_windows(counts, 100, 50, per_document=4)
    assert more[:5] == chosen and len(more) == 4 + 3  # c holds no whole window
    assert all(w.length == 100 and w.stop <= counts[w.document] for w in more)
    assert windows.interleaved_windows(counts, 100, 0) == []
    with pytest.raises(ValueError, match="count"):
        windows.interleaved_windows(counts, 100, -1)
