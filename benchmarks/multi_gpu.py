"""Sharded prefill over several GPUs of one host, against the same prefill on one GPU.

    python -m benchmarks.multi_gpu                 # llama8b and qwen, meshes model=2, model=4,
                                                   # data=2,model=2 (those the heads allow)
    python -m benchmarks.multi_gpu --models qwen --yarn-factor 4 --lengths 65536 131072
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m benchmarks.multi_gpu --dry-run

One process drives every device of the host (NCCL between GPUs). Per (model, length, method)
and mesh, in the same timed rounds (`prefill_latency.time_prefills`' protocol): the plain
prefill on one device, and the sharded prefill (`models.sharding`: parameters over `model`,
attention inside shard_map with each device's heads, a batch of `data` copies of the prompt).
The planned methods run as shipped (`prefill_latency.shipped_planner`).

Correctness, per cell: the sharded prefill's planner stats against the one device's
(`same_blocks`: every head count, kept block and sharing decision equal in every batch row)
and the largest difference of the last position's logits (`max_logit_diff`; bf16 reordering).

Speed: `speedup` = single_gpu_time_ms x data / time_ms (prompts per second over one device's),
`scaling_efficiency` = speedup / devices.

The sharing-state exchange of one layer (the pivot choice, the pivots' profiles and patterns,
the stats): the collectives of the traced sharded layer, for a layer with a pivot (of a
conditional's branches, the one that moves the most bytes). `exchange_bytes`: what each device
puts into them; `exchange_ms`: those collectives alone on the mesh, in their order, timed.
Dense attention, and the planned methods below their crossover, exchange nothing.

Records go to `benchmarks/results/multi_gpu_<gpu>.json` with model, seq_len, method, mesh,
time_ms, single_gpu_time_ms, speedup, scaling_efficiency, exchange_ms, exchange_bytes,
same_blocks, max_logit_diff, density; a mesh the model's heads or the host's devices do not
allow is recorded with `skipped` saying why. Nothing can be downloaded on the GPU machine:
bring the GGUF files and the text as `prefill_latency` explains, or pass `--random-weights`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from benchmarks import prefill_latency, timing
from models import prefill
from models.attention import bucket_attention
from models.sharding import check_mesh, make_mesh, parse_mesh_shape
from sharedsparse_cli import flags
from sharedsparse_jax import tables
from sharedsparse_jax.config import METHODS

DEFAULT_MODELS = ("llama8b", "qwen")
DEFAULT_LENGTHS = {"llama8b": (32768, 131072), "qwen": (32768,), "smollm2": (8192,)}
DEFAULT_MESHES = ("data=1,model=2", "data=1,model=4", "data=2,model=2")
DRY_RUN_LENGTHS = (256,)
# Stats that must match exactly for the same blocks to have been chosen.
EXACT_STATS = ("num_", "kept_blocks", "causal_blocks", "density", "share_reason")
COLLECTIVES = frozenset(
    {"psum", "pmax", "pmin", "all_gather", "all_to_all", "ppermute", "reduce_scatter"}
)


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of a traced program: its primitive, parameters and operands' avals."""

    primitive: Any
    params: dict[str, Any]
    avals: tuple[Any, ...]

    @property
    def bytes(self) -> int:
        """What each device puts in: the operands' bytes."""
        return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in self.avals)


def _sub_jaxprs(params: dict[str, Any]) -> list[Any]:
    """The jaxprs among an equation's parameters (open or closed, alone or in tuples)."""
    found = []
    for value in params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if hasattr(item, "eqns"):
                found.append(item)
            elif hasattr(getattr(item, "jaxpr", None), "eqns"):
                found.append(item.jaxpr)
    return found


def collectives(jaxpr) -> list[Collective]:
    """Every collective `jaxpr` runs, in order: a scan's body as often as it loops, of a
    conditional's branches the one with the most bytes, a while loop's body once."""
    found: list[Collective] = []
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in COLLECTIVES:
            avals = tuple(v.aval for v in eqn.invars)
            found.append(Collective(eqn.primitive, dict(eqn.params), avals))
        elif name == "cond":
            branches = [collectives(b.jaxpr) for b in eqn.params["branches"]]
            found += max(branches, key=lambda c: sum(x.bytes for x in c))
        else:
            times = int(eqn.params.get("length", 1)) if name == "scan" else 1
            for sub in _sub_jaxprs(eqn.params):
                found += collectives(sub) * times
    return found


def layer_collectives(attention, config, batch: int, length: int, dtype) -> list[Collective]:
    """The collectives of one layer of `attention` (a ShardedAttention) on a whole prompt of
    `length` tokens, as the layer loop runs it (below the crossover: dense, none)."""
    lengths = jnp.full((batch,), length, jnp.int32)
    loop_attention, known_stats = bucket_attention(
        attention,
        lengths,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_queries=length,
        num_keys=length,
    )
    if known_stats is not None:
        return []
    q = jax.ShapeDtypeStruct((batch, length, config.num_heads, config.head_dim), dtype)
    kv = jax.ShapeDtypeStruct((batch, length, config.num_kv_heads, config.head_dim), dtype)
    state = loop_attention.init_state(batch, length)

    def layer(q, k, v, state, index):
        return loop_attention(q, k, v, state, layer=index, lengths=lengths)

    return collectives(jax.make_jaxpr(layer)(q, kv, kv, state, jnp.int32(0)).jaxpr)


def time_collectives(found: Sequence[Collective], mesh, repeats: int) -> float:
    """Median ms of `found` run alone inside shard_map over `mesh`, one after another, on zeros
    of their operands' shapes (each device's block)."""
    if not found:
        return 0.0
    operands = [jnp.zeros(a.shape, a.dtype) for c in found for a in c.avals]

    def replay(*xs):
        xs, outs = list(xs), []
        for c in found:
            args, xs = xs[: len(c.avals)], xs[len(c.avals) :]
            outs.append(c.primitive.bind(*args, **c.params))
        return outs

    run = jax.jit(
        jax.shard_map(
            replay,
            mesh=mesh,
            in_specs=tuple(P() for _ in operands),
            out_specs=P(),
            check_vma=False,
        )
    )
    return 1e3 * timing.time_call(run, *operands, repeats=repeats)


def compare_stats(sharded: dict, single: dict) -> bool:
    """Whether every batch row of the sharded prefill's stats ([L, B, ...]) planned the blocks
    of the single device's row 0."""
    for name, want in single.items():
        if not name.startswith(EXACT_STATS):
            continue
        got = np.asarray(sharded[name])
        want = np.broadcast_to(np.asarray(want)[:, :1], got.shape)
        if not np.array_equal(got, want):
            return False
    return True


def mesh_for(shape: dict[str, int], config) -> tuple[Any, str | None]:
    """The mesh of this shape over the host's devices, or None and why the model cannot run on
    it (`make_mesh`'s device count, `check_mesh`'s whole GQA groups per shard)."""
    try:
        mesh = make_mesh(shape)
        check_mesh(config, mesh)
    except ValueError as error:
        return None, str(error)
    return mesh, None


def mesh_label(shape: dict[str, int]) -> str:
    return f"data={shape['data']},model={shape['model']}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", choices=tuple(prefill_latency.CASES), default=DEFAULT_MODELS
    )
    parser.add_argument("--lengths", nargs="+", type=int, help="default: per model")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--meshes",
        nargs="+",
        default=list(DEFAULT_MESHES),
        help="meshes to shard over, e.g. model=2 data=2,model=2 (one device is the baseline)",
    )
    parser.add_argument("--runs", type=int, default=5, help="timed rounds per cell (>= 1)")
    flags.add_yarn_factor(parser)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights of smollm2's and qwen's shapes too (llama8b always has them)",
    )
    parser.add_argument("--text-file", type=Path, help="the long text (plain or essays JSON)")
    parser.add_argument("--out", type=Path, help="default: results/multi_gpu_<gpu>.json")
    parser.add_argument(
        "--exchange-only",
        action="store_true",
        help="only each layer's exchange bytes, from the traced program (no weights, nothing"
        " run; the models' shipped tables): works on simulated CPU devices",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help=f"tiny lengths {DRY_RUN_LENGTHS}, 2 runs, random float32 weights, the planner of"
        " prefill_latency's dry run, a tiny llama8b: checks the script on simulated CPU devices",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if problem := flags.yarn_factor_problem(args.yarn_factor):
        parser.error(problem)
    try:
        args.mesh_shapes = [parse_mesh_shape(text) for text in args.meshes]
    except ValueError as error:
        parser.error(str(error))
    # make_attention's kernel choices: the defaults of the device.
    args.implementation, args.interpret = None, False
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    dtype = jnp.dtype("float32" if args.dry_run else args.dtype)
    runs = min(args.runs, 2) if args.dry_run else args.runs
    random_weights = args.random_weights or args.dry_run
    planner = prefill_latency.DRY_RUN_PLANNER if args.dry_run else {}
    out = args.out or prefill_latency.RESULTS_DIR / f"multi_gpu_{timing.gpu_tag()}.json"
    cases = [prefill_latency.CASES[name] for name in args.models]
    if args.yarn_factor is not None:
        try:
            cases = [case.extended(args.yarn_factor) for case in cases]
        except ValueError as error:
            raise SystemExit(f"--yarn-factor: {error}") from None
    needs_text = not random_weights and any(case.builtin for case in cases)
    text, text_source = prefill_latency.load_text(args.text_file) if needs_text else (None, None)
    environment = timing.environment() | {"device_count": jax.device_count(), "text": text_source}
    device_kind = jax.devices()[0].device_kind
    records: list[dict] = []
    for case in cases:
        lengths = args.lengths or (
            DRY_RUN_LENGTHS if args.dry_run else DEFAULT_LENGTHS.get(case.name, case.lengths)
        )
        lengths = [n for n in lengths if n <= case.config.max_position_embeddings]
        if not lengths:
            print(f"{case.name}: no length within its {case.config.max_position_embeddings} tokens")
            continue
        if args.exchange_only:
            records += exchange_records(case, lengths, planner, dtype, args)
            continue
        load = functools.partial(
            prefill_latency.load_case_model,
            case,
            dtype,
            random_weights=random_weights,
            dry_run=args.dry_run,
        )
        single_model, tokenizer, table, description = load()
        config = single_model.config
        case_planner, crossover = prefill_latency.shipped_planner(planner, table, device_kind)
        base = {
            "model": case.name,
            "yarn_factor": case.yarn_factor,
            "dtype": str(dtype),
            "description": description,
            "weights": "random" if tokenizer is None else "checkpoint",
            "dense_below_measured_on": None if crossover is None else crossover["device"],
        }
        if tokenizer is not None:
            token_ids = tokenizer.encode(text[: 5 * max(lengths) + 1000])
        else:
            token_ids = list(("SharePrefill " * 64).encode("utf-8"))
        single = {}  # (length, method) -> (stats, logits, attention)
        for length in lengths:
            prompt = prefill_latency.prompt_tokens(token_ids, length)[None]
            for method in args.methods:
                attention = prefill_latency.make_attention(method, case_planner, table, args)
                result = prefill(single_model, prompt, attention=attention)
                single[length, method] = (
                    jax.device_get(result.stats),
                    np.asarray(result.logits, np.float32),
                    attention,
                )
        for shape in args.mesh_shapes:
            mesh_name = mesh_label(shape)
            devices = shape["data"] * shape["model"]
            mesh, problem = mesh_for(shape, config)
            if problem:
                records += [
                    base | {"seq_len": n, "method": m, "mesh": mesh_name, "skipped": problem}
                    for n in lengths
                    for m in args.methods
                ]
                print(f"{case.name} {mesh_name}: skipped, {problem}")
                continue
            sharded_model = load(mesh=mesh)[0]
            for length in lengths:
                prompt = prefill_latency.prompt_tokens(token_ids, length)[None]
                batch_prompt = np.tile(prompt, (shape["data"], 1))
                for method in args.methods:
                    stats, logits, attention = single[length, method]
                    sharded = prefill_latency.make_attention(
                        method, case_planner, table, args, mesh
                    )
                    result = prefill(sharded_model, batch_prompt, attention=sharded)
                    rounds = timing.time_rounds(
                        [
                            functools.partial(prefill, single_model, prompt, attention=attention),
                            functools.partial(
                                prefill, sharded_model, batch_prompt, attention=sharded
                            ),
                        ],
                        runs,
                        warmup=1,
                        min_batch_seconds=0,
                    )
                    single_ms, time_ms = (
                        1e3 * float(np.median(c)) for c in zip(*rounds, strict=True)
                    )
                    found = layer_collectives(sharded, config, shape["data"], length, dtype)
                    speedup = single_ms * shape["data"] / time_ms
                    records.append(
                        base
                        | {
                            "seq_len": length,
                            "method": method,
                            "mesh": mesh_name,
                            "devices": devices,
                            "time_ms": time_ms,
                            "single_gpu_time_ms": single_ms,
                            "speedup": speedup,
                            "scaling_efficiency": speedup / devices,
                            "exchange_ms": time_collectives(found, mesh, repeats=runs),
                            "exchange_bytes": sum(c.bytes for c in found),
                            "exchange_collectives": len(found),
                            "same_blocks": compare_stats(jax.device_get(result.stats), stats),
                            "max_logit_diff": float(
                                np.max(np.abs(np.asarray(result.logits, np.float32) - logits))
                            ),
                            "density": float(np.mean(np.asarray(stats["density"])))
                            if "density" in stats
                            else 1.0,
                        }
                    )
                    timing.write_records(out, records, environment)
            del sharded_model
            gc.collect()
        del single_model, single
        gc.collect()
    timing.write_records(out, records, environment)
    print(f"wrote {out}")
    columns = ["model", "seq_len", "method", "mesh", "exchange_bytes", "exchange_collectives"]
    if not args.exchange_only:
        columns[4:4] = ["time_ms", "single_gpu_time_ms", "speedup", "scaling_efficiency"]
        columns += ["exchange_ms", "same_blocks", "max_logit_diff"]
    timing.print_table([r for r in records if "skipped" not in r], columns)
    return records


def exchange_records(case, lengths, planner, dtype, args) -> list[dict]:
    """Each (mesh, length, method)'s exchange bytes per layer, from the traced layer alone."""
    config = prefill_latency.LLAMA_8B_DRY if args.dry_run and not case.builtin else case.config
    table = None
    if case.builtin is not None:
        table = tables.resolve_table(
            "builtin", case.builtin, num_layers=config.num_layers, num_heads=config.num_heads
        ).table
    planner, _ = prefill_latency.shipped_planner(planner, table, jax.devices()[0].device_kind)
    base = {"model": case.name, "yarn_factor": case.yarn_factor, "dtype": str(dtype)}
    base["num_shared_clusters"] = 0 if table is None else table.num_shared
    records = []
    for shape in args.mesh_shapes:
        mesh, problem = mesh_for(shape, config)
        for length, method in itertools.product(lengths, args.methods):
            record = base | {"seq_len": length, "method": method, "mesh": mesh_label(shape)}
            if problem:
                records.append(record | {"skipped": problem})
                continue
            attention = prefill_latency.make_attention(method, planner, table, args, mesh)
            found = layer_collectives(attention, config, shape["data"], length, dtype)
            records.append(
                record
                | {
                    "exchange_bytes": sum(c.bytes for c in found),
                    "exchange_collectives": len(found),
                }
            )
    return records


if __name__ == "__main__":
    main()
    sys.exit(0)
