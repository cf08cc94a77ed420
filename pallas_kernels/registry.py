"""Implementation registries shared by the kernels' public calls.

A call names an implementation, a sequence tried in order, or None for the defaults of
`jax.default_backend()`; implementations that cannot run the call raise NotImplementedError
with the reason and the next one is tried.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax


def candidates(
    implementation: str | Sequence[str] | None,
    implementations: Mapping[str, Callable[..., Any]],
    defaults: Mapping[str, tuple[str, ...]],
) -> tuple[str, ...]:
    """The names to try, in order (ValueError for unknown names or an empty sequence)."""
    if implementation is None:
        return defaults.get(jax.default_backend(), ("xla",))
    names = (implementation,) if isinstance(implementation, str) else tuple(implementation)
    unknown = [n for n in names if n not in implementations]
    if unknown or not names:
        raise ValueError(
            f"unknown implementation {unknown or names}; choose from {sorted(implementations)}"
        )
    return names


def first_that_runs(
    names: Sequence[str], implementations: Mapping[str, Callable[..., Any]], *args, **kwargs
) -> Any:
    """Runs the first named implementation that does not raise NotImplementedError."""
    reasons = []
    for name in names:
        try:
            return implementations[name](*args, **kwargs)
        except NotImplementedError as e:
            reasons.append(f"{name}: {e}")
    raise ValueError("no implementation can run this call: " + "; ".join(reasons))
