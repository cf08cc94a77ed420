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
