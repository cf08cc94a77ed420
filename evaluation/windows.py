"""Non-overlapping token windows over long documents, for PG-19-style perplexity.

Each window is scored on its own (the model sees only the window), so a window of T tokens
measures language modelling with up to T - 1 tokens of context. Windows never overlap, never
cross a document boundary, and a document's tail shorter than a window is dropped. When fewer
windows are wanted than a document holds, they are spread evenly over it rather than taken from
its first chapters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "Window",
    "count_windows",
    "document_windows",
    "iter_window_tokens",
    "interleaved_windows",
    "plan_windows",
    "summarize_windows",
    "tokenize_documents",
]


Encode = Callable[[str], Sequence[int]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Window:
    """A span of one tokenized document.

    Attributes:
      document: the document's name (e.g. `emma`).
      slot: which of the document's non-overlapping windows this is (0 = the first).
      start: first token, inclusive.
      stop: last token, exclusive.
    """

    document: str
    slot: int
    start: int
    stop: int

    @property
    def length(self) -> int:
        """Number of tokens."""
        return self.stop - self.start


def count_windows(num_tokens: int, window_length: int) -> int:
    """Number of whole non-overlapping windows in a document: `num_tokens // window_length`."""
    if window_length < 1 or num_tokens < 0:
        raise ValueError(
            f"need window_length >= 1 and num_tokens >= 0, got {window_length}, {num_tokens}"
        )
    return num_tokens // window_length


def document_windows(
    document: str, num_tokens: int, window_length: int, *, max_windows: int | None = None
) -> list[Window]:
    """The windows of one document, all of them or `max_windows` spread evenly.

    Args:
      document: the document's name.
      num_tokens: its length in tokens.
      window_length: tokens per window.
      max_windows: at most this many; chosen at evenly spaced slots, first and last included.

    Returns:
      The windows, in document order.
    """
    available = count_windows(num_tokens, window_length)
    if max_windows is not None and max_windows < 0:
        raise ValueError(f"max_windows must be >= 0, got {max_windows}")
    if max_windows is None or max_windows >= available:
        slots = list(range(available))
    elif max_windows == 1:
        slots = [0]
    else:
        spread = np.linspace(0, available - 1, max_windows)
        slots = sorted({int(round(x)) for x in spread})
    return [
        Window(
            document=document,
            slot=slot,
            start=slot * window_length,
            stop=(slot + 1) * window_length,
        )
        for slot in slots
    ]


def plan_windows(
    token_counts: Mapping[str, int],
    window_length: int,
    *,
    max_windows_per_document: int | None = None,
    documents: Sequence[str] | None = None,
) -> list[Window]:
    """Windows over several documents, document by document.

    Args:
      token_counts: document name -> length in tokens.
      window_length: tokens per window.
      max_windows_per_document: cap per document (spread evenly), or None for all.
      documents: which documents, in this order (default: all, in mapping order).

    Returns:
      The windows.
    """
    names = list(token_counts) if documents is None else list(documents)
    unknown = sorted(set(names) - set(token_counts))
    if unknown:
        raise KeyError(f"unknown documents {unknown}; known: {list(token_counts)}")
    windows: list[Window] = []
    for name in names:
        windows += document_windows(
            name, token_counts[name], window_length, max_windows=max_windows_per_document
        )
    return windows


def summarize_windows(windows: Sequence[Window]) -> dict[str, int]:
    """Number of windows per document, in first-seen order (for reports)."""
    counts: dict[str, int] = {}
    for window in windows:
        counts[window.document] = counts.get(window.document, 0) + 1
    return counts


def tokenize_documents(documents: Mapping[str, str], encode: Encode) -> dict[str, np.ndarray]:
    """Tokenize whole documents.

    Args:
      documents: name -> text (e.g. `evaluation.texts.load_austen_novels()`).
      encode: tokenizer, text -> token ids, without special tokens (add BOS per window when the
        model needs it, and then shorten the window by one so the input stays in context).

    Returns:
      name -> int32[num_tokens] ids.
    """
    return {name: np.asarray(encode(text), dtype=np.int32) for name, text in documents.items()}


def iter_window_tokens(
    tokens: Mapping[str, np.ndarray], windows: Sequence[Window]
) -> Iterator[tuple[Window, np.ndarray]]:
    """Yield each window with its token ids.

    Args:
      tokens: name -> ids, as `tokenize_documents` returns.
      windows: windows over those documents.

    Yields:
      (window, int32[window.length] ids).
    """
    for window in windows:
        ids = tokens[window.document]
        if window.stop > ids.size:
            raise ValueError(f"{window} ends past {window.document}'s {ids.size} tokens")
        yield window, ids[window.start : window.stop]


def interleaved_windows(
    token_counts: Mapping[str, int],
    window_length: int,
    count: int,
    *,
    per_document: int = 8,
    documents: Sequence[str] | None = None,
) -> list[Window]:
    """`count` windows taken round-robin over documents, so any prefix covers many documents.

    Each document offers up to `per_document` windows spread evenly over it (`document_windows`);
    the list takes every document's first offer, then every document's second, and so on. The
    offers do not depend on `count`, so asking for more windows later extends the list without
    changing the windows already chosen (results for them stay valid).

    Args:
      token_counts: document name -> length in tokens.
      window_length: tokens per window.
      count: how many windows (fewer if the documents do not hold that many).
      per_document: windows offered per document.
      documents: which documents, in this order (default: all, in mapping order).

    Returns:
      The windows, in round-robin order.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    names = list(token_counts) if documents is None else list(documents)
    offers = [
        plan_windows(
            token_counts, window_length, max_windows_per_document=per_document, documents=[name]
        )
        for name in names
    ]
    chosen: list[Window] = []
    for rank in range(max((len(o) for o in offers), default=0)):
        for offer in offers:
            if rank < len(offer) and len(chosen) < count:
                chosen.append(offer[rank])
    return chosen
