"""End-to-end prefill latency: dense against SharePrefill (and baselines) on whole models.

    python -m benchmarks.prefill_latency                        # every case, on one GPU
    python -m benchmarks.prefill_latency --models llama8b       # a subset
    python -m benchmarks.prefill_latency --dry-run              # tiny lengths: a CPU smoke run
    python -m benchmarks.prefill_latency --models qwen --yarn-factor 4 --lengths 65536 131072

With `--mesh data=D,model=M` every case runs sharded over D x M devices (of one or several
processes: `--coordinator`, `--num-processes`, `--process-id`, or `--auto-distributed` on a
TPU pod): the parameters restored into their shards, attention inside shard_map, a batch of D
copies of the prompt. `--mesh data=1,model=1` times the sharded code path on one device.

Cases (`--models`, `--lengths`, `--methods` select subsets):
- smollm2: SmolLM2-135M-Instruct, every method, at 1K, 2K, 4K and 8K tokens;
- qwen: Qwen2.5-Coder-0.5B-Instruct, every method, at 4K, 8K, 16K and 32K;
- llama8b: a Llama-3.1-8B-shaped model with random bf16 weights (32 layers, D 4096, 32/8
  heads, head dim 128, FFN 14336, vocab 128256, llama3 RoPE), dense only, at 8K-128K: the
  end-to-end baseline sparse prefill has to beat.

`--yarn-factor F` extends the context of smollm2, qwen or a `--checkpoint` model F times with
YaRN (`models.config.extend_context`; qwen with 4 reaches 128K tokens); every record holds its
`yarn_factor` (null without), and records at different factors are kept apart.

Protocol: the prompt is a long text (Austen's novels from the cache, else Paul Graham's essays,
or `--text-file`) tokenized, repeated and cut to the target length; batch 1; logits of the
last position only. Per length: one warm-up call of each method (its compile time measured
separately, from JAX's compile events), then ten rounds of one timed call per method, each
waited for on the device, the order turning from round to round (`time_prefills`); median, min
and max milliseconds. SharePrefill and the other planned methods also record block density and
head counts. The planned methods run as shipped: below the crossover measured for the model on
this device (`benchmarks.crossover --write-tables`, in its sharing table; where none was, the
one measured on another GPU of the same maker) they run dense; each record's `dense_below` says
from which length they plan and `dense_below_measured_on` where that was measured. Records go to
`benchmarks/results/prefill_latency_<gpu>.json` (merged with the records of other cases already
there, and rewritten after every length) and a table is printed.

Nothing can be downloaded on the GPU machine: bring the built-in models' GGUF files
(`<cache>/gguf/*.gguf`, 98 MB and 491 MB; `--gguf PATH`, identified by their SHA-256) and a text
file (`--text-file`, plain text or RULER's essays JSON; `--export-text austen.txt` writes the
cached novels to one). Where the GGUF files cannot travel, `--random-weights` runs smollm2 and
qwen with random weights of their shapes (dense timings hold; SharePrefill's then plan random
attention and are marked `"weights": "random"`). Cases run per model can be joined afterwards
with `--merge a.json b.json --out all.json`; `--plot RESULTS FIGURE` draws time to first token
against length.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from benchmarks import timing
from models import (
    BUILTIN_MODELS,
    DenseAttention,
    ModelConfig,
    RopeConfig,
    Transformer,
    cache_root,
    distributed,
    load_builtin,
    prefill,
)
from models.checkpoint import read_config
from models.compile_time import compile_clock
from models.config import extend_context
from models.random_weights import random_model
from models.sharding import ShardedAttention, make_mesh, parse_mesh_shape
from models.sources import load_source, resolve_source, source_name
from sharedsparse_cli import flags
from sharedsparse_jax import tables
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import METHODS, SharePrefillConfig
from sharedsparse_jax.sharing import SharingTable
from sharedsparse_jax.stats import summarize_stats

RESULTS_DIR = Path(__file__).resolve().parent / "results"

SMOLLM2_135M = ModelConfig(
    model_type="llama",
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    head_dim=64,
    rms_norm_eps=1e-5,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
    rope=RopeConfig(theta=100000.0),
)
QWEN2_5_0_5B = ModelConfig(
    model_type="qwen2",
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_layers=24,
    num_heads=14,
    num_kv_heads=2,
    head_dim=64,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
    qkv_bias=True,
    rope=RopeConfig(theta=1000000.0),
)
LLAMA_8B = ModelConfig(
    model_type="llama",
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    rms_norm_eps=1e-5,
    max_position_embeddings=131072,
    rope=RopeConfig(
        rope_type="llama3",
        theta=500000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    ),
)
# The dry run's stand-in for LLAMA_8B: the same family and RoPE, a few million parameters.
LLAMA_8B_DRY = dataclasses.replace(
    LLAMA_8B, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=32, vocab_size=512,
)  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelCase:
    """One model of the benchmark.

    Attributes:
      name: the --models key (or the --checkpoint source's name).
      builtin: the built-in model whose weights it loads, or None (random weights only).
      source: a --checkpoint source (any supported checkpoint) to load instead, or None.
      config: the model's shape, for random weights (must match the built-in's), with its
        context extended when `yarn_factor` is set.
      lengths: prompt lengths in tokens.
      methods: prefill methods (`dense` is the model's dense attention).
      yarn_factor: the YaRN context extension its weights are loaded with, or None.
    """

    name: str
    builtin: str | None
    config: ModelConfig
    lengths: tuple[int, ...]
    methods: tuple[str, ...]
    source: str | None = None
    yarn_factor: float | None = None

    def extended(self, yarn_factor: float) -> ModelCase:
        """The case with its context extended `yarn_factor` times with YaRN (ValueError where
        its rope is already scaled)."""
        config = extend_context(self.config, yarn_factor)
        return dataclasses.replace(self, config=config, yarn_factor=yarn_factor)


CASES = {
    case.name: case
    for case in (
        ModelCase(
            name="smollm2",
            builtin="smollm2-135m-instruct",
            config=SMOLLM2_135M,
            lengths=(1024, 2048, 4096, 8192),
            methods=("dense", "shareprefill", "flexprefill", "vertical_slash", "streaming"),
        ),
        ModelCase(
            name="qwen",
            builtin="qwen2.5-coder-0.5b-instruct",
            config=QWEN2_5_0_5B,
            lengths=(4096, 8192, 16384, 32768),
            methods=("dense", "shareprefill", "flexprefill", "vertical_slash", "streaming"),
        ),
        ModelCase(
            name="llama8b",
            builtin=None,
            config=LLAMA_8B,
            lengths=(8192, 16384, 32768, 65536, 131072),
            methods=("dense",),
        ),
    )
}
DRY_RUN_LENGTHS = (256, 384)
# Planner knobs of the dry run, so that its short prompts are planned sparsely.
DRY_RUN_PLANNER = {"block_size": 64, "dense_below": 128, "min_budget": 64}


def install_gguf(path: Path) -> str:
    """Puts a carried GGUF file into the cache as the built-in model whose SHA-256 it has.

    Args:
      path: a GGUF file of one of `models.BUILTIN_MODELS`.

    Returns:
      The built-in model's name.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    by_hash = {model.sha256: name for name, model in BUILTIN_MODELS.items()}
    name = by_hash.get(digest.hexdigest())
    if name is None:
        raise SystemExit(
            f"--gguf {path}: its SHA-256 {digest.hexdigest()} is not that of a built-in model"
            f" ({', '.join(BUILTIN_MODELS)})"
        )
    target = cache_root() / "gguf" / f"{name}.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        shutil.copyfile(path, partial)
        partial.rename(target)
    return name


def load_text(text_file: Path | None) -> tuple[str, str]:
    """The benchmark's long text and where it came from.

    Args:
      text_file: plain text, or a JSON object with a `text` field (RULER's essays file); None
        reads Austen's novels from the cache, else the essays (no download).

    Returns:
      (text, source description).
    """
    from evaluation import texts

    if text_file is not None:
        if text_file.suffix == ".json":
            return texts.read_essays_json(text_file), str(text_file)
        return text_file.read_text(), str(text_file)
    try:
        novels = texts.load_austen_novels(download=False)
        return "\n\n".join(novels.values()), "Austen's six novels (cache)"
    except FileNotFoundError:
        pass
    try:
        return texts.load_paul_graham_essays(download=False), "Paul Graham's essays (cache)"
    except FileNotFoundError as error:
        raise SystemExit(
            "no text in the cache (Austen novels or Paul Graham essays): pass --text-file"
        ) from error


def prompt_tokens(token_ids: Sequence[int], length: int) -> np.ndarray:
    """int32[length]: the text's tokens repeated and cut to `length`."""
    ids = np.asarray(token_ids, np.int32)
    return np.tile(ids, -(-length // ids.size))[:length]


def shipped_planner(
    planner: dict[str, Any], table: SharingTable | None, device_kind: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The planner knobs as shipped: `planner` with `dense_below` set to the crossover measured
    for the model on this device (`SharingTable.measured_dense_below`), and that crossover's
    entry (None where none was measured: `planner` unchanged)."""
    crossover = None if table is None else table.measured_dense_below(device_kind)
    if crossover is None:
        return planner, None
    return planner | {"dense_below": crossover["tokens"]}, crossover


def make_attention(
    method: str, planner: dict[str, Any], table: SharingTable | None, args, mesh=None
):
    """DenseAttention for `dense`, else SharePrefillAttention with the given planner knobs;
    with a mesh, either one inside shard_map (heads over "model", batch over "data")."""
    if method == "dense":
        attention = DenseAttention()
    else:
        implementation = args.implementation.split(",") if args.implementation else None
        attention = SharePrefillAttention(
            SharePrefillConfig(method=method, **planner),
            table if method == "shareprefill" else None,
            implementation=implementation,
            interpret=args.interpret,
            head_axis=None if mesh is None else "model",
        )
    return attention if mesh is None else ShardedAttention(attention, mesh)


def time_prefill(model: Transformer, tokens: np.ndarray, attention: Any, runs: int) -> dict:
    """`time_prefills` of one attention; a failure raises."""
    (record,) = time_prefills(model, tokens, [attention], runs, catch=False)
    return record


def time_prefills(
    model: Transformer,
    tokens: np.ndarray,
    attentions: Sequence[Any],
    runs: int,
    *,
    catch: bool = True,
) -> list[dict]:
    """Each attention's prefill of one prompt: a warm-up call each (its compile time measured
    apart), then `runs` rounds of one timed call per attention (`timing.time_rounds`: no
    attention always first, so the drift of a run falls on all alike).

    Args:
      model: the decoder.
      tokens: int32[T] one prompt, or [B, T] a batch.
      attentions: the prefill attentions to time side by side.
      runs: timed rounds (>= 1).
      catch: an attention whose warm-up fails gets {"error": ...} and the others go on;
        False: it raises.

    Returns:
      One record per attention: warmup_s, compile_s, runs, median_ms / min_ms / max_ms of its
      calls (each waited for on the device), and the stats summary of its warm-up call when it
      returns planner stats.
    """
    prompt = np.atleast_2d(tokens)
    records: list[dict] = []
    calls = []
    for attention in attentions:
        try:
            with compile_clock() as compiled:
                start = time.perf_counter()
                result = prefill(model, prompt, attention=attention)
                jax.block_until_ready(result)
                warmup_s = time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 (an OOM must not lose the other attentions)
            if not catch:
                raise
            records.append({"error": f"{type(error).__name__}: {str(error)[:400]}"})
            continue
        record = {"warmup_s": warmup_s, "compile_s": compiled[0], "runs": runs}
        if "density" in result.stats:
            record |= summarize_stats(result.stats)
        del result
        records.append(record)
        calls.append((record, functools.partial(prefill, model, prompt, attention=attention)))
    if calls:
        rounds = timing.time_rounds(
            [call for _, call in calls], runs, warmup=0, min_batch_seconds=0
        )
        for column, (record, _) in enumerate(calls):
            samples = [row[column] for row in rounds]
            record |= {
                "median_ms": 1e3 * float(np.median(samples)),
                "min_ms": 1e3 * float(np.min(samples)),
                "max_ms": 1e3 * float(np.max(samples)),
            }
    return records


def load_case_model(
    case: ModelCase, dtype: jnp.dtype, *, random_weights: bool, dry_run: bool, mesh=None
):
    """(model, tokenizer or None, sharing table or None, description) for one case; with a
    mesh, the parameters sharded over it."""
    if case.source is not None:
        loaded, name = load_source(
            case.source, dtype=dtype, mesh=mesh, yarn_factor=case.yarn_factor
        )
        config = loaded.config
        table = tables.resolve_table(
            "builtin", name, num_layers=config.num_layers, num_heads=config.num_heads
        ).table
        return loaded.model, loaded.tokenizer, table, f"{case.source}, {_describe(config)}"
    if case.builtin is not None and not random_weights:
        loaded = load_builtin(case.builtin, dtype=dtype, mesh=mesh, yarn_factor=case.yarn_factor)
        config = loaded.config
        table = tables.resolve_table(
            "builtin", case.builtin, num_layers=config.num_layers, num_heads=config.num_heads
        ).table
        return loaded.model, loaded.tokenizer, table, f"{case.builtin}, {_describe(config)}"
    config = LLAMA_8B_DRY if dry_run and case.builtin is None else case.config
    model = random_model(config, dtype=dtype, mesh=mesh)
    return model, None, None, f"random weights, {_describe(config)}"


def _describe(config: ModelConfig) -> str:
    return (
        f"{config.num_layers} layers, D {config.hidden_size}, {config.num_heads}/"
        f"{config.num_kv_heads} heads x {config.head_dim}, FFN {config.intermediate_size}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=tuple(CASES), default=tuple(CASES))
    parser.add_argument(
        "--checkpoint",
        help="time this model instead of --models: a built-in name, a converted directory, an HF"
        " directory or a GGUF file (converted once into the cache); needs --lengths",
    )
    parser.add_argument(
        "--lengths", nargs="+", type=int, help="prompt lengths (default: each model's own)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        help="keep only these of each model's methods (default: all of them)",
    )
    parser.add_argument("--runs", type=int, default=10, help="timed runs per case (>= 1)")
    flags.add_yarn_factor(parser)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument(
        "--implementation", help="block-sparse kernel implementation(s), comma-separated"
    )
    parser.add_argument("--interpret", action="store_true", help="Pallas interpret mode")
    parser.add_argument(
        "--gguf",
        type=Path,
        action="append",
        default=[],
        help="a carried built-in GGUF file to install in the cache (repeatable)",
    )
    parser.add_argument("--text-file", type=Path, help="the long text (plain or essays JSON)")
    parser.add_argument(
        "--export-text",
        type=Path,
        help="write the text the benchmark would use (from the cache) to this plain-text file and"
        " exit: the file to carry to a machine without the cache",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights of the same shapes for smollm2 and qwen too (when their GGUF files"
        " cannot be brought along); SharePrefill's density then reflects random attention",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="merge these result files into --out (later files win) and print the table; runs"
        " nothing",
    )
    parser.add_argument(
        "--plot",
        nargs=2,
        type=Path,
        metavar=("RESULTS", "FIGURE"),
        help="plot time to first token against length from a results file and exit",
    )
    parser.add_argument("--out", type=Path, help="results JSON (default: results/...<gpu>.json)")
    parser.add_argument(
        "--fresh", action="store_true", help="overwrite --out instead of merging into it"
    )
    distributed.add_arguments(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help=f"tiny lengths {DRY_RUN_LENGTHS}, 2 runs, planner {DRY_RUN_PLANNER}, a tiny"
        " llama8b stand-in, float32: checks the script on a CPU",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.runs < 1:
        raise SystemExit(f"--runs must be >= 1, got {args.runs}")
    if problem := flags.yarn_factor_problem(args.yarn_factor):
        raise SystemExit(problem)
    mesh, batch = None, 1
    if args.mesh is not None:
        distributed.initialize(distributed.from_arguments(args, os.environ))
        shape = parse_mesh_shape(args.mesh)
        mesh, batch = make_mesh(shape), shape["data"]
    if args.export_text is not None:
        text, source = load_text(args.text_file)
        args.export_text.write_text(text)
        print(f"wrote {source} ({len(text):,} characters) to {args.export_text}")
        return []
    if args.plot:
        plot(*args.plot)
        print(f"wrote {args.plot[1]}")
        return []
    if args.merge:
        out = args.out or RESULTS_DIR / "prefill_latency_merged.json"
        records = timing.merge_result_files(args.merge, out, _case_key)
        report(records)
        return records
    for path in args.gguf:
        print(f"installed {path} as {install_gguf(path)}")
    dtype = jnp.dtype("float32" if args.dry_run else args.dtype)
    runs = min(args.runs, 2) if args.dry_run else args.runs
    planner = DRY_RUN_PLANNER if args.dry_run else {}
    default_out = f"prefill_latency_{timing.gpu_tag()}{'_dryrun' if args.dry_run else ''}.json"
    out = args.out or RESULTS_DIR / default_out
    cases = [CASES[name] for name in args.models]
    if args.checkpoint is not None:
        if not args.lengths:
            raise SystemExit("--checkpoint needs --lengths")
        config = read_config(resolve_source(args.checkpoint))  # converted once, if needed
        cases = [
            ModelCase(
                name=source_name(args.checkpoint),
                builtin=None,
                config=config,
                lengths=tuple(args.lengths),
                methods=METHODS,
                source=args.checkpoint,
            )
        ]
    if args.yarn_factor is not None:
        extended = []
        for case in cases:
            try:
                extended.append(case.extended(args.yarn_factor))
            except ValueError as error:
                raise SystemExit(f"--yarn-factor: {case.name}: {error}") from None
        cases = extended
    needs_text = args.text_file is not None or any(
        case.source is not None or (case.builtin is not None and not args.random_weights)
        for case in cases
    )
    text, text_source = load_text(args.text_file) if needs_text else (None, None)

    previous = [] if args.fresh or not out.is_file() else json.loads(out.read_text())["records"]
    environment = timing.environment() | {
        "text": text_source,
        "dry_run": args.dry_run,
        "planner_overrides": planner,
    }
    records: list[dict] = []
    device_kind = jax.devices()[0].device_kind

    def save() -> None:
        timing.write_records(out, timing.merge_records(previous, records, _case_key), environment)

    for case in cases:
        lengths = args.lengths or (DRY_RUN_LENGTHS if args.dry_run else case.lengths)
        lengths = [n for n in lengths if n <= case.config.max_position_embeddings]
        methods = [m for m in case.methods if args.methods is None or m in args.methods]
        base = {
            "model": case.name,
            "yarn_factor": case.yarn_factor,
            "dtype": str(dtype),
            "mesh": args.mesh,
            "batch": batch,
        }
        try:
            model, tokenizer, table, description = load_case_model(
                case, dtype, random_weights=args.random_weights, dry_run=args.dry_run, mesh=mesh
            )
        except Exception as error:  # noqa: BLE001 (the other models can still run)
            message = f"loading the model: {type(error).__name__}: {str(error)[:400]}"
            records += [
                base | {"method": m, "seq_len": n, "error": message}
                for n in lengths
                for m in methods
            ]
            save()
            continue
        case_planner, crossover = shipped_planner(planner, table, device_kind)
        base |= {
            "description": description,
            "weights": "random" if tokenizer is None else "checkpoint",
            "num_shared_clusters": 0 if table is None else table.num_shared,
            "dense_below": case_planner.get("dense_below", SharePrefillConfig().dense_below),
            "dense_below_measured_on": None if crossover is None else crossover["device"],
        }
        if tokenizer is not None:
            # Enough of the text for the longest prompt (about 4 characters per token).
            token_ids = tokenizer.encode(text[: 5 * max(lengths, default=0) + 1000])
        else:  # random weights: any ids do; the text's bytes keep them deterministic
            token_ids = list((text or "SharePrefill " * 64).encode("utf-8"))
        for length in tqdm(lengths, desc=case.name, unit="length", leave=False):
            prompt = np.tile(prompt_tokens(token_ids, length), (batch, 1))
            attentions = [make_attention(m, case_planner, table, args, mesh) for m in methods]
            try:
                timed = time_prefills(model, prompt, attentions, runs)
            except Exception as error:  # noqa: BLE001 (an OOM must not lose the other cases)
                timed = [{"error": f"{type(error).__name__}: {str(error)[:400]}"}] * len(methods)
            for method, result in zip(methods, timed, strict=True):
                record = base | {"method": method, "seq_len": length}
                record["table"] = "shipped" if method == "shareprefill" and table else None
                records.append(record | result)
            save()
        del model
        gc.collect()

    print(f"wrote {out}")
    report(records)
    return records


def _case_key(record: dict) -> tuple:
    """What a record measures: model (at its YaRN factor), method and length."""
    return record["model"], record.get("yarn_factor"), record["method"], record["seq_len"]


def plot(results: Path, figure: Path) -> None:
    """Time to first token against length, one panel per model with real weights, one line per
    method; lengths reached with YaRN are marked (hollow points, shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(results.read_text())
    records = [
        r
        for r in data["records"]
        if r.get("weights") == "checkpoint" and r.get("median_ms") is not None
    ]
    models = list(dict.fromkeys(r["model"] for r in records))
    if not models:
        raise SystemExit(f"{results}: no records with real weights to plot")
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rows = [r for r in records if r["model"] == model]
        for index, method in enumerate(dict.fromkeys(("dense", *METHODS))):
            points = sorted((r for r in rows if r["method"] == method), key=lambda r: r["seq_len"])
            if not points:
                continue
            style = {"color": "k", "ls": "--"} if method == "dense" else {"color": f"C{index}"}
            xs = [r["seq_len"] for r in points]
            ax.plot(xs, [r["median_ms"] for r in points], label=method, **style)
            for r in points:
                extended = r.get("yarn_factor") is not None
                ax.plot(
                    r["seq_len"],
                    r["median_ms"],
                    "o",
                    color=style["color"],
                    markerfacecolor="none" if extended else style["color"],
                )
        extended = sorted(r["seq_len"] for r in rows if r.get("yarn_factor") is not None)
        if extended:
            factor = next(r["yarn_factor"] for r in rows if r.get("yarn_factor") is not None)
            ax.axvspan(extended[0] / 1.3, extended[-1] * 1.3, color="0.9", zorder=0)
            ax.text(
                extended[0] / 1.25,
                0.03,
                f"YaRN x{factor:g}",
                transform=ax.get_xaxis_transform(),
                fontsize=8,
            )
        ticks = sorted({r["seq_len"] for r in rows})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ticks, [f"{s // 1024}K" for s in ticks])
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel("prompt length")
        ax.set_ylabel("time to first token (ms, median)")
        ax.set_title(model)
        ax.legend(fontsize=8)
    env = data["environment"]
    fig.suptitle(f"End-to-end prefill as shipped, {env.get('device_kind', '?')}", fontsize=10)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=130)
    plt.close(fig)


def report(records: list[dict]) -> None:
    """The summary table, then the failed cases."""
    columns = ["model", "yarn_factor", "weights", "method", "seq_len", "median_ms", "min_ms"]
    columns += ["max_ms", "compile_s", "density", "num_pivot", "num_shared", "num_query_aware"]
    columns += ["num_vertical_slash"]
    rows = [{c: ("-" if r.get(c) is None else r[c]) for c in columns} for r in records]
    timing.print_table(rows, columns)
    for r in records:
        if "error" in r:
            print(f"FAILED {r['model']} {r['method']} {r['seq_len']}: {r['error']}")


if __name__ == "__main__":
    sys.exit(1 if any("error" in record for record in main()) else 0)
