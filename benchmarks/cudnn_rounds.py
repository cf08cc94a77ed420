"""Kernels timed against cuDNN dense causal attention in interleaved rounds, one cell (shape,
length, layout) at a time; the failure guard and the time budget of mosaic_gpu_check's runs."""

from __future__ import annotations

import dataclasses
import functools
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import attention as bench
from benchmarks import timing


class Deadline:
    """Whether there is time left to start another cell (--budget-s, from the start)."""

    def __init__(self, budget_s: float | None):
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def passed(self) -> bool:
        return self.budget_s is not None and self.elapsed() > self.budget_s


def guarded(label: str, records: list[dict], fn, *args, context: dict | None = None, **kwargs):
    """Runs fn; on an exception prints the traceback, records the failure (with `context`'s
    keys), returns None."""
    start = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # one failure must not end the run
        print(f"FAILED {label}: {type(e).__name__}: {str(e)[:2000]}", flush=True)
        traceback.print_exc()
        records.append(
            (context or {})
            | {
                "kind": "failure",
                "label": label,
                "error": f"{type(e).__name__}: {str(e)[:4000]}",
                "seconds": time.perf_counter() - start,
            }
        )
        return None


def max_abs(a, b) -> float:
    return float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max())


def first_call(fn):
    """Compiles and runs fn once (a failure surfaces here, not inside the timed rounds)."""
    return jax.block_until_ready(fn())


@dataclasses.dataclass(frozen=True)
class Timing:
    """How paired_rows times a cell: rounds, warm-up calls per function, the deadline, and how
    long one timed program of back-to-back calls lasts at least (timing.back_to_back; 0: one
    call per program, each its own host dispatch)."""

    rounds: int
    warmup: int = 2
    deadline: Deadline = dataclasses.field(default_factory=lambda: Deadline(None))
    program_seconds: float = 2e-3


def paired_rows(
    kind, kernels, shape, inputs, geometry, layout, density, how: Timing, records
) -> list[dict]:
    """Times (implementation, config, step) kernels against cuDNN in interleaved rounds.

    A step maps q to the attention output, with k, v and the layout bound. Each function is
    timed as one program of back-to-back calls (timing.back_to_back: no host dispatch between
    calls, which would floor a kernel shorter than it); each round runs cuDNN's program and
    every kernel's (timing.time_rounds), and a kernel's ratio to cuDNN is taken within each
    round, so the SM clock's drift under the power cap (1.5-2 GHz on the H200) falls on
    numerator and denominator alike. A kernel that fails its first call is recorded as a
    failure and left out. Each kernel's first output is compared with cuDNN's (full causal) or
    the first kernel's (max_abs_diff, diff_against), and the first call timed with its compile
    (first_call_s). The rows are appended to `records` and returned.
    """
    cell = f"{shape} S={geometry.num_queries} density={density}"
    context = shape.record() | {"seq_len": geometry.num_queries, "target_density": density}
    q, k, v = inputs

    def dense(x):
        return bench.dense_cudnn(x, k, v)

    # Compiled and run once before back_to_back times one call; on full rows, the reference.
    dense_out = guarded(
        f"{kind} cuDNN {cell}", records, first_call, functools.partial(dense, q), context=context
    )
    if dense_out is None:
        return []
    want, against = (dense_out, "cudnn") if density >= 1.0 else (None, None)
    del dense_out
    timed, firsts = [], []
    for implementation, config, step in kernels:
        label = f"{kind} {implementation} {config} {cell}"
        start = time.perf_counter()
        out = guarded(
            label,
            records,
            first_call,
            functools.partial(step, q),
            context=context | {"config": config},
        )
        if out is None:
            continue
        if want is None:
            want, against = out, config
        timed.append((implementation, config, step))
        firsts.append(
            {"first_call_s": time.perf_counter() - start, "max_abs_diff": max_abs(out, want)}
        )
        del out
    del want
    programs = guarded(
        f"{kind} {cell} programs",
        records,
        lambda: [
            timing.back_to_back(step, q, min_seconds=how.program_seconds)
            for step in [dense] + [s for *_, s in timed]
        ],
        context=context,
    )
    if programs is None:
        return []
    time_rounds = functools.partial(timing.time_rounds, warmup=how.warmup)
    fns = [program for program, _ in programs]
    samples = guarded(f"{kind} {cell}", records, time_rounds, fns, how.rounds, context=context)
    if samples is None:
        return []
    calls = [count for _, count in programs]
    dense_times = [r[0] / calls[0] for r in samples]
    rows = []
    for i, (implementation, config, _) in enumerate(timed, start=1):
        times = [r[i] / calls[i] for r in samples]
        row = {"kind": kind, "implementation": implementation, "config": config}
        row |= paired_record(layout, geometry, density, times, dense_times, shape)
        row |= firsts[i - 1] | {"diff_against": against}
        row |= {"calls_per_program": calls[i], "dense_calls_per_program": calls[0]}
        rows.append(row)
        records.append(row)
        print(
            f"{kind} {implementation} {config} {cell}: {row['time_ms']:.3f} ms,"
            f" {row['tflops_active']:.0f} TFLOP/s active, {row['vs_cudnn_median']:.1%} of"
            f" cuDNN's rate (rounds p25-p75 {row['vs_cudnn_p25']:.1%}-"
            f"{row['vs_cudnn_p75']:.1%}), {row['speedup']:.2f}x cuDNN, max |diff| vs"
            f" {against} {row['max_abs_diff']:.3g}, first call {row['first_call_s']:.1f} s,"
            f" {calls[i]} calls per program [{how.deadline.elapsed():.0f} s]",
            flush=True,
        )
    return rows


def paired_record(
    layout, geometry, density, times, dense_times, shape: bench.Shape = bench.LLAMA_8B
) -> dict:
    """A kernel's record from paired per-round times (seconds) of it and of cuDNN.

    Times are medians over the rounds; vs_cudnn_* are percentiles over the rounds of the ratio
    of its TFLOP/s on active blocks to cuDNN's in the same round.
    """
    active = bench.active_flops(layout, geometry, shape)
    dense = bench.causal_flops(geometry.num_queries, shape)
    ratios = [active / t / (dense / d) for t, d in zip(times, dense_times, strict=True)]
    record = bench.kernel_record(
        layout, geometry, density, float(np.median(times)), float(np.median(dense_times)), shape
    )
    return record | {
        "rounds": len(ratios),
        "vs_cudnn_median": float(np.median(ratios)),
        "vs_cudnn_p25": float(np.percentile(ratios, 25)),
        "vs_cudnn_p75": float(np.percentile(ratios, 75)),
        "vs_cudnn_min": min(ratios),
        "vs_cudnn_rounds": ratios,
    }
