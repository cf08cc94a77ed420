"""What launch schedule the mosaic_gpu kernel's work items allow: a makespan model (CPU only).

Each work item (one query block of one head) costs `fixed + per_block * blocks` cycles on one
SM, with the constants measured by benchmarks/diagnostics/mosaic_gpu_timeline.py. For the
layouts of benchmarks/attention.py, this computes the makespan over the SMs of five schedules,
in the kernel's launch order (query blocks fastest from the heaviest, then heads):

- `one_cta_per_item`: the launch with one Q tile (`MosaicGpuConfig(q_tiles=1)`). The hardware
  hands the next item to the first free SM (list scheduling in launch order).
- `persistent_round_robin`: one CTA per SM takes items j, j + SMs, j + 2 SMs, ...
- `persistent_snake`: the same, with every other round in reverse CTA order.
- `persistent_chunks`: CTA j takes the contiguous run of items whose cumulative cost falls in
  its 1/SMs share of the total (computable on device from the layout's counts with a cumsum).
- `persistent_queue`: CTAs take the next item from a shared counter (list scheduling again):
  the kernel's default persistent launch (mosaic_gpu_queue.py).

Each schedule is evaluated with the measured fixed cost and with the smaller ones given by
--fixed-cycles: what a persistent launch pays when it overlaps part of the fixed cost with the
neighbouring items (the Q copy and index loads ahead, the epilogue behind).

Efficiency is the pure block work (per_block * total blocks / SMs) over the makespan. The rate
per block equals cuDNN's (the timeline measures the same cycles per block on full rows, where the
kernel matches cuDNN), so efficiency predicts the "of cuDNN's TFLOP/s" of docs/results.md.

The model has no L2: it assumes every schedule keeps the rate per block. Contiguous chunks do
not: their CTAs in flight read far-apart K/V and lose the L2's reuse (85-87 % of cuDNN even on
full rows, docs/results.md section 7).

    python -m benchmarks.diagnostics.mosaic_gpu_schedule_model
"""

from __future__ import annotations

import argparse
import heapq
import json
from pathlib import Path

import numpy as np

from benchmarks import attention as bench
from benchmarks import timing
from benchmarks.diagnostics.mosaic_gpu_timeline import launch_order
from pallas_kernels.block_sparse_attention import BlockGeometry

SCHEDULES = (
    "one_cta_per_item",
    "persistent_round_robin",
    "persistent_snake",
    "persistent_chunks",
    "persistent_queue",
)


def list_schedule(costs: np.ndarray, num_sms: int) -> float:
    """Makespan when each item in turn goes to the SM that frees first."""
    free_at = [0.0] * num_sms
    for cost in costs:
        heapq.heappush(free_at, heapq.heappop(free_at) + cost)
    return max(free_at)


def static_schedule(costs: np.ndarray, num_sms: int, snake: bool) -> float:
    rounds, position = np.divmod(np.arange(len(costs)), num_sms)
    cta = np.where(snake & (rounds % 2 == 1), num_sms - 1 - position, position)
    return float(np.bincount(cta, weights=costs, minlength=num_sms).max())


def chunk_schedule(costs: np.ndarray, num_sms: int) -> float:
    """Makespan when CTA j runs the items starting in [j, j + 1) * total / num_sms of the
    cumulative cost."""
    starts = np.cumsum(costs) - costs
    cta = np.minimum((starts * num_sms / costs.sum()).astype(int), num_sms - 1)
    return float(np.bincount(cta, weights=costs, minlength=num_sms).max())


def makespan(schedule: str, costs: np.ndarray, num_sms: int) -> float:
    if schedule in ("one_cta_per_item", "persistent_queue"):
        return list_schedule(costs, num_sms)
    if schedule == "persistent_chunks":
        return chunk_schedule(costs, num_sms)
    return static_schedule(costs, num_sms, snake=schedule == "persistent_snake")


def efficiencies(
    blocks: np.ndarray, fixed_cycles: float, cycles_per_block: float, num_sms: int
) -> dict[str, float]:
    """Pure block work over makespan for every schedule; `blocks` in launch order."""
    costs = fixed_cycles + cycles_per_block * blocks.astype(float)
    work = cycles_per_block * float(blocks.sum()) / num_sms
    return {s: work / makespan(s, costs, num_sms) for s in SCHEDULES}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--timeline", type=Path, default=Path("benchmarks/results/mosaic_gpu_timeline_h200.json")
    )
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.2, 0.1, 0.05])
    parser.add_argument(
        "--fixed-cycles",
        type=float,
        nargs="+",
        default=[3750.0, 2850.0, 1700.0],
        help="fixed costs to model besides the measured one, from the timeline's phases: 3750"
        " when a persistent CTA prefetches the next Q and K/V but not its count and indices,"
        " 2850 when it prefetches those too (the loop's fill and drain, normalize and the"
        " stagger remain), 1700 for the loop's fill and drain alone",
    )
    parser.add_argument("--num-sms", type=int, default=132)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/mosaic_gpu_schedule_model.json")
    )
    args = parser.parse_args()
    timeline = json.loads(args.timeline.read_text())
    measured = next(r for r in timeline["records"] if r["density"] < 1.0)
    # A CTA ends with its slowest warpgroup.
    slowest = max(measured["warpgroups"], key=lambda wg: wg["fixed_cycles"])
    per_block = slowest["cycles_per_block"]
    geometry = BlockGeometry(
        num_queries=args.seq_len, num_keys=args.seq_len, block_size=bench.BLOCK
    )
    records = []
    for density in args.densities:
        layout, _ = bench.make_layout(geometry, density)
        blocks = launch_order(np.asarray(layout.kv_block_count)[0])
        for fixed in [slowest["fixed_cycles"], *args.fixed_cycles]:
            records.append(
                {"seq_len": args.seq_len, "density": density, "fixed_cycles": fixed}
                | efficiencies(blocks, fixed, per_block, args.num_sms)
            )
    meta = {
        "timeline": str(args.timeline),
        "timeline_commit": timeline["environment"]["commit"],
        "cycles_per_block": per_block,
        "num_sms": args.num_sms,
    }
    timing.write_records(args.out, records, meta)
    timing.print_table(records, ["seq_len", "density", "fixed_cycles", *SCHEDULES])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
