"""The paper's ablation of pattern sharing, and accuracy-versus-density curves of every method.

    python -m benchmarks.sharing_ablation                       # both real models, on one GPU
    python -m benchmarks.sharing_ablation --models qwen --lengths 32768
    python -m benchmarks.sharing_ablation --dry-run             # tiny random model: a CPU check
    python -m benchmarks.sharing_ablation --plot RESULTS FIGURE # the curves as a figure
    python -m benchmarks.sharing_ablation --merge A.json B.json --out ALL.json  # B's cases win

For each (model, length) cell every setting below runs on the same Austen windows and, where
dense attention solves it, the same passkey prompts:
- SharePrefill `full` (the shipped table, default config), `no_sharing` (no head shares: by
  construction FlexPrefill's `full` run, recorded as a copy), `no_exclusion` (tau_fb = 1: the
  highly-sparse-head exclusion off), `tau_sim_<x>` for the other similarity bounds, and
  `gamma_<x>` for the other coverage targets;
- FlexPrefill and vertical-slash `full` and `gamma_<x>`.
Per setting: delta_nll (mean next-token NLL minus dense's, nats per token, over every window's
tokens), kl (KL(dense || method) of the next-token distribution, mean over each window's last
`--kl-positions` positions), retrieval_accuracy (passkey, null where dense fails or the model
has no retrieval cell), density (share of causal blocks computed), num_shared ((layer, head)
pairs that took a pivot's pattern), the sharing summary (why shared-cluster heads did or did
not share), and prefill_ms (median of timed prefills of the first window, last-position logits,
the cell's dense time beside it). Records go to `benchmarks/results/sharing_ablation_<gpu>.json`,
rewritten after every setting.

Nothing is downloaded on a GPU machine: the built-in models' GGUF files must be in the cache
(`benchmarks.prefill_latency --gguf` installs carried ones), and the texts too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from benchmarks import timing
from benchmarks.prefill_latency import time_prefill
from evaluation import metrics, texts
from evaluation.harness.model_runs import (
    EvalModel,
    answer_prompt,
    load_eval_model,
    score_window,
    tiny_random_model,
)
from evaluation.tasks.registry import generate_samples, get_task
from evaluation.tasks.scoring import score_sample
from evaluation.windows import interleaved_windows, iter_window_tokens, tokenize_documents
from models.attention import DenseAttention
from sharedsparse_jax.attention import SharePrefillAttention
from sharedsparse_jax.config import SharePrefillConfig

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# --models key -> (built-in model, lengths, whether dense solves passkey there).
CELLS = {
    "qwen": ("qwen2.5-coder-0.5b-instruct", (16384, 32768), True),
    "smollm2": ("smollm2-135m-instruct", (8192,), False),
}
GAMMAS = (0.9, 0.98, 0.99)  # beside the default 0.95
TAU_SIMS = (0.3, 0.7)  # beside the default 0.5
SUMMARY_COLUMNS = ["model", "seq_len", "method", "variant", "density", "delta_nll", "kl"]
SUMMARY_COLUMNS += ["retrieval_accuracy", "prefill_ms", "speedup", "num_shared"]
# SharePrefill's variants off its gamma curve, marked apart in the figure.
ABLATION_VARIANTS = ("no_exclusion", *(f"tau_sim_{t}" for t in TAU_SIMS))
DRY_RUN = {"lengths": (512,), "planner": {"block_size": 64, "min_budget": 64, "dense_below": 128}}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One (method, variant): its config overrides, or the setting whose run it repeats."""

    method: str
    variant: str
    overrides: dict[str, Any]
    same_as: tuple[str, str] | None = None


def settings() -> list[Setting]:
    """Every setting of a cell, dense first, copies after what they copy."""
    out = [Setting("dense", "full", {})]
    for method in ("flexprefill", "vertical_slash", "shareprefill"):
        out.append(Setting(method, "full", {}))
        out += [Setting(method, f"gamma_{g}", {"gamma": g}) for g in GAMMAS]
    out.append(Setting("shareprefill", "no_sharing", {}, same_as=("flexprefill", "full")))
    out.append(Setting("shareprefill", "no_exclusion", {"tau_fb": 1.0}))
    out += [Setting("shareprefill", f"tau_sim_{t}", {"tau_sim": t}) for t in TAU_SIMS]
    return out


def make_attention(setting: Setting, evaluated: EvalModel, planner: dict[str, Any]):
    if setting.method == "dense":
        return DenseAttention()
    config = SharePrefillConfig(method=setting.method, **(planner | setting.overrides))
    table = evaluated.table if setting.method == "shareprefill" else None
    return SharePrefillAttention(config, table)


def cell_windows(evaluated: EvalModel, length: int, count: int) -> list[np.ndarray]:
    """`count` Austen windows of `length` tokens, round-robin over the novels."""
    tokens = tokenize_documents(texts.load_austen_novels(), evaluated.encode)
    windows = interleaved_windows({n: len(t) for n, t in tokens.items()}, length, count)
    if len(windows) < count:
        raise SystemExit(f"Austen's novels hold {len(windows)} windows of {length}, not {count}")
    return [ids for _, ids in iter_window_tokens(tokens, windows)]


def run_setting(evaluated, attention, windows, passkeys, *, kl_positions, runs) -> dict:
    """Scores every window, answers every passkey and times the prefill of the first window."""
    scores = [score_window(evaluated, ids, attention, kl_positions=kl_positions) for ids in windows]
    record = {"scores": scores}
    if passkeys:
        answers = [
            answer_prompt(
                evaluated,
                evaluated.encode(sample.prompt),
                attention,
                max_new_tokens=sample.tokens_to_generate,
            )
            for sample in passkeys
        ]
        record["retrieval_scores"] = [
            score_sample(sample, answer.text)
            for sample, answer in zip(passkeys, answers, strict=True)
        ]
    record["timing"] = time_prefill(evaluated.model, windows[0], attention, runs)
    return record


def summarize(setting: Setting, run: dict, dense: dict) -> dict[str, Any]:
    """The record of one setting against the cell's dense run."""
    nll = np.concatenate([-s.log_likelihoods for s in run["scores"]])
    dense_nll = np.concatenate([-s.log_likelihoods for s in dense["scores"]])
    kl = np.concatenate(
        [
            metrics.kl_divergence(d.last_logits, s.last_logits)
            for d, s in zip(dense["scores"], run["scores"], strict=True)
        ]
    )
    timed = run["timing"]
    sharing = timed.get("sharing", {})
    record = {
        "method": setting.method,
        "variant": setting.variant,
        "overrides": setting.overrides,
        "density": timed.get("density", 1.0),
        "delta_nll": float(nll.mean() - dense_nll.mean()),
        "nll": float(nll.mean()),
        "kl": float(kl.mean()),
        "retrieval_accuracy": (
            float(np.mean(run["retrieval_scores"])) if "retrieval_scores" in run else None
        ),
        "prefill_ms": timed["median_ms"],
        "dense_prefill_ms": dense["timing"]["median_ms"],
        "speedup": dense["timing"]["median_ms"] / timed["median_ms"],
        "num_shared": sharing.get("shared", {}).get("count", 0),
        "sharing": sharing,
        "heads": {k[4:]: v for k, v in timed.items() if k.startswith("num_")},
        "compile_s": timed["compile_s"],
    }
    return record


def run_cell(evaluated, name, length, args, planner, has_retrieval, save) -> list[dict]:
    windows = cell_windows(evaluated, length, args.windows)
    passkeys = []
    if has_retrieval and args.retrieval_samples:
        passkeys = generate_samples(
            "passkey",
            length=evaluated.prompt_length(length, get_task("passkey").tokens_to_generate),
            encode=evaluated.encode,
            num_samples=args.retrieval_samples,
            prompt_format=evaluated.prompt_format,
        )
    base = {"model": name, "seq_len": length, "windows": len(windows), "passkeys": len(passkeys)}
    runs: dict[tuple[str, str], dict] = {}
    records = []
    chosen = [s for s in settings() if args.variants is None or s.variant in args.variants]
    for setting in tqdm(chosen, desc=f"{name} {length}", unit="setting", leave=False):
        key = (setting.method, setting.variant)
        if setting.same_as is not None:
            runs[key] = runs[setting.same_as]
        else:
            attention = make_attention(setting, evaluated, planner)
            runs[key] = run_setting(
                evaluated,
                attention,
                windows,
                passkeys,
                kl_positions=args.kl_positions,
                runs=args.runs,
            )
        record = base | summarize(setting, runs[key], runs[("dense", "full")])
        if setting.same_as is not None:
            record["same_as"] = "/".join(setting.same_as)
        if record["retrieval_accuracy"] is not None and runs[("dense", "full")].get(
            "retrieval_scores"
        ):
            dense_accuracy = float(np.mean(runs[("dense", "full")]["retrieval_scores"]))
            if dense_accuracy < 0.5:  # retrieval only where dense attention succeeds
                record["retrieval_accuracy"] = None
        records.append(record)
        save(records)
    return records


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=tuple(CELLS), default=tuple(CELLS))
    parser.add_argument("--lengths", nargs="+", type=int, help="default: each model's own")
    parser.add_argument("--windows", type=int, default=3, help="Austen windows per cell (>= 1)")
    parser.add_argument(
        "--retrieval-samples", type=int, default=8, help="passkey prompts per cell (0: none)"
    )
    parser.add_argument(
        "--kl-positions", type=int, default=256, help="last positions per window for KL (>= 1)"
    )
    parser.add_argument("--runs", type=int, default=10, help="timed prefills per setting (>= 1)")
    variants = sorted({s.variant for s in settings()})
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=variants,
        help="run only these variants (dense always runs; default: all)",
    )
    parser.add_argument("--out", type=Path, help="results JSON (default: results/...<gpu>.json)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help=f"the tiny random model at {DRY_RUN['lengths']} tokens with planner"
        f" {DRY_RUN['planner']}, 2 runs, 1 window: checks the script on a CPU",
    )
    parser.add_argument(
        "--plot", nargs=2, type=Path, metavar=("RESULTS", "FIGURE"), help="plot and exit"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="merge these result files into --out (a later file's (model, length, method,"
        " variant) replaces an earlier one's) and print the table; runs nothing",
    )
    args = parser.parse_args(argv)
    if args.variants is not None:
        args.variants = {"full", *args.variants}  # dense's own variant, and what copies copy
    for option in ("windows", "kl_positions", "runs"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1")
    if args.retrieval_samples < 0:
        parser.error("--retrieval-samples must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.plot:
        plot(*args.plot)
        return []
    if args.merge:
        out = args.out or RESULTS_DIR / "sharing_ablation_merged.json"
        records = timing.merge_result_files(args.merge, out, _case_key)
        timing.print_table(records, SUMMARY_COLUMNS)
        return records
    suffix = "_dryrun" if args.dry_run else ""
    out = args.out or RESULTS_DIR / f"sharing_ablation_{timing.gpu_tag()}{suffix}.json"
    environment = timing.environment() | {"dry_run": args.dry_run}
    done: list[dict] = []

    def save(cell_records: list[dict]) -> None:
        timing.write_records(out, done + cell_records, environment)

    for name in args.models:
        builtin, lengths, has_retrieval = CELLS[name]
        planner: dict[str, Any] = {}
        if args.dry_run:
            evaluated, lengths, planner = (
                tiny_random_model(),
                DRY_RUN["lengths"],
                DRY_RUN["planner"],
            )
            args.runs, args.windows, has_retrieval = 2, 1, False
        else:
            evaluated = load_eval_model(builtin)
            lengths = args.lengths or lengths
        environment[f"table_{name}"] = evaluated.table_source
        for length in lengths:
            done += run_cell(evaluated, name, length, args, planner, has_retrieval, save)
            save([])
        jax.clear_caches()
    print(f"wrote {out}")
    timing.print_table(done, SUMMARY_COLUMNS)
    return done


def _case_key(record: dict) -> tuple:
    """What a record measures: model, length, method and variant."""
    return record["model"], record["seq_len"], record["method"], record["variant"]


def plot(results: Path, figure: Path) -> None:
    """Accuracy (delta NLL, KL) against density per cell, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = json.loads(results.read_text())["records"]
    cells = sorted({(r["model"], r["seq_len"]) for r in records})
    fig, axes = plt.subplots(
        2, len(cells), figsize=(max(6.0, 4.8 * len(cells)), 7.5), squeeze=False
    )
    colors = {"shareprefill": "C0", "flexprefill": "C1", "vertical_slash": "C2"}
    for column, (model, length) in enumerate(cells):
        cell = [r for r in records if (r["model"], r["seq_len"]) == (model, length)]
        for row, key in enumerate(("delta_nll", "kl")):
            ax = axes[row, column]
            for method, color in colors.items():
                curve = sorted(
                    (r for r in cell if r["method"] == method and r["variant"].startswith("gamma"))
                    or [],
                    key=lambda r: r["density"],
                )
                full = [r for r in cell if r["method"] == method and r["variant"] == "full"]
                points = sorted(curve + full, key=lambda r: r["density"])
                ax.plot(
                    [r["density"] for r in points],
                    [r[key] for r in points],
                    "o-",
                    color=color,
                    label=method,
                )
            # Ablation variants, those at the same point (e.g. equal to `full`) labelled once.
            at_point: dict[tuple[float, float], list[str]] = {}
            for r in cell:
                if r["method"] == "shareprefill" and r["variant"] in ABLATION_VARIANTS:
                    at_point.setdefault((r["density"], r[key]), []).append(r["variant"])
            full = {
                (r["density"], r[key])
                for r in cell
                if (r["method"], r["variant"]) == ("shareprefill", "full")
            }
            for i, ((density, value), names) in enumerate(sorted(at_point.items())):
                label = " = ".join(names + (["full"] if (density, value) in full else []))
                ax.plot(density, value, "x", color="C0", markersize=8)
                ax.annotate(label, (density, value), xytext=(8, -12 - 12 * i),
                            textcoords="offset points", fontsize=7)  # fmt: skip
            ax.set_xlabel("block density")
            ax.set_ylabel("delta NLL (nats/token)" if key == "delta_nll" else "KL (nats)")
            ax.set_title(f"{model} at {length // 1024}K")
            ax.grid(alpha=0.3)
            if row == 0 and column == 0:
                ax.legend(fontsize=8)
    fig.suptitle(
        "Accuracy against density\ngamma swept (lines), SharePrefill ablation (x)", fontsize=10
    )
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    print(f"wrote {figure}")


if __name__ == "__main__":
    main()
    sys.exit(0)
