"""The mosaic_gpu backend on a Hopper GPU: checks, then timing against Triton and cuDNN, at the
Llama shape or any --shapes.

One call gives as much as it can: every check and every timing runs in its own try block, and a
failure (a Mosaic GPU compile error, a mismatch) prints its traceback and the run goes on.
Records are written to --out after every cell, so a run cut short keeps what it measured; with
--budget-s no new cell starts once that many seconds have passed, and the tables still print.
The kernel battery against the float64 oracle is a test: `SHAREDSPARSE_TEST_PLATFORM=gpu pytest
-m gpu tests/kernels` on the same machine.

1. Checks: the Llama shape at S = 4096 + 77 against the f32 reference and full causal against
   cuDNN (benchmarks/attention.py's check_correctness); then which kernel `implementation=None`
   runs (default_checks); then the block-map launch, whose main launch gets rows without
   blocks, at 14/2/64 and the Llama shape (empty_rows_checks).
2. Config checks (with --check-shapes): every --sweep-configs launch at each of those shapes,
   S = --config-check-seq-len, against the f32 reference on the --layout layouts at 10 % and
   full causal (config_checks).
3. mosaic_gpu vs triton vs cuDNN dense causal at each of --shapes (default the Llama-3.1-8B
   attention shape, N=32, K=8, H=128; always bf16, B=1, blocks of 128) at --seq-lens (32K,
   128K) and --densities (~100 %, 10 %, 5 %); with --recording also both backends' launches
   that record block LSEs (the block maps of SharePrefill's pivots and of calibration).
4. mosaic_gpu launch configurations (stages, one or two compute warpgroups, schedule barrier,
   Q tiles of the persistent launch or one item per CTA; --sweep-configs picks some) at each of
   --shapes, at --sweep-seq-lens, printed separately with the best launch of each cell. A
   launch that a shape's shared memory cannot hold is skipped there.

A shape is N/K/H, optionally with its own lengths: `14/2/64:8192,32768` runs that shape at 8K
and 32K whatever --seq-lens and --sweep-seq-lens say. Layouts are --layout: "structured"
(benchmarks/attention.py's sink, band, verticals and slashes) or "random" (sink, diagonal and
uniformly random causal blocks); all layouts of one length list up to Sb blocks per row, so
that every density of a length runs the same compiled kernel.

Every timing (3 and 4) runs --rounds rounds per cell, each timing cuDNN and every kernel back
to back, and reports the median and spread over the rounds of the ratio to cuDNN within a round
(paired_rows). Each function is timed as one program that calls it back to back, up to 64 times
(`calls_per_program`), so that no host dispatch sits between two calls of a short kernel
(`--single-calls`: one host dispatch per call instead, to compare the two). Each
kernel's first output is also compared with cuDNN's (full causal) or with the cell's first
kernel's (sparse layouts): `max_abs_diff` against `diff_against`.

    python -m benchmarks.mosaic_gpu_check --out benchmarks/results/mosaic_gpu_check_h200.json
    python -m benchmarks.mosaic_gpu_check --skip checks compare \\
        --shapes 14/2/64:8192,32768 9/3/64:8192,32768 14/2/64:131072 32/8/128:32768 \\
        --check-shapes 14/2/64 9/3/64 --layout random --sweep-densities 1.0 0.4 0.3 0.1 \\
        --sweep-configs default q2_s2 q2_s3 q2_s4 q2_s6 q3_s3 q3_s5 q2_s3_nosched q2_s3_wg1 \\
        one_item --rounds 7 --budget-s 190                   # head dim 64 launches (issue 26)
    python -m benchmarks.mosaic_gpu_check ... --dry-run     # the same sections, tiny, on a CPU

--dry-run keeps the sections, shapes' head dims and GQA groups (one kv head each), configs and
densities, at S = 300 and one round: interpret mode on a CPU, a check that the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks import attention as bench
from benchmarks import cudnn_rounds, timing
from pallas_kernels.block_sparse_attention import (
    BlockGeometry,
    block_sparse_attention,
    block_sparse_attention_with_block_map,
    causal_layout,
    mosaic_gpu_config,
)
from pallas_kernels.block_sparse_attention import mosaic_gpu as mosaic_backend

ON_GPU = jax.default_backend() == "gpu"
Launch = mosaic_backend.MosaicGpuConfig
SWEEP_CONFIGS = (
    ("default", None),
    ("s1_wg2", Launch(num_stages=1)),
    ("s2_wg1", Launch(num_stages=2, num_compute_wgs=1)),
    ("s1_wg1", Launch(num_stages=1, num_compute_wgs=1)),
    ("s2_wg2_nosched", Launch(use_schedule_barrier=False)),
    ("one_item", Launch()),
    ("q3", Launch(q_tiles=3)),
    ("s3_one_item", Launch(num_stages=3)),
    # Head dim 64 (issue 26): a K/V block is half the matmul work of H=128 for the same
    # per-block and per-item costs, and a 16 KB tile, so deeper rings and a third Q tile fit
    # (q2_s6 and q3_s5 are the deepest that fit). q2_s3 is what the general rule would give at
    # head dim 64, the baseline of its own rule (one_item up to 8K, q2_s4 beyond).
    ("q2_s2", Launch(num_stages=2, q_tiles=2)),
    ("q2_s3", Launch(num_stages=3, q_tiles=2)),
    ("q2_s4", Launch(num_stages=4, q_tiles=2)),
    ("q2_s6", Launch(num_stages=6, q_tiles=2)),
    ("q3_s3", Launch(num_stages=3, q_tiles=3)),
    ("q3_s5", Launch(num_stages=5, q_tiles=3)),
    ("q2_s3_nosched", Launch(num_stages=3, q_tiles=2, use_schedule_barrier=False)),
    ("q2_s3_wg1", Launch(num_stages=3, q_tiles=2, num_compute_wgs=1)),
)
# The launches tried at head dim 64 (the default included); tests/kernels checks each of them.
HEAD_DIM_64_CONFIGS = (
    "default",
    "q2_s2",
    "q2_s3",
    "q2_s4",
    "q2_s6",
    "q3_s3",
    "q3_s5",
    "q2_s3_nosched",
    "q2_s3_wg1",
    "one_item",
)
# The dry run: every length and check length becomes DRY_SEQ_LEN (three blocks, the last
# ragged), each shape keeps its head dim and GQA group over one kv head, one round.
DRY_SEQ_LEN = 300


@dataclasses.dataclass(frozen=True)
class ShapeRun:
    """A shape and the lengths it runs at (None: the section's own --seq-lens)."""

    shape: bench.Shape
    seq_lens: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> ShapeRun:
        """'N/K/H' or 'N/K/H:S1,S2,...'."""
        shape, _, lengths = text.partition(":")
        seq_lens = tuple(int(s) for s in lengths.split(",")) if lengths else None
        return cls(bench.Shape.parse(shape), seq_lens)

    def lengths(self, default) -> tuple[int, ...]:
        return self.seq_lens or tuple(default)

    def dry(self) -> ShapeRun:
        """The dry run's: dry_shape at DRY_SEQ_LEN."""
        return ShapeRun(dry_shape(self.shape), (DRY_SEQ_LEN,))


def dry_shape(shape: bench.Shape) -> bench.Shape:
    """The dry run's shape: the same head dim and GQA group over one kv head."""
    return bench.Shape(shape.num_heads // shape.num_kv_heads, 1, shape.head_dim)


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
                bench.LLAMA_8B.record()
                | {
                    "kind": "check",
                    "check": f"default vs {name} ({jnp.dtype(dtype).name})",
                    "max_abs_err": float(jnp.abs(got - want.astype(jnp.float32)).max()),
                    "rel_err": float("nan"),
                }
            )
    return records


# The block-map launch at the real models' head dim beyond 8K and at the Llama shape: both run
# the persistent launch, with two compute warpgroups, under the default implementation.
EMPTY_ROWS_CELLS = ((bench.Shape(14, 2, 64), 16384), (bench.LLAMA_8B, 8192))


def empty_rows_checks(dry_run: bool) -> list[dict]:
    """The block-map launch on full causal layouts, every head selected (calibration) and one
    middle head (a pivot): the default implementation, whose main launch gets the selected
    heads' rows without blocks, against Triton for both launches (on a CPU, xla against xla).
    A launch that keeps its warpgroups' schedule phase through such rows deadlocks here: a run
    that never ends is the failure, and each cell is printed before it starts."""
    records = []
    for shape, seq_len in EMPTY_ROWS_CELLS:
        if dry_run:
            shape, seq_len = dry_shape(shape), DRY_SEQ_LEN
        q, k, v = bench.make_inputs(seq_len, shape=shape)
        geometry = BlockGeometry(num_queries=seq_len, num_keys=seq_len, block_size=bench.BLOCK)
        layout = causal_layout(1, shape.num_heads, geometry)
        every = jnp.ones((1, shape.num_heads), bool)
        middle = jnp.zeros_like(every).at[:, shape.num_heads // 2].set(True)
        for name, selected in (("every head", every), ("a middle head", middle)):
            check = f"block-map launch, {name} selected, {shape}, S={seq_len}"
            print(f"{check}: starting", flush=True)
            got = block_sparse_attention_with_block_map(q, k, v, layout, selected)
            want = block_sparse_attention_with_block_map(
                q, k, v, layout, selected, implementation="triton" if ON_GPU else "xla"
            )
            error = max(
                float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max())
                for a, b in zip(got, want, strict=True)
            )
            records.append(
                shape.record()
                | {"kind": "check", "check": check, "max_abs_err": error, "rel_err": float("nan")}
            )
    return records


def unsupported(shape: bench.Shape, config) -> str | None:
    """Why mosaic_gpu cannot launch `config` (None: the default) at a shape, or None."""
    q = jax.ShapeDtypeStruct((1, 1, shape.num_heads, shape.head_dim), jnp.bfloat16)
    config = config or mosaic_gpu_config.default_config(shape.head_dim, bench.BLOCK)
    try:
        mosaic_gpu_config.check_supported(q, bench.BLOCK, config, interpret=True)
    except NotImplementedError as e:
        return str(e)
    return None


def launch_keys(shape: bench.Shape, config, seq_len: int) -> dict:
    """The launch a config (None: the default) resolves to at a shape and length: its record
    keys."""
    num_q_blocks = -(-seq_len // bench.BLOCK)
    config = config or mosaic_gpu_config.default_config(shape.head_dim, bench.BLOCK, num_q_blocks)
    return {
        "num_stages": config.num_stages,
        "q_tiles": config.q_tiles,
        "num_compute_wgs": config.compute_wgs(bench.BLOCK),
        "use_schedule_barrier": config.ping_pongs(bench.BLOCK),
    }


def launches(shape: bench.Shape, names, records: list[dict]) -> list[tuple[str, object]]:
    """The named SWEEP_CONFIGS that fit at a shape; each one that does not is recorded."""
    kept = []
    for name, config in SWEEP_CONFIGS:
        if name not in names:
            continue
        reason = unsupported(shape, config)
        if reason is None:
            kept.append((name, config))
            continue
        skip = shape.record() | {"kind": "skipped", "config": name, "reason": reason}
        if skip not in records:  # config checks and sweep both ask
            print(f"skipped {name} at {shape}: {reason}", flush=True)
            records.append(skip)
    return kept


def config_checks(
    shapes,
    names,
    seq_len: int,
    pattern: str,
    deadline: cudnn_rounds.Deadline,
    records: list[dict],
) -> list[dict]:
    """Every named launch at each shape against the f32 reference, at 10 % and full causal.

    The layouts list Sb blocks per row, like the timed cells': at a timed length the checks
    compile the kernels the timing runs.
    """
    rows = []
    for shape in shapes:
        q, k, v = bench.make_inputs(seq_len, seed=1, shape=shape)
        geometry = BlockGeometry(num_queries=seq_len, num_keys=seq_len, block_size=bench.BLOCK)
        for density in (0.1, 1.0):
            if deadline.passed():
                print(f"budget spent: config_checks {shape} S={seq_len} {density} not run")
                cell = {"seq_len": seq_len, "target_density": density, "section": "config_checks"}
                records.append(shape.record() | cell | {"kind": "skipped", "reason": "budget"})
                continue
            layout, _ = bench.make_layout(
                geometry,
                density,
                num_heads=shape.num_heads,
                pattern=pattern,
                max_blocks=geometry.num_k_blocks,
            )
            want = block_sparse_attention(q, k, v, layout, implementation="reference")
            want = want.astype(jnp.float32)
            for name, config in launches(shape, names, records):
                context = shape.record() | {"config": name, "seq_len": seq_len}
                label = f"config check {name} {shape} S={seq_len} density={density}"
                run = functools.partial(bench.sparse_mosaic, q, k, v, layout, config=config)
                got = cudnn_rounds.guarded(
                    label, records, cudnn_rounds.first_call, run, context=context
                )
                if got is None:
                    continue
                got = got.astype(jnp.float32)
                row = context | {
                    "kind": "check",
                    "check": f"{name} vs reference, {shape}, S={seq_len}, {density:.0%}",
                    "target_density": density,
                    "max_abs_err": float(jnp.abs(got - want).max()),
                    "rel_err": float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)),
                }
                # bf16 outputs of O(1) values: the Llama check's error is 2.3e-3 relative.
                row["passed"] = bool(row["rel_err"] < 1e-2)
                rows.append(row)
                records.append(row)
                print(
                    f"{row['check']}: max {row['max_abs_err']:.3g}, rel {row['rel_err']:.3g}"
                    f"{'' if row['passed'] else '  MISMATCH'} [{deadline.elapsed():.0f} s]",
                    flush=True,
                )
    return rows


def _cells(section, shape_runs, default_lens, densities, pattern, how, records):
    """(shape, (q, k, v), geometry, layout, density) at every shape, length and density, in
    that order; once the budget is spent, each cell left is recorded as skipped instead.

    Every layout of a length lists up to Sb blocks per row: one compile per kernel and length.
    """
    for shape_run in shape_runs:
        shape = shape_run.shape
        for seq_len in shape_run.lengths(default_lens):
            inputs = None
            geometry = BlockGeometry(num_queries=seq_len, num_keys=seq_len, block_size=bench.BLOCK)
            for density in densities:
                if how.deadline.passed():
                    print(f"budget spent: {section} {shape} S={seq_len} {density} not run")
                    cell = {"seq_len": seq_len, "target_density": density, "section": section}
                    records.append(shape.record() | cell | {"kind": "skipped", "reason": "budget"})
                    continue
                inputs = inputs or bench.make_inputs(seq_len, shape=shape)
                layout, _ = bench.make_layout(
                    geometry,
                    density,
                    num_heads=shape.num_heads,
                    pattern=pattern,
                    max_blocks=geometry.num_k_blocks,
                )
                yield shape, inputs, geometry, layout, density


def compare(
    shape_runs, seq_lens, densities, pattern, how: cudnn_rounds.Timing, records, save, recording
) -> list[dict]:
    """mosaic_gpu and triton (default launches) against cuDNN, in rounds (paired_rows); with
    `recording`, also each one's launch that records block LSEs (config "block_lse")."""
    rows = []
    kernels_by_config = [
        ("mosaic_gpu", "default", bench.sparse_mosaic),
        ("triton", "default", bench.sparse_triton),
    ]
    if recording:
        kernels_by_config += [
            ("mosaic_gpu", "block_lse", bench.recording_mosaic),
            ("triton", "block_lse", bench.recording_triton),
        ]
    cells = _cells("compare", shape_runs, seq_lens, densities, pattern, how, records)
    for shape, inputs, geometry, layout, density in cells:
        kernels = [
            (name, config, _step(fn, inputs, layout)) for name, config, fn in kernels_by_config
        ]
        cell = (shape, inputs, geometry, layout, density)
        rows += cudnn_rounds.paired_rows("compare", kernels, *cell, how, records)
        if density == 1.0 and not how.deadline.passed():
            label = f"mosaic_gpu vs triton full causal, {shape}, S={geometry.num_queries}"
            agree = cudnn_rounds.guarded(label, records, _max_diff, *inputs, layout)
            if agree is not None:
                check = {"kind": "check", "check": label, "max_abs_err": agree}
                records.append(shape.record() | check)
                print(f"{label}: {agree:.3g}", flush=True)
        save()
    return rows


def _step(kernel, inputs, layout, **options):
    """q -> kernel(q, k, v, layout, **options): what paired_rows times."""
    _, k, v = inputs

    def step(q):
        return kernel(q, k, v, layout, **options)

    return step


def _max_diff(q, k, v, layout) -> float:
    return cudnn_rounds.max_abs(
        bench.sparse_mosaic(q, k, v, layout), bench.sparse_triton(q, k, v, layout)
    )


def sweep(shape_runs, seq_lens, densities, names, pattern, how: cudnn_rounds.Timing, records, save):
    """The named SWEEP_CONFIGS that fit each shape against cuDNN at every length and density
    (paired_rows)."""
    rows = []
    fitting = {run.shape: launches(run.shape, names, records) for run in shape_runs}
    cells = _cells("sweep", shape_runs, seq_lens, densities, pattern, how, records)
    for shape, inputs, geometry, layout, density in cells:
        kernels = [
            ("mosaic_gpu", name, _step(bench.sparse_mosaic, inputs, layout, config=config))
            for name, config in fitting[shape]
        ]
        cell = (shape, inputs, geometry, layout, density)
        for row in cudnn_rounds.paired_rows("sweep", kernels, *cell, how, records):
            # The row is also in records: the keys reach both.
            row |= launch_keys(shape, dict(SWEEP_CONFIGS)[row["config"]], row["seq_len"])
            rows.append(row)
        save()
    return rows


def best_launches(rows: list[dict]) -> list[dict]:
    """Per (shape, length, density) of the sweep: the launch with the highest median rate,
    beside the default's."""
    cells = {}
    for row in rows:
        cells.setdefault((row["shape"], row["seq_len"], row["target_density"]), []).append(row)
    table = []
    for (shape, seq_len, density), cell in cells.items():
        best = max(cell, key=lambda r: r["vs_cudnn_median"])
        default = next((r for r in cell if r["config"] == "default"), {})
        table.append(
            {
                "shape": shape,
                "seq_len": seq_len,
                "target_density": density,
                "best": best["config"],
                "best_vs_cudnn": best["vs_cudnn_median"],
                "best_p25": best["vs_cudnn_p25"],
                "best_speedup": best["speedup"],
                "default_vs_cudnn": default.get("vs_cudnn_median"),
                "default_speedup": default.get("speedup"),
            }
        )
    return table


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--shapes",
        type=ShapeRun.parse,
        nargs="+",
        default=[ShapeRun(bench.LLAMA_8B)],
        help="N/K/H[:S1,S2,...] for compare and sweep (default 32/8/128)",
    )
    parser.add_argument("--layout", choices=bench.LAYOUT_PATTERNS, default="structured")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.1, 0.05])
    parser.add_argument("--check-seq-len", type=int, default=4096 + 77)
    parser.add_argument(
        "--check-shapes",
        type=bench.Shape.parse,
        nargs="*",
        default=[],
        help="N/K/H shapes whose --sweep-configs launches config_checks checks (default none)",
    )
    parser.add_argument("--config-check-seq-len", type=int, default=8192)
    parser.add_argument("--sweep-seq-lens", type=int, nargs="+", default=[32768])
    config_names = [name for name, _ in SWEEP_CONFIGS]
    parser.add_argument("--sweep-configs", nargs="+", default=config_names, choices=config_names)
    parser.add_argument("--sweep-densities", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument(
        "--rounds", type=int, default=15, help="interleaved timing rounds per cell (paired_rows)"
    )
    parser.add_argument(
        "--single-calls",
        action="store_true",
        help="time each call as its own host dispatch, not in programs of back-to-back calls"
        " (to compare the two)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no cell after this many seconds (the run then writes and prints its tables)",
    )
    parser.add_argument(
        "--recording",
        action="store_true",
        help="compare also times each backend's launch that records block LSEs (block maps)",
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["checks", "config_checks", "compare", "sweep"]
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help=f"every length S={DRY_SEQ_LEN}, one kv head per shape, one round (CPU check)",
    )
    args = parser.parse_args(argv)
    if args.dry_run:
        args.shapes = [run.dry() for run in args.shapes]
        args.check_shapes = [dry_shape(shape) for shape in args.check_shapes]
        args.seq_lens = args.sweep_seq_lens = [DRY_SEQ_LEN]
        args.check_seq_len = args.config_check_seq_len = DRY_SEQ_LEN
        args.rounds = 1
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    deadline = cudnn_rounds.Deadline(args.budget_s)
    # A dry run on a CPU has no dispatch gap to hide: single calls.
    how = cudnn_rounds.Timing(
        rounds=args.rounds,
        warmup=0 if args.dry_run else 2,
        deadline=deadline,
        program_seconds=0.0 if args.dry_run or args.single_calls else 2e-3,
    )
    meta = timing.environment() | {
        "dry_run": args.dry_run,
        "layout": args.layout,
        "single_calls": args.single_calls,
    }
    print(meta, flush=True)
    suffix = "_dryrun" if args.dry_run else ""
    out = args.out or Path(f"benchmarks/results/mosaic_gpu_check_{timing.gpu_tag()}{suffix}.json")
    records: list[dict] = []

    def save():
        timing.write_records(out, records, meta)

    checks = []
    if "checks" not in args.skip:
        checks = (
            cudnn_rounds.guarded("llama checks", records, llama_checks, args.check_seq_len) or []
        )
        checks += cudnn_rounds.guarded("default checks", records, default_checks) or []
        checks += (
            cudnn_rounds.guarded("empty rows checks", records, empty_rows_checks, args.dry_run)
            or []
        )
        records.extend(checks)
        for c in checks:
            print(f"{c['check']}: max {c['max_abs_err']:.3g}, rel {c['rel_err']:.3g}", flush=True)
        save()
    if "config_checks" not in args.skip and args.check_shapes:
        checks += config_checks(
            args.check_shapes,
            args.sweep_configs,
            args.config_check_seq_len,
            args.layout,
            deadline,
            records,
        )
        save()
    compare_rows = []
    if "compare" not in args.skip:
        compare_rows = compare(
            args.shapes,
            args.seq_lens,
            args.densities,
            args.layout,
            how,
            records,
            save,
            args.recording,
        )
    sweep_rows = []
    if "sweep" not in args.skip:
        sweep_rows = sweep(
            args.shapes,
            args.sweep_seq_lens,
            args.sweep_densities,
            args.sweep_configs,
            args.layout,
            how,
            records,
            save,
        )
    save()

    failures = [r for r in records if r.get("kind") == "failure"]
    skipped = [r for r in records if r.get("kind") == "skipped"]
    print(
        f"\nwrote {len(records)} records to {out} in {deadline.elapsed():.0f} s;"
        f" {len(failures)} failures, {len(skipped)} skipped"
    )
    for f in failures:
        print(f"  failure: {f['label']}: {f['error'][:300]}")
    for s in skipped:
        if "config" in s:
            print(f"  skipped: {s['config']} at {s['shape']}: {s['reason'][:200]}")
        else:
            where = f"{s['shape']} S={s['seq_len']} density={s['target_density']}"
            print(f"  skipped: {s['section']} {where}: {s['reason']}")
    if checks:
        timing.print_table(checks, ["check", "max_abs_err", "rel_err", "passed"])
    if compare_rows:
        print("\nmosaic_gpu vs triton vs cuDNN (bf16, B=1)")
        timing.print_table(
            compare_rows,
            [
                "implementation",
                "config",
                "shape",
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
    if sweep_rows:
        print("\nlaunch sweep (mosaic_gpu)")
        timing.print_table(
            sweep_rows,
            [
                "config",
                "shape",
                "seq_len",
                "target_density",
                "density",
                "rounds",
                "time_ms",
                "tflops_active",
                "vs_cudnn_median",
                "vs_cudnn_p25",
                "vs_cudnn_p75",
                "speedup",
                "max_abs_diff",
                "first_call_s",
            ],
        )
        print("\nbest launch per cell (median of the rounds' rate over cuDNN's)")
        timing.print_table(
            best_launches(sweep_rows),
            [
                "shape",
                "seq_len",
                "target_density",
                "best",
                "best_vs_cudnn",
                "best_p25",
                "best_speedup",
                "default_vs_cudnn",
                "default_speedup",
            ],
        )
    return records


if __name__ == "__main__":
    main()
