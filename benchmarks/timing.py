"""Device timing and result records shared by the benchmark scripts."""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax


def time_call(
    fn: Callable[..., object],
    *args,
    warmup: int = 2,
    repeats: int = 7,
    min_batch_seconds: float = 0.02,
    **kwargs,
) -> float:
    """Median seconds per call of `fn(*args, **kwargs)`, timed on device.

    After `warmup` calls, each repeat issues a batch of back-to-back asynchronous calls (enough
    that one batch lasts about `min_batch_seconds`, hiding dispatch gaps) and waits for the
    last; the per-call time of a batch is its wall time over its size.
    """
    call = functools.partial(fn, *args, **kwargs)
    batch = _warm_batch_size(call, warmup, min_batch_seconds)
    return statistics.median(_time_batch(call, batch) for _ in range(repeats))


def _warm_batch_size(fn: Callable[[], object], warmup: int, min_batch_seconds: float) -> int:
    """Calls `fn` warmup + 1 times; the batch size that lasts about `min_batch_seconds`."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    start = time.perf_counter()
    jax.block_until_ready(fn())
    single = time.perf_counter() - start
    return max(1, min(200, int(min_batch_seconds / max(single, 1e-6))))


def _time_batch(fn: Callable[[], object], batch: int) -> float:
    """Seconds per call of `batch` back-to-back asynchronous calls, waiting for the last."""
    start = time.perf_counter()
    outs = [fn() for _ in range(batch)]
    jax.block_until_ready(outs)
    return (time.perf_counter() - start) / batch


def time_rounds(
    fns: Sequence[Callable[[], object]],
    rounds: int,
    warmup: int = 2,
    min_batch_seconds: float = 0.02,
) -> list[list[float]]:
    """Per-call seconds of each of `fns`, timed in turn: `rounds` rows of one sample per function.

    A round runs one batch of each function back to back (batches sized as in time_call), so
    the samples of one round share the GPU's clock and power state; compare functions within a
    round (a power-capped GPU's clock moves between rounds). Round r starts at function
    r % n, and every other block of n rounds runs in reverse, so that no function always runs
    first and each one follows every other: under the power cap a kernel runs faster after a
    cooler one (on the H200, cuDNN reaches 595-625 TFLOP/s after the Triton kernel and 573-588
    after a Mosaic GPU one).
    """
    batches = [_warm_batch_size(fn, warmup, min_batch_seconds) for fn in fns]
    n = len(fns)
    samples = []
    for r in range(rounds):
        order = [(r + j) % n for j in range(n)]
        if (r // n) % 2:
            order.reverse()
        row = [0.0] * n
        for i in order:
            row[i] = _time_batch(fns[i], batches[i])
        samples.append(row)
    return samples


def back_to_back(
    step: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    *,
    min_seconds: float = 2e-3,
    max_calls: int = 64,
) -> tuple[Callable[[], jax.Array], int]:
    """One program that runs `step` several times back to back, and how many times.

    The program applies `step` `calls` times in a `fori_loop`, each call on the previous one's
    output (x first: a data dependence, so no call is hoisted or merged), so the device runs the
    calls one after another with no host dispatch between them; a call's time is the program's
    over `calls`. Timed one dispatch per call instead, a kernel shorter than the host's dispatch
    of the call would measure the dispatch. `calls` is what makes the program last about
    `min_seconds` by one call of `step` timed here, from 1 to `max_calls`; with one, the
    program is `step` itself.

    Args:
      step: x -> an array of x's shape and dtype (an attention call on q, with k, v and the
        layout bound), compiled and run once already (a jitted function, or one that calls
        them), so that the call timed here is not a compile.
      x: the first input.
    """
    start = time.perf_counter()
    jax.block_until_ready(step(x))
    single = time.perf_counter() - start
    calls = max(1, min(max_calls, int(min_seconds / max(single, 1e-7))))
    if calls == 1:
        return functools.partial(step, x), 1
    program = jax.jit(lambda y: jax.lax.fori_loop(0, calls, lambda _, z: step(z), y))
    return functools.partial(program, x), calls


def environment() -> dict:
    """Hardware and software the numbers were taken on."""
    device = jax.devices()[0]
    return {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "commit": os.environ.get("SHAREDSPARSE_COMMIT") or _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def gpu_tag() -> str:
    """A short file-name tag for the device, e.g. 'h200'."""
    kind = jax.devices()[0].device_kind.lower()
    for tag in ("h200", "h100", "a100", "l4", "v5p", "v5e", "v6e", "v4"):
        if tag in kind:
            return tag
    return kind.replace(" ", "_") or "cpu"


def write_records(path: Path, records: list[dict], meta: dict) -> None:
    """Writes {"environment": ..., "records": [...]} as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": meta, "records": records}, indent=1) + "\n")


def merge_records(old: list[dict], new: list[dict], case: Callable[[dict], tuple]) -> list[dict]:
    """`old` without the cases `new` measures again (equal `case(record)`), then `new`."""
    keys = {case(r) for r in new}
    return [r for r in old if case(r) not in keys] + new


def merge_result_files(
    paths: Sequence[Path], out: Path, case: Callable[[dict], tuple]
) -> list[dict]:
    """Merges result files into `out`, a later file's record replacing an earlier one of the
    same case; the environment is the first file's, with every file's under `merged_from`.

    Returns:
      The merged records.
    """
    records: list[dict] = []
    environments = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        records = merge_records(records, data["records"], case)
        environments.append(data["environment"] | {"file": str(path)})
    write_records(out, records, environments[0] | {"merged_from": environments})
    print(f"wrote {out}")
    return records


def print_table(records: list[dict], columns: list[str]) -> None:
    """Prints records as a fixed-width table (the short summary at the end of a run)."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in records)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in records:
        print("  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths, strict=True)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
