#!/usr/bin/env python
"""Accuracy evaluation of sparse prefill against dense: perplexity, fidelity and retrieval.

One command runs every unfinished cell (results are cached unit by unit in --results-dir and
skipped on a rerun), writes `summary.json` there, and regenerates the markdown report and its
figures. Examples:

    # everything, with the defaults (both models, all tasks, all methods, default variant)
    python scripts/evaluate.py
    # one of the H200 runs behind docs/evaluation_results.md (its provenance table has all)
    python scripts/evaluate.py --results-dir benchmarks/results/accuracy \
        --models qwen2.5-coder-0.5b-instruct --tasks passkey niah_multikey_1 vt \
        --retrieval-lengths 8K 32K --samples 20
    # a quick end-to-end check (a temporary results directory, a few minutes on a CPU)
    python scripts/evaluate.py --smoke
    # only rebuild summary, tables and plots from what is on disk
    python scripts/evaluate.py --report-only

Every option is checked before anything is loaded or logged: a bad one ends the run with one
line on stderr, and `runs.jsonl` in the results directory records only valid runs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tqdm.auto import tqdm  # noqa: E402

from evaluation.harness.settings import DEFAULT_METHODS, parse_variant  # noqa: E402
from evaluation.harness.store import TEXT, ResultStore  # noqa: E402

SMOLLM2 = "smollm2-135m-instruct"
QWEN = "qwen2.5-coder-0.5b-instruct"
DEFAULT_TASKS = (
    TEXT,
    "passkey",
    "niah_single_1",
    "niah_single_2",
    "niah_multikey_1",
    "niah_multivalue",
    "niah_multiquery",
    "vt",
)
# Where each model is informative (docs/evaluation.md: retrieval only where dense succeeds).
DEFAULT_TEXT_LENGTHS = {SMOLLM2: (1024, 2048, 4096, 8192), QWEN: (4096, 8192, 16384, 32768)}
DEFAULT_RETRIEVAL_LENGTHS = {SMOLLM2: (1024,), QWEN: (4096, 8192, 16384, 32768)}
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "accuracy"


def parse_length(text: str) -> int:
    """`1024`, `1K`, `1k`, `32K` -> tokens (K = 1024), at least 1."""
    match = re.fullmatch(r"(\d+)([kK]?)", text.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"not a length: {text!r} (e.g. 4096 or 4K)")
    return int(match.group(1)) * (1024 if match.group(2) else 1)


def parse_duration(text: str) -> float:
    """`5400`, `90m`, `1.5h`, `30s` -> seconds (more than 0)."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([smh]?)", text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90m)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def parse_samples(values: list[str]) -> dict[str, int]:
    """`50` or `passkey=50 vt=20` -> {task: n, "default": n}; ValueError on other spellings."""
    samples: dict[str, int] = {}
    for value in values:
        task, _, count = value.rpartition("=")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--samples {value!r}: write N or TASK=N with N >= 1")
        samples[task or "default"] = int(count)
    return samples


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=Path(__file__).name,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", default=[SMOLLM2, QWEN])
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=list(DEFAULT_TASKS),
        help=f"'{TEXT}' (perplexity + fidelity) and retrieval tasks",
    )
    parser.add_argument(
        "--lengths",
        nargs="+",
        type=parse_length,
        help="text and retrieval lengths for every model (overrides defaults)",
    )
    parser.add_argument("--text-lengths", nargs="+", type=parse_length)
    parser.add_argument("--retrieval-lengths", nargs="+", type=parse_length)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["default"],
        help="presets (default, small) or NAME=BASE,key=value,...",
    )
    parser.add_argument("--windows", type=int, default=8, help="text windows per length")
    parser.add_argument(
        "--samples",
        nargs="+",
        default=["100"],
        help="retrieval samples per cell: N, or task=N ... (default=N for the rest)",
    )
    parser.add_argument("--kl-positions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, help="cap on each task's generation budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="auto: bfloat16 on GPU/TPU, float32 on CPU",
    )
    parser.add_argument("--table", default="builtin", help="builtin, none, or a table JSON path")
    parser.add_argument(
        "--device-budget",
        type=parse_duration,
        help="stop starting new units after this long (e.g. 90m); rerun resumes",
    )
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "evaluation_results.md")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument("--no-report", action="store_true", help="run only")
    parser.add_argument("--report-only", action="store_true", help="summarize what is on disk")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="SmolLM2, 1K text + passkey, dense and flexprefill (small variant), "
        "1 window and 2 samples, in a temporary results directory",
    )
    return parser


def apply_smoke(args: argparse.Namespace) -> None:
    args.models = [SMOLLM2]
    args.tasks = [TEXT, "passkey"]
    args.lengths = [1024]
    args.methods = ["dense", "flexprefill"]
    args.variants = ["small"]
    args.windows = 1
    args.samples = ["2"]
    args.max_new_tokens = args.max_new_tokens or 16
    if args.results_dir == DEFAULT_RESULTS:
        args.results_dir = Path(tempfile.mkdtemp(prefix="evaluate-smoke-"))
    args.no_report = True


def lengths_per_model(args, fixed, per_model_arg, defaults) -> dict[str, tuple[int, ...]]:
    chosen = per_model_arg or fixed
    return {m: tuple(chosen) if chosen else defaults.get(m, (1024,)) for m in args.models}


def build_options(args: argparse.Namespace):
    """The run's EvalOptions; ValueError naming the option when one is wrong."""
    from evaluation.harness.model_runs import TINY_MODEL
    from evaluation.harness.options import EvalOptions
    from models.fetch import BUILTIN_MODELS
    from sharedsparse_jax.config import METHODS

    known_models = [*BUILTIN_MODELS, TINY_MODEL]
    for name in args.models:
        if name not in known_models:
            raise ValueError(f"--models {name}: unknown model; known: {', '.join(known_models)}")
    from evaluation.tasks import TASKS

    for task in args.tasks:
        if task != TEXT and task not in TASKS:
            known = ", ".join([TEXT, *sorted(TASKS)])
            raise ValueError(f"--tasks {task}: unknown task; known: {known}")
    for option, value in (
        ("--windows", args.windows),
        ("--kl-positions", args.kl_positions),
        ("--max-new-tokens", 1 if args.max_new_tokens is None else args.max_new_tokens),
    ):
        if value < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")
    for method in args.methods:
        if method not in METHODS:
            raise ValueError(f"--methods {method}: unknown method; known: {', '.join(METHODS)}")
    variants = []
    for spec in args.variants:
        try:
            variants.append(parse_variant(spec))
        except ValueError as error:
            raise ValueError(f"--variants: {error}") from error
    samples = parse_samples(args.samples)
    for task in samples:
        if task != "default" and task not in args.tasks:
            raise ValueError(f"--samples {task}=...: {task!r} is not among --tasks")
    if args.table not in ("builtin", "none") and not Path(args.table).is_file():
        raise ValueError(f"--table {args.table}: no such file (or builtin, none)")
    return EvalOptions(
        models=args.models,
        tasks=args.tasks,
        text_lengths=lengths_per_model(args, args.lengths, args.text_lengths, DEFAULT_TEXT_LENGTHS),
        retrieval_lengths=lengths_per_model(
            args, args.lengths, args.retrieval_lengths, DEFAULT_RETRIEVAL_LENGTHS
        ),
        methods=args.methods,
        variants=variants,
        windows=args.windows,
        samples=samples,
        kl_positions=args.kl_positions,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        dtype=args.dtype,
        table=args.table,
        device_budget_s=args.device_budget,
    )


def paths_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the output paths (None: nothing)."""
    if args.results_dir.exists() and not args.results_dir.is_dir():
        return f"--results-dir {args.results_dir} is a file; give a directory"
    if args.report_only and not args.results_dir.is_dir():
        return f"--report-only: {args.results_dir} holds no results"
    if not args.no_report:
        if args.report.is_dir():
            return f"--report {args.report} is a directory; give the path of a file to write"
        if args.figures.exists() and not args.figures.is_dir():
            return f"--figures {args.figures} is a file; give a directory"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke:
        apply_smoke(args)
    try:
        options = None if args.report_only else build_options(args)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    problem = paths_problem(args)
    if problem is not None:
        parser.exit(2, f"{parser.prog}: error: {problem}\n")
    store = ResultStore(args.results_dir)
    if options is not None:
        from evaluation.harness.environment import environment
        from evaluation.harness.run import run_evaluation

        env = environment()
        print(
            f"results: {args.results_dir}\nrunning on {env['device_kind']} ({env['cpu']}, "
            f"{env['cpu_count']} cores), commit {env['commit'][:10] if env['commit'] else '?'}"
            + (f", uncommitted changes in {len(env['dirty'])} files" if env["dirty"] else "")
        )
        store.log_run(
            {
                "environment": env,
                "argv": sys.argv[1:] if argv is None else argv,
                "variants": {
                    v.name: {"overrides": v.overrides, "description": v.description}
                    for v in options.variants
                },
            }
        )
        report = run_evaluation(
            options,
            store,
            progress=lambda total, desc: tqdm(
                total=total, desc=desc, unit="run", dynamic_ncols=True
            ),
            log=lambda message: tqdm.write(message),
        )
        for line in report.skipped:
            print(f"skipped: {line}")
        print(
            f"ran {report.units_run} units, {report.units_done_before} were already done, "
            f"{report.units_reused} reused (dense by construction, or SharePrefill without "
            "shared clusters = FlexPrefill), "
            f"{report.seconds / 60:.1f} min"
            + (
                " -- stopped by the device budget: rerun to continue"
                if report.stopped_by_budget
                else ""
            )
        )
    from evaluation.harness.aggregate import summarize_store

    summaries = summarize_store(store)
    (args.results_dir / "summary.json").write_text(json.dumps(summaries, indent=1) + "\n")
    print(f"wrote {args.results_dir / 'summary.json'} ({len(summaries)} cells)")
    if not args.no_report:
        from evaluation.harness.report import write_report

        notes = args.results_dir / "notes.md"  # hand-written context, kept across regenerations
        intro = notes.read_text() if notes.is_file() else ""
        written = write_report(store, summaries, args.report, args.figures, root=ROOT, intro=intro)
        for path in written:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
