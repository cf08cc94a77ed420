"""Attention-level time of each sparse method against cuDNN dense, on profile-driven heads.

One Llama-3.1-8B-shaped layer (N=32 query heads, K=8 kv heads, H=128, bf16, B=1) at S = 8K to
128K. Uniform random q/k would make every method dense, so the inputs are synthetic heads whose
sink / local band / vertical / slash / diffuse shares reproduce heads profiled on a real model
(benchmarks/attention_profiles.py, benchmarks/diagnostics/synthetic_heads.py), checked in the
run: the shares each head reaches are printed beside its targets.

Timed per method: everything SharePrefillAttention does per layer (plan_layer, block lists,
the block-sparse kernels, the block-map pass for pivots and the sharing-state update), over a
stack of `--layers` layers run in a scan as the models run it (the sharing table clusters each
head across the layers, so later layers share the first layer's pivots), divided by the number
of layers. The baseline is `jax.nn.dot_product_attention(..., is_causal=True,
implementation="cudnn")` over the same layers, measured in the same run.

    python -m benchmarks.method_attention                       # GPU: 8K..128K, every method
    python -m benchmarks.method_attention --dry-run             # CPU smoke run, tiny sizes
    python -m benchmarks.method_attention --plot benchmarks/results/method_attention_h200.json \\
        docs/figures/method_attention_h200.png
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from benchmarks.attention_profiles import SHARES, load_profile
from benchmarks.diagnostics import synthetic_heads
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import METHODS, SharePrefillConfig
from sharedsparse_jax.dense import dense_causal_attention
from sharedsparse_jax.stats import stats_by_layer

DEFAULT_PROFILE = Path(__file__).parent / "profiles" / "smollm2-135m-instruct.json"
SEQ_LENS = (8192, 16384, 32768, 65536, 131072)
SHAPE = {"num_heads": 32, "num_kv_heads": 8, "head_dim": 128}
# The dry run: tiny shapes, float32, the XLA kernels, planner knobs that keep it sparse.
DRY_SHAPE = {"num_heads": 8, "num_kv_heads": 2, "head_dim": 64}
DRY_SEQ_LENS = (512, 768)
DRY_PLANNER = {
    "block_size": 64,
    "dense_below": 128,
    "min_budget": 64,
    "streaming_sink": 64,
    "streaming_window": 128,
}
ON_GPU = jax.default_backend() == "gpu"


def layer_scan(attention):
    """jit(q, k, v) -> (outs [L, ...], stats {name: [L, B]}): the layers as a model runs them."""

    @jax.jit
    def run(q, k, v):
        num_layers, batch, seq_len = q.shape[:3]
        lengths = jnp.full((batch,), seq_len, jnp.int32)

        def body(state, inputs):
            layer, q, k, v = inputs
            out, state, stats = attention(q, k, v, state, layer=layer, lengths=lengths)
            return state, (out, stats)

        state = attention.init_state(batch, seq_len)
        _, (outs, stats) = jax.lax.scan(body, state, (jnp.arange(num_layers), q, k, v))
        return outs, stats

    return run


@jax.jit
def dense_scan(q, k, v):
    """cuDNN dense causal attention of every layer (XLA off the GPU)."""

    def body(carry, inputs):
        return carry, dense_causal_attention(*inputs)

    return jax.lax.scan(body, (), (q, k, v))[1]


def print_shares(spec, layers, measured, *, detail: bool) -> dict:
    """Prints targets beside the shares reached; returns the summary stored in the results."""
    targets = spec.targets()
    error = np.abs(measured - targets)
    summary = {
        "target_mean": dict(zip(SHARES, targets.mean(0).round(4).tolist(), strict=True)),
        "measured_mean": dict(zip(SHARES, measured.mean(0).round(4).tolist(), strict=True)),
        "solved_mean": dict(
            zip(SHARES, layers.solved_shares.mean(0).round(4).tolist(), strict=True)
        ),
        "mean_abs_error": dict(zip(SHARES, error.mean(0).round(4).tolist(), strict=True)),
        "max_abs_error": dict(zip(SHARES, error.max(0).round(4).tolist(), strict=True)),
    }
    header = "  ".join(f"{name:>8}" for name in SHARES)
    print(f"  shares (last query block)  {header}")
    for label, key in (
        ("target, mean over heads", "target_mean"),
        ("measured, blind decomposition", "measured_mean"),
        ("reached, by construction", "solved_mean"),
        ("mean |measured - target|", "mean_abs_error"),
        ("max |measured - target|", "max_abs_error"),
    ):
        print(f"  {label:<29}" + "  ".join(f"{summary[key][n]:8.3f}" for n in SHARES))
    if detail:
        print("  per head: target -> measured (sink band vertical slash rest), archetype")
        for h, archetype in enumerate(spec.archetypes):
            t = " ".join(f"{x:.2f}" for x in targets[h])
            m = " ".join(f"{x:.2f}" for x in measured[h])
            print(f"    h{h:<3} {t}  ->  {m}   L{archetype['layer']}H{archetype['head']}")
    return summary


def run_length(seq_len, spec, table, methods, planner, args, dtype, meta) -> list[dict]:
    """Every method at one length; a failing case is recorded, not raised."""
    start = time.time()
    base = {"seq_len": seq_len, "profile": spec.profile_name, "commit": meta["commit"]}
    base |= {"layers": spec.num_layers, "num_shared_clusters": table.num_shared}
    try:
        layers = synthetic_heads.build_layers(spec, seq_len, dtype)
        measured = synthetic_heads.check_shares(spec, layers)
    except Exception as e:  # noqa: BLE001 - an OOM or a failing length is a result
        print(f"  S={seq_len}: building inputs failed: {e!r}"[:400], flush=True)
        return [base | {"method": m, "error": repr(e)[:1000]} for m in methods]
    print(f"  inputs built and checked in {time.time() - start:.1f} s", flush=True)
    meta["share_checks"][str(seq_len)] = print_shares(
        spec, layers, measured, detail=args.dry_run or seq_len == args.seq_lens[0]
    )
    q, k, v = layers.q, layers.k, layers.v
    num_layers = spec.num_layers
    timing_kwargs = {"warmup": args.warmup, "repeats": args.repeats}
    try:
        dense_time = timing.time_call(dense_scan, q, k, v, **timing_kwargs) / num_layers
        print(f"  cuDNN dense: {dense_time * 1e3:.3f} ms per layer", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"  cuDNN dense failed: {e!r}"[:400], flush=True)
        dense_time = None
    records = []
    for method in methods:
        record = base | {"method": method, "dense_time_ms": dense_time and dense_time * 1e3}
        try:
            config = SharePrefillConfig(method=method, **planner)
            attention = SharePrefillAttention(
                config=config,
                table=table,
                implementation=args.implementation,
                interpret=False,
            )
            run = layer_scan(attention)
            print(f"  {method:>14}: first call (compiles)", flush=True)
            compile_start = time.perf_counter()
            _, stats = jax.block_until_ready(run(q, k, v))
            record["first_call_s"] = time.perf_counter() - compile_start
            print(f"  {method:>14}: first call took {record['first_call_s']:.1f} s", flush=True)
            record |= stats_by_layer(stats)
            elapsed = timing.time_call(run, q, k, v, **timing_kwargs) / num_layers
            record["time_ms"] = elapsed * 1e3
            record["speedup"] = dense_time / elapsed if dense_time else None
            heads = " ".join(f"{n}={c}" for n, c in record["heads"].items() if c)
            print(
                f"  {method:>14}: {elapsed * 1e3:9.3f} ms per layer, speedup"
                f" {record['speedup'] or float('nan'):6.2f}x, density {record['density']:.3f},"
                f" heads (all layers) {heads}",
                flush=True,
            )
        except Exception as e:  # noqa: BLE001
            record["error"] = repr(e)[:1000]
            print(f"  {method:>14}: failed: {e!r}"[:400], flush=True)
        records.append(record)
        gc.collect()
    del q, k, v, layers
    gc.collect()
    return records


def plot(results: Path, figure: Path) -> None:
    """Time per layer and speedup over cuDNN against S, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(results.read_text())
    records = [r for r in data["records"] if r.get("time_ms") is not None]
    env = data["environment"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    dense = {}
    for r in records:
        if r.get("dense_time_ms"):
            dense[r["seq_len"]] = r["dense_time_ms"]
    lens = sorted(dense)
    left.plot(lens, [dense[s] for s in lens], "k--", marker="s", label="cuDNN dense")
    for method in METHODS:
        rows = sorted((r for r in records if r["method"] == method), key=lambda r: r["seq_len"])
        if not rows:
            continue
        xs = [r["seq_len"] for r in rows]
        (line,) = left.plot(xs, [r["time_ms"] for r in rows], "o-", label=method)
        right.plot(xs, [r["speedup"] for r in rows], "o-", color=line.get_color(), label=method)
        for r in rows:
            right.annotate(
                f"{100 * r['density']:.0f}%",
                (r["seq_len"], r["speedup"]),
                textcoords="offset points",
                xytext=(3, 3),
                fontsize=6,
                color=line.get_color(),
            )
    right.axhline(1.0, color="gray", lw=0.8, ls="--")
    ticks = sorted({r["seq_len"] for r in records})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{s // 1024}K" for s in ticks])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_xlabel("prompt length S")
    left.set(yscale="log", ylabel="ms per layer (planner + kernels)", title="Attention time")
    right.set(
        yscale="log",
        ylabel="speedup over cuDNN dense causal",
        title="Speedup (labels: block density)",
    )
    fig.suptitle(
        f"{env['device_kind']}, N={env['shape']['num_heads']} K={env['shape']['num_kv_heads']}"
        f" H={env['shape']['head_dim']} {env['dtype']} B=1, synthetic heads from"
        f" {env.get('profile', '?')} profiles, {env.get('layers', '?')} layers, commit"
        f" {env['commit']}",
        fontsize=9,
    )
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", type=Path, default=DEFAULT_PROFILE)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--layers", type=int, default=None, help="layers per timed call (default 4, dry run 2)"
    )
    parser.add_argument(
        "--shared-fraction", type=float, default=0.25, help="share of clusters that share"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warmup", type=int, default=1, help="warm-up calls after the first (compiling) call"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--implementation", default=None, help="kernel implementation")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, float32, CPU")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--resume", action="store_true", help="keep the finished cases of --out, run the rest"
    )
    parser.add_argument(
        "--plot", nargs=2, type=Path, metavar=("RESULTS", "FIGURE"), help="only plot a results file"
    )
    args = parser.parse_args(argv)
    if args.plot:
        plot(*args.plot)
        print(f"wrote {args.plot[1]}")
        return []
    shape = DRY_SHAPE if args.dry_run else SHAPE
    planner = DRY_PLANNER if args.dry_run else {}
    dtype = jnp.float32 if args.dry_run else jnp.bfloat16
    if args.dry_run:
        args.implementation = args.implementation or "xla"
        args.warmup, args.repeats = 1, 2
    args.layers = args.layers or (2 if args.dry_run else 4)
    args.seq_lens = sorted(args.seq_lens or (DRY_SEQ_LENS if args.dry_run else SEQ_LENS))

    profile = load_profile(args.profile)
    spec = synthetic_heads.make_spec(profile, num_layers=args.layers, seed=args.seed, **shape)
    table = synthetic_heads.sharing_table(spec, args.shared_fraction)
    meta = timing.environment() | {
        "profile": profile["model"],
        "profile_path": str(args.profile),
        "layers": args.layers,
        "shape": shape,
        "dtype": jnp.dtype(dtype).name,
        "planner": planner or "SharePrefillConfig() defaults",
        "implementation": args.implementation,
        "shared_clusters": [int(c) for c in np.asarray(table.cluster_ids)[table.is_shared]],
        "dry_run": args.dry_run,
        "inputs": "synthetic heads matching profiled sink/band/vertical/slash/rest shares",
        "share_checks": {},
    }
    print({k: v for k, v in meta.items() if k != "share_checks"}, flush=True)
    archetypes = spec.archetypes
    names = " ".join(f"L{a['layer']}H{a['head']}" for a in archetypes)
    gamma_density = np.mean([a["gamma_density"] for a in archetypes])
    query_aware = np.mean([a.get("query_aware_rate", np.nan) for a in archetypes])
    print(
        f"{len(archetypes)} heads from {profile['model']} ({names}); in the real model at"
        f" {profile['length']} tokens: gamma density {gamma_density:.3f}, query-aware rate"
        f" {query_aware:.2f}; shared clusters (a head index across layers):"
        f" {meta['shared_clusters']}",
        flush=True,
    )
    suffix = "_dryrun" if args.dry_run else ""
    out = args.out or Path(f"benchmarks/results/method_attention_{timing.gpu_tag()}{suffix}.json")
    records: list[dict] = []
    if args.resume and out.is_file():
        previous = json.loads(out.read_text())
        records = [r for r in previous["records"] if "error" not in r]
        meta["share_checks"] = previous["environment"].get("share_checks", {})
        print(f"resuming: {len(records)} finished cases kept from {out}", flush=True)
    done = {(r["method"], r["seq_len"]) for r in records}
    start = time.time()
    for seq_len in args.seq_lens:
        methods = [m for m in args.methods if (m, seq_len) not in done]
        if not methods:
            continue
        print(f"S={seq_len} ({time.time() - start:.0f} s elapsed)", flush=True)
        records += run_length(seq_len, spec, table, methods, planner, args, dtype, meta)
        timing.write_records(out, records, meta)  # after every length: a crash keeps the rest
    print(f"done in {time.time() - start:.0f} s; wrote {out}", flush=True)
    timing.print_table(
        records, ["method", "seq_len", "time_ms", "dense_time_ms", "speedup", "density"]
    )
    return records


if __name__ == "__main__":
    main()
