"""Chunked against whole-prompt prefill: time, peak device memory and what chunking changes.

    python -m benchmarks.chunked_prefill                      # Qwen 32K-128K, on one GPU
    python -m benchmarks.chunked_prefill --lengths 32768 --chunks 4096 8192
    python -m benchmarks.chunked_prefill --model smollm2 --lengths 8192 --chunks 2048
    python -m benchmarks.chunked_prefill --dry-run            # the tiny model: a CPU check

For each length, method (dense, SharePrefill) and chunk size (whole prompt = no chunking) one
Austen window is prefilled: time (median of `--runs` after a warm-up; per chunk = the time over
the number of chunks), peak device memory of the compiled programs (XLA's memory analysis:
arguments, outputs and temporaries of the largest program, the whole prompt's or a chunk's),
delta NLL of the window's next-token predictions against whole-prompt prefill with the same
method, and for SharePrefill the agreement of the blocks (kept by both, over kept by either)
and the density. The model is a built-in one (`--model`, Qwen by default), with YaRN factor 4
beyond its context (`--yarn-factor`).
Records: benchmarks/results/chunked_prefill_<gpu>.json with model, seq_len, chunk_tokens (null
for whole-prompt), method, time_ms, time_per_chunk_ms, peak_memory_gib, delta_nll_vs_whole,
block_agreement, density.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import prefill_latency, timing
from models import DenseAttention, generate, load_builtin
from models.config import extend_context
from models.random_weights import random_model
from sharedsparse_jax import planner, tables
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import SharePrefillConfig

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# --model key -> the built-in model (its random-weights shape: prefill_latency.CASES[key]).
MODELS = {"qwen": "qwen2.5-coder-0.5b-instruct", "smollm2": "smollm2-135m-instruct"}
LENGTHS = (32768, 65536, 131072)
CHUNKS = (4096, 16384)
DRY_RUN = {"lengths": (256,), "chunks": (64,), "planner": {"block_size": 16, "min_budget": 16,
                                                          "dense_below": 32}}  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class PlanRecorder:
    """SharePrefillAttention that also returns each layer's block mask in its stats, its key
    blocks padded to the whole prompt's `num_key_blocks` (so every chunk's stack alike)."""

    inner: SharePrefillAttention
    num_key_blocks: int

    def init_state(self, batch, num_queries, num_keys=None):
        return self.inner.init_state(batch, num_queries, num_keys)

    def check_model(self, num_layers, num_heads):
        self.inner.check_model(num_layers, num_heads)

    def __call__(self, q, k, v, state, *, layer, lengths):
        plan, _ = planner.plan_layer(
            q, k, state, layer=layer, lengths=lengths, config=self.inner.config,
            table=self.inner.table,
        )  # fmt: skip
        out, state, stats = self.inner(q, k, v, state, layer=layer, lengths=lengths)
        pad = self.num_key_blocks - plan.block_mask.shape[-1]
        mask = jnp.pad(plan.block_mask, ((0, 0), (0, 0), (0, 0), (0, pad)))
        return out, state, stats | {"block_mask": mask}


def run(model, tokens: np.ndarray, attention, chunk: int | None, **kwargs):
    if chunk is None:
        return generate.prefill(model, tokens[None], attention=attention, **kwargs)
    return generate.prefill_chunked(
        model, tokens[None], chunk_tokens=chunk, attention=attention, **kwargs
    )


def peak_memory_gib(model, tokens: np.ndarray, attention, chunk: int | None) -> float:
    """The largest compiled program's arguments + outputs + temporaries, in GiB."""
    spec, dynamic = generate._split_attention(attention)
    graphdef, state = nnx.split(model)
    padded = (
        generate.bucket_length(tokens.size) if chunk is None else -(-tokens.size // chunk) * chunk
    )
    ids = np.zeros((1, padded), np.int32)
    lengths = np.asarray([tokens.size], np.int32)
    if chunk is None:
        programs = [
            generate._prefill_jit.lower(
                graphdef, state, ids, lengths, np.zeros((1, 1), np.int32), spec, dynamic
            )
        ]
    else:
        config = model.config
        shape = (config.num_layers, 1, padded, config.num_kv_heads, config.head_dim)
        cache = jax.eval_shape(
            lambda: generate.KVCache(
                jnp.zeros(shape, model.dtype), jnp.zeros(shape, model.dtype), jnp.asarray(lengths)
            )
        )
        programs = [
            generate._chunk_jit.lower(
                graphdef, state, ids[:, start : start + chunk], start, cache,
                np.zeros((1, 1), np.int32), spec, dynamic,
            )
            for start in range(0, padded, chunk)
        ]  # fmt: skip
    peaks = []
    for lowered in programs:
        analysis = lowered.compile().memory_analysis()
        peaks.append(
            analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes
            - analysis.alias_size_in_bytes
        )
    return max(peaks) / 2**30


def mean_nll(result) -> float:
    """Mean next-token NLL of a scored prefill of one unpadded prompt."""
    return float(-jnp.mean(result.log_likelihoods[0]))


def whole_mask(stats, chunk: int | None) -> np.ndarray:
    """bool[L, N, Tb, Sb] of the whole prompt, chunk rows put in place."""
    masks = np.asarray(stats["block_mask"])
    if chunk is None:
        return masks[:, 0]  # [L, B, N, Tb, Sb] -> batch element 0
    # [chunks, L, B, N, Tc, Sb] -> the chunks' rows one after the other
    return np.concatenate(list(masks[:, :, 0]), axis=2)


def accuracy(result, reference, method: str, chunk: int | None) -> dict:
    """nll, delta_nll_vs_whole, density and block_agreement of a run against the whole prompt's."""
    nll = mean_nll(result)
    record = {"nll": nll, "delta_nll_vs_whole": nll - mean_nll(reference)}
    if method == "dense":
        return record | {"density": 1.0, "block_agreement": None}
    kept = np.asarray(result.stats["kept_blocks"]).sum()
    record["density"] = float(kept / np.asarray(result.stats["causal_blocks"]).sum())
    got, want = whole_mask(result.stats, chunk), whole_mask(reference.stats, None)
    rows, cols = min(got.shape[2], want.shape[2]), min(got.shape[3], want.shape[3])
    got, want = got[:, :, :rows, :cols], want[:, :, :rows, :cols]
    record["block_agreement"] = float((got & want).sum() / max((got | want).sum(), 1))
    return record


def measure(record: dict, model, tokens: np.ndarray, attention, chunk: int | None, runs: int):
    """Adds time_ms, time_per_chunk_ms and peak_memory_gib to the record."""
    if isinstance(attention, PlanRecorder):
        attention = attention.inner
    jax.block_until_ready(run(model, tokens, attention, chunk).logits)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(run(model, tokens, attention, chunk).logits)
        samples.append(time.perf_counter() - start)
    record["time_ms"] = 1e3 * float(np.median(samples))
    num_chunks = 1 if chunk is None else -(-tokens.size // chunk)
    record["time_per_chunk_ms"] = record["time_ms"] / num_chunks
    record["peak_memory_gib"] = peak_memory_gib(model, tokens, attention, chunk)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=tuple(MODELS), default="qwen")
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument("--chunks", nargs="+", type=int, default=list(CHUNKS))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["dense", "shareprefill"],
        choices=["dense", "shareprefill", "flexprefill", "vertical_slash"],
    )
    parser.add_argument("--runs", type=int, default=5, help="timed prefills per cell (>= 1)")
    parser.add_argument(
        "--yarn-factor",
        type=float,
        default=4.0,
        help="YaRN factor for lengths beyond the model's context (default 4)",
    )
    parser.add_argument("--text-file", type=Path, help="the long text (plain or essays JSON)")
    parser.add_argument("--out", type=Path, help="results JSON (default: results/...<gpu>.json)")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights of the model's shape (no GGUF needed): time and memory only",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="the tiny random model at 256 tokens in 64-token chunks (CPU check)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


def load(args) -> tuple[Any, Any, Any, dict]:
    """(model, encode, table, planner knobs)."""
    if args.dry_run:
        from evaluation.harness.model_runs import tiny_random_model

        tiny = tiny_random_model()
        return tiny.model, tiny.encode, None, DRY_RUN["planner"]
    # The random-weights shape has the built-in model's context (a test checks it).
    shape = prefill_latency.CASES[args.model].config
    factor = None if max(args.lengths) <= shape.max_position_embeddings else args.yarn_factor
    if args.random_weights:
        config = shape if factor is None else extend_context(shape, factor)
        model = random_model(config, dtype=jnp.bfloat16)
        return model, lambda text: list(text.encode("utf-8")), None, {}
    name = MODELS[args.model]
    loaded = load_builtin(name, dtype=jnp.bfloat16, yarn_factor=factor)
    config = loaded.config
    table = tables.resolve_table(
        "builtin", name, num_layers=config.num_layers, num_heads=config.num_heads
    ).table
    encode = lambda text: loaded.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    return loaded.model, encode, table, {}


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    lengths = DRY_RUN["lengths"] if args.dry_run else args.lengths
    chunks = DRY_RUN["chunks"] if args.dry_run else args.chunks
    runs = 1 if args.dry_run else args.runs
    model, encode, table, knobs = load(args)
    text, source = prefill_latency.load_text(args.text_file)
    ids = np.asarray(encode(text[: 5 * max(lengths) + 1000]), np.int32)
    out = args.out or RESULTS_DIR / f"chunked_prefill_{timing.gpu_tag()}.json"
    environment = timing.environment() | {"text": source, "dry_run": args.dry_run}
    records: list[dict] = []
    for length in lengths:
        tokens = prefill_latency.prompt_tokens(ids, length)
        for method in args.methods:
            if method == "dense":
                attention = DenseAttention()
            else:
                config = SharePrefillConfig(method=method, **knobs)
                inner = SharePrefillAttention(config, table if method == "shareprefill" else None)
                attention = PlanRecorder(inner, -(-length // knobs.get("block_size", 128)))
            reference = None
            for chunk in [None, *chunks]:
                record = {
                    "model": "tiny-random" if args.dry_run else MODELS[args.model],
                    "weights": "random" if args.random_weights else "checkpoint",
                    "seq_len": length,
                    "chunk_tokens": chunk,
                    "method": method,
                }
                if not args.random_weights:
                    result = run(model, tokens, attention, chunk, score=True)
                    if chunk is None:
                        reference = result
                    record |= accuracy(result, reference, method, chunk)
                    del result
                measure(record, model, tokens, attention, chunk, runs)
                records.append(record)
                timing.write_records(out, records, environment)
            del reference
    print(f"wrote {out}")
    columns = ["seq_len", "method", "chunk_tokens", "time_ms", "time_per_chunk_ms"]
    columns += ["peak_memory_gib", "delta_nll_vs_whole", "block_agreement", "density"]
    timing.print_table(records, columns)
    return records


if __name__ == "__main__":
    main()
    sys.exit(0)
