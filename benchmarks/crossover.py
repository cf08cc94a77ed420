"""The prompt length from which sparse prefill pays, per model and device, and the planner's cost.

    python -m benchmarks.crossover --models smollm2 qwen            # measure, print, save
    python -m benchmarks.crossover --models qwen --write-tables     # also store it in the table
    python -m benchmarks.crossover --dry-run                        # tiny lengths: a CPU check

For each model and length the prefill of one prompt (batch 1, last-position logits, median of
`--runs` rounds of one timed call each after a warm-up: `prefill_latency.time_prefills`) is timed
with dense attention, with every planned method
(SharePrefill, FlexPrefill, vertical-slash) planning at every length (dense_below = one block),
and with the planner followed by dense attention (`PlanThenDense`): that run minus dense, over
the layers, is the planner's cost per layer. The crossover is the shortest measured length from
which every planned method is at least as fast as dense at that and every longer measured
length; where none is, the model's context plus one (planning never pays on this device).

Records go to `benchmarks/results/crossover_<gpu>.json`: one `planner_cost` record per (model,
length) with `planner_ms_per_layer`, one `crossover` record per model with `crossover_tokens`,
and the timed prefills (`time_ms`, `dense_time_ms`, `speedup`, `density`). With
`--write-tables` the crossover is stored in the model's shipped sharing table under
`metadata["dense_below"][<device kind>]`, where `sharedsparse-prefill` reads it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from benchmarks import prefill_latency, timing
from models import DenseAttention
from pallas_kernels.block_sparse_attention import layout_from_mask
from sharedsparse_jax import planner, tables
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.dense import dense_causal_attention

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PLANNED = ("shareprefill", "flexprefill", "vertical_slash")
LENGTHS = {
    "smollm2": (1024, 2048, 4096, 8192),
    "qwen": (2048, 4096, 8192, 16384, 32768),
}
DRY_RUN_LENGTHS = (256, 512)


@dataclasses.dataclass(frozen=True, eq=False)
class PlanThenDense:
    """SharePrefill's planning of every layer, then dense attention: prefill minus dense is the
    planner's cost."""

    inner: SharePrefillAttention

    def init_state(self, batch: int, num_queries: int, num_keys: int | None = None):
        return self.inner.init_state(batch, num_queries, num_keys)

    def check_model(self, num_layers: int, num_heads: int) -> None:
        self.inner.check_model(num_layers, num_heads)

    def __call__(self, q, k, v, state, *, layer, lengths):
        plan, state = planner.plan_layer(
            q,
            k,
            state,
            layer=layer,
            lengths=lengths,
            config=self.inner.config,
            table=self.inner.table,
        )
        layout = layout_from_mask(plan.block_mask, block_size=self.inner.config.block_size)
        out = dense_causal_attention(q, k, v)
        # The layout is part of what planning costs: keep it alive in the stats.
        return out, state, {"blocks": layout.kv_block_count.sum(axis=(1, 2))}


def crossover_length(rows: Sequence[dict], context: int) -> int:
    """The shortest length from which every planned method is at least as fast as dense.

    Args:
      rows: timed records with seq_len, method and speedup (dense time over the method's).
      context: the model's context; context + 1 when planning never pays.

    Returns:
      Tokens.
    """
    lengths = sorted({r["seq_len"] for r in rows})
    pays = {
        n: all(r["speedup"] >= 1.0 for r in rows if r["seq_len"] == n and r["method"] in PLANNED)
        for n in lengths
    }
    crossover = context + 1
    for n in reversed(lengths):
        if not pays[n]:
            break
        crossover = n
    return crossover


def store_crossover(name: str, crossover: int, device_kind: str, command: str) -> Path:
    """Writes the crossover into the built-in model's shipped sharing table."""
    path = tables.table_path(name)
    data = json.loads(path.read_text())
    entry = {
        "tokens": crossover,
        "command": command,
        "date": datetime.date.today().isoformat(),
    }
    data.setdefault("metadata", {}).setdefault("dense_below", {})[device_kind] = entry
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=tuple(LENGTHS), default=tuple(LENGTHS))
    parser.add_argument("--lengths", nargs="+", type=int, help="default: each model's own")
    parser.add_argument("--runs", type=int, default=10, help="timed prefills per case (>= 1)")
    parser.add_argument("--text-file", type=Path, help="the long text (plain or essays JSON)")
    parser.add_argument("--out", type=Path, help="results JSON (default: results/...<gpu>.json)")
    parser.add_argument(
        "--write-tables",
        action="store_true",
        help="store each crossover in the model's shipped sharing table (metadata.dense_below)",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights of the models' shapes: only the planner's cost is measured (random"
        " attention plans nearly every block, so no crossover), no GGUF needed",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help=f"lengths {DRY_RUN_LENGTHS}, 2 runs: a CPU check"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device_kind = jax.devices()[0].device_kind
    runs = min(args.runs, 2) if args.dry_run else args.runs
    out = args.out or RESULTS_DIR / f"crossover_{timing.gpu_tag()}.json"
    text, text_source = prefill_latency.load_text(args.text_file)
    records: list[dict] = []
    environment = timing.environment() | {"text": text_source, "dry_run": args.dry_run}
    for name in args.models:
        case = prefill_latency.CASES[name]
        dtype = jnp.float32 if args.dry_run else jnp.bfloat16
        model, tokenizer, table, _ = prefill_latency.load_case_model(
            case, dtype, random_weights=args.random_weights, dry_run=False
        )
        config = model.config
        lengths = args.lengths or (DRY_RUN_LENGTHS if args.dry_run else LENGTHS[name])
        if tokenizer is None:  # random weights: any ids do
            token_ids = list(text.encode("utf-8")[: max(lengths) + 1])
        else:
            token_ids = tokenizer.encode(text[: 5 * max(lengths) + 1000])
        # Plan at every length: dense_below is one block.
        planner_knobs: dict[str, Any] = prefill_latency.DRY_RUN_PLANNER if args.dry_run else {}
        overrides = planner_knobs | {
            "dense_below": planner_knobs.get("block_size", SharePrefillConfig().block_size)
        }
        methods = () if args.random_weights else PLANNED
        timed: list[dict] = []
        for length in tqdm(lengths, desc=name, unit="length"):
            tokens = prefill_latency.prompt_tokens(token_ids, length)
            attentions = [DenseAttention()] + [
                SharePrefillAttention(
                    SharePrefillConfig(method=method, **overrides),
                    table if method == "shareprefill" else None,
                )
                for method in methods
            ]
            attentions.append(
                PlanThenDense(SharePrefillAttention(SharePrefillConfig(**overrides), table))
            )
            dense, *results, planned = prefill_latency.time_prefills(
                model, tokens, attentions, runs, catch=False
            )
            base = {"model": name, "seq_len": length, "dense_time_ms": dense["median_ms"]}
            prefills = [
                base
                | {
                    "kind": "prefill",
                    "method": method,
                    "time_ms": result["median_ms"],
                    "speedup": dense["median_ms"] / result["median_ms"],
                    "density": result["density"],
                }
                for method, result in zip(methods, results, strict=True)
            ]
            timed += prefills
            records.append(
                base
                | {
                    "kind": "planner_cost",
                    "plan_then_dense_ms": planned["median_ms"],
                    "planner_ms_per_layer": (planned["median_ms"] - dense["median_ms"])
                    / config.num_layers,
                }
            )
            records += prefills
            timing.write_records(out, records, environment)
        if args.random_weights:
            continue
        crossover = crossover_length(timed, config.max_position_embeddings)
        for record in records:
            if record["model"] == name and record["kind"] == "planner_cost":
                record["crossover_tokens"] = crossover
        records.append(
            {
                "model": name,
                "kind": "crossover",
                "crossover_tokens": crossover,
                "device_kind": device_kind,
            }
        )
        timing.write_records(out, records, environment)
        if args.write_tables and not args.dry_run:
            command = "python -m benchmarks.crossover --write-tables --models " + name
            path = store_crossover(case.builtin, crossover, device_kind, command)
            print(f"{name}: crossover {crossover} tokens on {device_kind}, stored in {path}")
    print(f"wrote {out}")
    timing.print_table(
        [r for r in records if r["kind"] != "crossover"],
        ["model", "kind", "seq_len", "method", "time_ms", "dense_time_ms", "speedup", "density",
         "planner_ms_per_layer", "crossover_tokens"],
    )  # fmt: skip
    return records


if __name__ == "__main__":
    main()
    sys.exit(0)
