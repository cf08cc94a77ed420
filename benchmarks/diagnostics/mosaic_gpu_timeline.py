"""Where a mosaic_gpu work item spends its cycles: the kernel's in-CTA phase timeline.

Runs the kernel once per density at the Llama-3.1-8B attention shape with
`MosaicGpuConfig(profile_dir=...)`: Mosaic GPU's profiler has every CTA record the start and end
cycle of each warpgroup's named phases (compute: stagger, setup, blocks, normalize, store;
memory: issue, drain). From the trace it reports, per warpgroup:

- the median cycles of each phase over the CTAs (a phase that runs inside the block loop, such as
  `blocks`, counts once per CTA, from its first start to its last end);
- a least-squares fit of each CTA's cycles against its row's block count: the fixed cycles per
  work item and the cycles per block.

The profiler's own bookkeeping at CTA exit makes the profiled launch several times slower, so
this measures cycles inside a CTA, not the gaps between CTAs or the kernel's wall time (the plain
launch's time is printed beside it). Each event costs the profiler about 12 cycles.

    python -m benchmarks.diagnostics.mosaic_gpu_timeline \\
        --out benchmarks/results/mosaic_gpu_timeline_h200.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import jax
import numpy as np

from benchmarks import attention as bench
from benchmarks import timing
from pallas_kernels.block_sparse_attention import BlockGeometry
from pallas_kernels.block_sparse_attention import mosaic_gpu as mosaic_backend


def launch_order(block_counts: np.ndarray) -> np.ndarray:
    """Blocks of each CTA of a one-item-per-CTA launch, indexed by CTA: query blocks fastest,
    from the last (heaviest) to the first, then heads (the kernel's launch order).
    block_counts: int[N, Tb] (one batch row)."""
    return block_counts[:, ::-1].reshape(-1)


def trace_phases(events: list[dict], traces_per_cta: int) -> list[dict]:
    """One dict per (CTA, warpgroup) trace: cta, wg, cycles (first event to last) and the cycles
    of each top-level phase, summed over its occurrences.

    Event timestamps are the profiler's: the CTA's start time plus its cycle counter, in
    thousands, so differences within one trace are cycles / 1000.
    """
    by_trace = defaultdict(list)
    for event in events:
        by_trace[event["tid"]].append(event)
    traces = []
    for tid, trace in by_trace.items():
        cta, wg = divmod(tid - 1, traces_per_cta)
        phases: dict[str, float] = defaultdict(float)
        open_events = []
        for event in trace:
            if event["ph"] == "B":
                open_events.append(event)
            elif open_events:
                begin = open_events.pop()
                if not open_events:
                    phases[begin["name"]] += (event["ts"] - begin["ts"]) * 1e3
        cycles = (trace[-1]["ts"] - trace[0]["ts"]) * 1e3
        traces.append({"cta": cta, "wg": wg, "cycles": cycles, "phases": dict(phases)})
    return traces


def summarize(traces: list[dict], block_counts: np.ndarray) -> list[dict]:
    """Per warpgroup: phase medians and the fit of cycles against block count.

    block_counts: int[N, Tb], the layout's counts for batch 0 (the benchmark's B = 1).
    """
    blocks_of_cta = launch_order(block_counts)
    rows = []
    for wg in sorted({t["wg"] for t in traces}):
        mine = [t for t in traces if t["wg"] == wg]
        counts = blocks_of_cta[[t["cta"] for t in mine]].astype(float)
        cycles = np.array([t["cycles"] for t in mine])
        listed = counts > 0
        per_block, fixed = np.polyfit(counts[listed], cycles[listed], 1)
        names = sorted({name for t in mine for name in t["phases"]})
        rows.append(
            {
                "wg": wg,
                "ctas": len(mine),
                "fixed_cycles": float(fixed),
                "cycles_per_block": float(per_block),
                "median_cycles": float(np.median(cycles)),
                "phase_median_cycles": {
                    name: float(np.median([t["phases"].get(name, 0.0) for t in mine]))
                    for name in names
                },
            }
        )
    return rows


def profile(seq_len: int, density: float, trace_dir: Path) -> dict:
    q, k, v = bench.make_inputs(seq_len)
    geometry = BlockGeometry(num_queries=seq_len, num_keys=seq_len, block_size=bench.BLOCK)
    layout, _ = bench.make_layout(geometry, density)
    plain_time = timing.time_call(bench.sparse_mosaic, q, k, v, layout)
    # One item per CTA, so that a CTA's cycles are one row's.
    config = mosaic_backend.MosaicGpuConfig(profile_dir=str(trace_dir))
    config_wgs = config.compute_wgs(bench.BLOCK)
    before = set(trace_dir.glob("*trace.json"))
    jax.block_until_ready(bench.sparse_mosaic(q, k, v, layout, config=config))
    jax.effects_barrier()  # the trace is written by a host callback
    written = sorted(set(trace_dir.glob("*trace.json")) - before)
    if not written:
        raise RuntimeError(f"the profiled launch wrote no trace into {trace_dir}")
    events = json.loads(written[-1].read_text())["traceEvents"]
    traces = trace_phases(events, traces_per_cta=config_wgs + 1)
    return {
        "seq_len": seq_len,
        "density": density,
        "blocks_per_item": float(np.asarray(layout.kv_block_count).mean()),
        "plain_time_ms": plain_time * 1e3,
        "warpgroups": summarize(traces, np.asarray(layout.kv_block_count)[0]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if jax.default_backend() != "gpu":
        raise SystemExit("the timeline needs a Hopper GPU (the profiler records hardware cycles)")
    meta = timing.environment()
    print(meta, flush=True)
    out = args.out or Path(f"benchmarks/results/mosaic_gpu_timeline_{timing.gpu_tag()}.json")
    records = []
    with tempfile.TemporaryDirectory() as trace_dir:
        for density in args.densities:
            records.append(profile(args.seq_len, density, Path(trace_dir)))
            timing.write_records(out, records, meta)
    table = []
    for record in records:
        for wg in record["warpgroups"]:
            table.append(
                {
                    "density": record["density"],
                    "blocks_per_item": record["blocks_per_item"],
                    "wg": wg["wg"],
                    "fixed_cycles": wg["fixed_cycles"],
                    "cycles_per_block": wg["cycles_per_block"],
                }
                | wg["phase_median_cycles"]
            )
    columns = list(dict.fromkeys(key for row in table for key in row))
    timing.print_table(table, columns)  # a phase the warpgroup does not have prints "None"
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
