"""The pod benchmark job: prefill latency and accuracy of every method over a device mesh.

Launch the same command on every worker; process 0 writes the results file. On a TPU VM pod:

    gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command \\
      "cd sharedsparse-jax && python -m benchmarks.pod --auto-distributed \\
       --model qwen2.5-coder-0.5b-instruct --mesh data=1,model=8 --out pod_results.json"

On a multi-GPU host (one process over all its GPUs) or on CPU with simulated devices:

    python -m benchmarks.pod --model qwen2.5-coder-0.5b-instruct --mesh data=1,model=2
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.pod \\
      --model CHECKPOINT_DIR --mesh data=2,model=4 --lengths 512 --block-size 64

Several processes of one machine or cluster join with --coordinator host:port
--num-processes P --process-id I (or $SHAREDSPARSE_COORDINATOR, ..._NUM_PROCESSES,
..._PROCESS_ID).

Per (length, method): the prefill of `data`-axis-size copies of a text prompt (median of
`--runs` timed calls after a warm-up, dense in the same run) and the mean next-token NLL of
`--windows` text windows against dense (delta_nll). Every method runs sharded: attention inside
shard_map with each device's heads, parameters restored straight into their shards. Records:
model, seq_len, method, mesh, time_ms, dense_time_ms, speedup, density, delta_nll, and the
processes and devices that ran them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from benchmarks import prefill_latency
from models import BUILTIN_MODELS, DenseAttention, distributed, load_builtin, load_checkpoint
from models.generate import prefill
from models.sharding import ShardedAttention, make_mesh, parse_mesh_shape
from sharedsparse_jax import tables
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import METHODS, SharePrefillConfig

DEFAULT_LENGTHS = (4096, 32768)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        required=True,
        help=f"a built-in model ({', '.join(BUILTIN_MODELS)}) or a converted checkpoint dir",
    )
    parser.add_argument("--lengths", nargs="+", type=int, default=list(DEFAULT_LENGTHS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--runs", type=int, default=5, help="timed prefills per cell (>= 1)")
    parser.add_argument(
        "--windows", type=int, default=2, help="text windows for delta NLL per cell (>= 0)"
    )
    parser.add_argument("--block-size", type=int, help="planner block size (default: 128)")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on GPU/TPU, else float32")
    parser.add_argument("--text-file", type=Path, help="the long text (plain or essays JSON)")
    parser.add_argument("--out", type=Path, default=Path("pod_results.json"))
    distributed.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.windows < 0:
        parser.error("--runs must be >= 1 and --windows >= 0")
    try:
        args.mesh_shape = parse_mesh_shape(args.mesh or "")
        args.spec = distributed.from_arguments(args, os.environ)
    except ValueError as error:
        parser.error(str(error))
    return args


def load(args, mesh, dtype):
    """(model, tokenizer, sharing table) restored into the mesh's shards."""
    if args.model in BUILTIN_MODELS:
        loaded = load_builtin(args.model, dtype=dtype, mesh=mesh)
        name = args.model
    else:
        loaded = load_checkpoint(args.model, dtype=dtype, mesh=mesh)
        name = Path(args.model).name
    config = loaded.config
    table, _ = tables.resolve_table(
        None, name, num_layers=config.num_layers, num_heads=config.num_heads
    )
    return loaded.model, loaded.tokenizer, table


def attention_of(method: str, args, table, mesh) -> ShardedAttention:
    if method == "dense":
        return ShardedAttention(DenseAttention(), mesh)
    knobs: dict[str, Any] = {}
    if args.block_size:
        knobs = {"block_size": args.block_size, "min_budget": args.block_size}
        knobs["dense_below"] = 2 * args.block_size
    config = SharePrefillConfig(method=method, **knobs)
    inner = SharePrefillAttention(
        config, table if method == "shareprefill" else None, head_axis="model"
    )
    return ShardedAttention(inner, mesh)


def window_nll(model, windows: np.ndarray, attention, batch: int) -> float:
    """Mean next-token NLL of [W, T] windows, prefilled `batch` rows at a time (the data axis
    needs whole batches: the last one is filled up with repeated windows, not counted)."""
    count = windows.shape[0]
    rows = np.concatenate([windows, windows[: (-count) % batch]]) if count % batch else windows
    values = []
    for start in range(0, rows.shape[0], batch):
        ids = rows[start : start + batch]
        result = prefill(model, ids, attention=attention, score=True)
        nll = -jnp.mean(result.log_likelihoods, axis=1)  # rows may live on other processes
        values.append(np.asarray(multihost_utils.process_allgather(nll, tiled=True)))
    return float(np.concatenate(values)[:count].mean())


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    distributed.initialize(args.spec)
    mesh = make_mesh(args.mesh_shape)
    on_accelerator = jax.default_backend() in ("gpu", "tpu")
    dtype = jnp.dtype(args.dtype or ("bfloat16" if on_accelerator else "float32"))
    model, tokenizer, table = load(args, mesh, dtype)
    text, text_source = prefill_latency.load_text(args.text_file)
    token_ids = tokenizer.encode(text[: 5 * (max(args.lengths) + 1) * max(args.windows, 1) + 1000])
    batch = args.mesh_shape["data"]
    base = {
        "model": args.model if args.model in BUILTIN_MODELS else Path(args.model).name,
        "mesh": f"data={args.mesh_shape['data']},model={args.mesh_shape['model']}",
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "batch": batch,
    }
    records = []
    for length in args.lengths:
        prompt = np.tile(prefill_latency.prompt_tokens(token_ids, length)[None], (batch, 1))
        count = min(args.windows, len(token_ids) // length)
        windows = np.asarray(token_ids[: count * length], np.int32).reshape(count, length)
        dense_ms = dense_nll = None
        for method in ["dense"] + [m for m in args.methods if m != "dense"]:
            attention = attention_of(method, args, table, mesh)
            record = base | {"seq_len": length, "method": method}
            timed = prefill_latency.time_prefill(model, prompt, attention, args.runs)
            record |= {"time_ms": timed["median_ms"], "compile_s": timed["compile_s"]}
            if method == "dense":
                dense_ms = timed["median_ms"]
            record["dense_time_ms"] = dense_ms
            record["speedup"] = dense_ms / timed["median_ms"]
            record["density"] = timed.get("density", 1.0)
            if len(windows):
                nll = window_nll(model, windows, attention, batch)
                dense_nll = nll if method == "dense" else dense_nll
                record["nll"] = nll
                record["delta_nll"] = nll - dense_nll
            records.append(record)
            if jax.process_index() == 0:
                write(args.out, records, base | {"text": text_source})
    if jax.process_index() == 0:
        print(f"wrote {args.out}")
        for r in records:
            print(
                f"{r['seq_len']:>7} {r['method']:>14} {r['time_ms']:9.2f} ms"
                f" {r['speedup']:6.2f}x density {r['density']:.3f}"
                f" delta_nll {r.get('delta_nll', float('nan')):+.4f}"
            )
    return records


def write(path: Path, records: list[dict], environment: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": environment, "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
    sys.exit(0)
