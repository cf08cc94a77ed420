"""The wall time JAX spends tracing, lowering and compiling, read from its monitoring events."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax

COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


@contextlib.contextmanager
def compile_clock() -> Iterator[list[float]]:
    """Measures the wall time JAX spends tracing, lowering and compiling inside the block.

    Yields:
      A list that, when the block exits, holds one number: the seconds covered by JAX's
      compile events (nested events, e.g. inner jits traced inside outer ones, count once).
    """
    spans: list[tuple[float, float]] = []

    def listener(event: str, start: float, end: float, **kwargs: Any) -> None:
        del kwargs
        if event in COMPILE_EVENTS:
            spans.append((start, end))

    total: list[float] = []
    jax.monitoring.register_event_time_span_listener(listener)
    try:
        yield total
    finally:
        jax.monitoring.unregister_event_time_span_listener(listener)
        total.append(union_length(spans))


def union_length(spans: list[tuple[float, float]]) -> float:
    """The length of the union of (start, end) spans: overlapping time counts once."""
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered
