"""The mosaic_gpu backend on a Hopper GPU: checks at the Llama shape, then timing against Triton
and cuDNN.

One call gives as much as it can: every check and every timing runs in its own try block, and a
failure (a Mosaic GPU compile error, a mismatch) prints its traceback and the run goes on.
Records are written to --out after every section, so a run cut short keeps what it measured.
The kernel battery against the float64 oracle is a test: `SHAREDSPARSE_TEST_PLATFORM=gpu pytest
-m gpu tests/kernels` on the same machine.

1. Checks: the Llama shape at S = 4096 + 77 against the f32 reference and full causal against
   cuDNN (benchmarks/attention.py's check_correctness); then which kernel `implementation=None`
   runs (default_checks).
2. mosaic_gpu vs triton vs cuDNN dense causal at the Llama-3.1-8B attention shape (N=32, K=8,
   H=128, bf16, B=1) at --seq-lens (32K, 128K) and --densities (~100 %, 10 %, 5 %) with
   benchmarks/attention.py's structured layouts.
3. A few mosaic_gpu launch configurations (stages, one or two compute warpgroups, schedule
   barrier, Q tiles of the persistent launch or one item per CTA; --sweep-configs picks some)
   at --sweep-seq-lens, printed separately.

Every timing (2 and 3) runs --rounds rounds per cell, each timing cuDNN and every kernel back
to back, and reports the median and spread over the rounds of the ratio to cuDNN within a round
(paired_rows).

    python -m benchmarks.mosaic_gpu_check --out benchmarks/results/mosaic_gpu_check_h200.json
"""

from __future__ import annotations

import argparse
import functools
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import attention as bench
from benchmarks import timing
from pallas_kernels.block_sparse_attention import BlockGeometry, block_sparse_attention
from pallas_kernels.block_sparse_attention import mosaic_gpu as mosaic_backend

ON_GPU = jax.default_backend() == "gpu"
SWEEP_CONFIGS = (
    ("default", None),
    ("s1_wg2", mosaic_backend.MosaicGpuConfig(num_stages=1)),
    ("s2_wg1", mosaic_backend.MosaicGpuConfig(num_stages=2, num_compute_wgs=1)),
    ("s1_wg1", mosaic_backend.MosaicGpuConfig(num_stages=1, num_compute_wgs=1)),
    ("s2_wg2_nosched", mosaic_backend.MosaicGpuConfig(use_schedule_barrier=False)),
    ("one_item", mosaic_backend.MosaicGpuConfig()),
    ("q3", mosaic_backend.MosaicGpuConfig(q_tiles=3)),
    ("s3_one_item", mosaic_backend.MosaicGpuConfig(num_stages=3)),
)


def _guarded(label: str, records: list[dict], fn, *args, **kwargs):
    """Runs fn; on an exception prints the traceback, records the failure, returns None."""
    start = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # one failure must not end the run
        print(f"FAILED {label}: {type(e).__name__}: {str(e)[:2000]}", flush=True)
        traceback.print_exc()
        records.append(
            {
                "kind": "failure",
                "label": label,
                "error": f"{type(e).__name__}: {str(e)[:4000]}",
                "seconds": time.perf_counter() - start,
            }
        )
        return None


def llama_checks(seq_len: int) -> list[dict]:
    """Llama shape vs the f32 reference (10 % layout, maps for 3 heads) and full causal vs cuDNN."""
    checks = bench.check_correctness(seq_len, "mosaic_gpu", bench.sparse_mosaic)
    return [{"kind": "check"} | check for check in checks]


def default_checks() -> list[dict]:
    """`implementation=None` against each explicit one (same kernel: bit-equal, error 0).

    On a Hopper GPU the default is mosaic_gpu for bf16 (its distance to triton, also shown, is
    nonzero) and triton for f32 (mosaic_gpu's fall-through). On a CPU it is xla.
    """
    records = []
    seq_len = 300
    geometry = BlockGeometry(num_queries=seq_len, num_keys=seq_len, block_size=bench.BLOCK)
    layout, _ = bench.make_layout(geometry, 0.5)
    for dtype in (jnp.bfloat16, jnp.float32):
        q, k, v = (x.astype(dtype) for x in bench.make_inputs(seq_len))
        got = block_sparse_attention(q, k, v, layout).astype(jnp.float32)
        if not ON_GPU:
            names = ("xla",)
        else:
            names = ("mosaic_gpu", "triton") if dtype == jnp.bfloat16 else ("triton",)
        for name in names:
            want = block_sparse_attention(q, k, v, layout, implementation=name)
            records.append(
                {
                    "kind": "check",
                    "check": f"default vs {name} ({jnp.dtype(dtype).name})",
                    "max_abs_err": float(jnp.abs(got - want.astype(jnp.float32)).max()),
                    "rel_err": float("nan"),
                }
            )
    return records


def _max_diff(q, k, v, layout) -> float:
    a = bench.sparse_mosaic(q, k, v, layout).astype(jnp.float32)
    return float(jnp.abs(a - bench.sparse_triton(q, k, v, layout).astype(jnp.float32)).max())


def _cells(seq_lens, densities):
    """((q, k, v), geometry, layout, density) at the benchmark shape, every length and density."""
    for seq_len in seq_lens:
        inputs = bench.make_inputs(seq_len)
        geometry = BlockGeometry(num_queries=seq_len, num_keys=seq_len, block_size=bench.BLOCK)
        for density in densities:
            layout, _ = bench.make_layout(geometry, density)
            yield inputs, geometry, layout, density


def _first_call(fn):
    """Compiles and runs fn once (a failure surfaces here, not inside the timed rounds)."""
    return jax.block_until_ready(fn())


def paired_rows(kind, kernels, inputs, geometry, layout, density, rounds, records) -> list[dict]:
    """Times (implementation, config, fn) kernels against cuDNN in interleaved rounds.

    Each round runs cuDNN and every kernel back to back (timing.time_rounds); a kernel's ratio
    to cuDNN is taken within each round, so the SM clock's drift under the power cap (1.5-2 GHz
    on the H200) falls on numerator and denominator alike. A kernel that fails its first call
    is recorded as a failure and left out. The rows are appended to `records` and returned.
    """
    cell = f"S={geometry.num_queries} density={density}"
    kernels = [
        (implementation, config, fn)
        for implementation, config, fn in kernels
        if _guarded(f"{kind} {implementation} {config} {cell}", records, _first_call, fn)
        is not None
    ]
    dense = functools.partial(bench.dense_cudnn, *inputs)
    fns = [dense] + [fn for *_, fn in kernels]
    samples = _guarded(f"{kind} {cell}", records, timing.time_rounds, fns, rounds)
    if samples is None:
        return []
    dense_times = [r[0] for r in samples]
    rows = []
    for i, (implementation, config, _) in enumerate(kernels, start=1):
        times = [r[i] for r in samples]
        row = {"kind": kind, "implementation": implementation, "config": config}
        row |= paired_record(layout, geometry, density, times, dense_times)
        rows.append(row)
        records.append(row)
        print(
            f"{kind} {implementation} {config} {cell}: {row['time_ms']:.3f} ms,"
            f" {row['tflops_active']:.0f} TFLOP/s active, {row['vs_cudnn_median']:.1%} of"
            f" cuDNN's rate (rounds p25-p75 {row['vs_cudnn_p25']:.1%}-"
            f"{row['vs_cudnn_p75']:.1%}), {row['speedup']:.2f}x cuDNN",
            flush=True,
        )
    return rows


def paired_record(layout, geometry, density, times, dense_times) -> dict:
    """A kernel's record from paired per-round times (seconds) of it and of cuDNN.

    Times are medians over the rounds; vs_cudnn_* are percentiles over the rounds of the ratio
    of its TFLOP/s on active blocks to cuDNN's in the same round.
    """
    active = bench.active_flops(layout, geometry)
    dense = bench.causal_flops(geometry.num_queries)
    ratios = [active / t / (dense / d) for t, d in zip(times, dense_times, strict=True)]
    record = bench.kernel_record(
        layout, geometry, density, float(np.median(times)), float(np.median(dense_times))
    )
    return record | {
        "rounds": len(ratios),
        "vs_cudnn_median": float(np.median(ratios)),
        "vs_cudnn_p25": float(np.percentile(ratios, 25)),
        "vs_cudnn_p75": float(np.percentile(ratios, 75)),
        "vs_cudnn_min": min(ratios),
        "vs_cudnn_rounds": ratios,
    }


def compare(seq_lens, densities, rounds, records: list[dict]) -> list[dict]:
    """mosaic_gpu and triton (default launches) against cuDNN, in rounds (paired_rows)."""
    rows = []
    implementations = (("mosaic_gpu", bench.sparse_mosaic), ("triton", bench.sparse_triton))
    for inputs, geometry, layout, density in _cells(seq_lens, densities):
        kernels = [
            (name, "default", functools.partial(fn, *inputs, layout))
            for name, fn in implementations
        ]
        rows += paired_rows("compare", kernels, inputs, geometry, layout, density, rounds, records)
        if density == 1.0:
            label = f"mosaic_gpu vs triton full causal, S={geometry.num_queries}"
            agree = _guarded(label, records, _max_diff, *inputs, layout)
            if agree is not None:
                records.append({"kind": "check", "check": label, "max_abs_err": agree})
                print(f"{label}: {agree:.3g}", flush=True)
    return rows


def sweep(seq_lens, densities, configs, rounds, records: list[dict]) -> list[dict]:
    """The named SWEEP_CONFIGS against cuDNN at every length and density (paired_rows)."""
    rows = []
    for inputs, geometry, layout, density in _cells(seq_lens, densities):
        run = functools.partial(bench.sparse_mosaic, *inputs, layout)
        kernels = [
            ("mosaic_gpu", name, functools.partial(run, config=config))
            for name, config in SWEEP_CONFIGS
            if name in configs
        ]
        rows += paired_rows("sweep", kernels, inputs, geometry, layout, density, rounds, records)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.1, 0.05])
    parser.add_argument("--check-seq-len", type=int, default=4096 + 77)
    parser.add_argument("--sweep-seq-lens", type=int, nargs="+", default=[32768])
    config_names = [name for name, _ in SWEEP_CONFIGS]
    parser.add_argument("--sweep-configs", nargs="+", default=config_names, choices=config_names)
    parser.add_argument("--sweep-densities", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument(
        "--rounds", type=int, default=15, help="interleaved timing rounds per cell (paired_rows)"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["checks", "compare", "sweep"])
    args = parser.parse_args()
    meta = timing.environment()
    print(meta, flush=True)
    out = args.out or Path(f"benchmarks/results/mosaic_gpu_check_{timing.gpu_tag()}.json")
    records: list[dict] = []

    def save():
        timing.write_records(out, records, meta)

    checks = []
    if "checks" not in args.skip:
        checks = _guarded("llama checks", records, llama_checks, args.check_seq_len) or []
        checks += _guarded("default checks", records, default_checks) or []
        records.extend(checks)
        for c in checks:
            print(f"{c['check']}: max {c['max_abs_err']:.3g}, rel {c['rel_err']:.3g}", flush=True)
        save()
    compare_rows = []
    if "compare" not in args.skip:
        compare_rows = compare(args.seq_lens, args.densities, args.rounds, records)
        save()
    sweep_rows = []
    if "sweep" not in args.skip:
        sweep_rows = sweep(
            args.sweep_seq_lens,
            args.sweep_densities,
            args.sweep_configs,
            args.rounds,
            records,
        )
        save()

    failures = [r for r in records if r.get("kind") == "failure"]
    print(f"\nwrote {len(records)} records to {out}; {len(failures)} failures")
    for f in failures:
        print(f"  failure: {f['label']}: {f['error'][:300]}")
    if checks:
        timing.print_table(checks, ["check", "max_abs_err", "rel_err"])
    if sweep_rows:
        print("\nlaunch sweep (mosaic_gpu)")
        timing.print_table(
            sweep_rows,
            [
                "config",
                "seq_len",
                "target_density",
                "rounds",
                "time_ms",
                "tflops_active",
                "vs_cudnn_median",
                "vs_cudnn_p25",
                "vs_cudnn_p75",
                "vs_cudnn_min",
            ],
        )
    if compare_rows:
        print("\nmosaic_gpu vs triton vs cuDNN (bf16, N=32, K=8, H=128, B=1)")
        timing.print_table(
            compare_rows,
            [
                "implementation",
                "seq_len",
                "target_density",
                "density",
                "time_ms",
                "tflops_active",
                "dense_tflops",
                "vs_cudnn_median",
                "speedup",
            ],
        )


if __name__ == "__main__":
    main()
