"""Accuracy evaluation of sparse prefill against dense: perplexity, fidelity and retrieval.

One command runs every unfinished cell (results are cached unit by unit in --out-dir and
skipped on a rerun), writes `summary.json` there, and regenerates the markdown report and its
figures (by default `report.md` and `figures/` in --out-dir). Examples:

    # everything, with the defaults (both built-in models, all tasks, all methods)
    sharedsparse-evaluate --out-dir eval/
    # your own checkpoint (HF directory or GGUF file, converted once), two methods
    sharedsparse-evaluate --out-dir eval/ --checkpoint path/to/model --method flexprefill \\
        shareprefill --tasks text passkey --lengths 8K 16K
    # Qwen beyond its trained 32K: YaRN factor 4 (results named qwen2.5-coder-0.5b-instruct+yarn4)
    sharedsparse-evaluate --out-dir eval/ --checkpoint qwen2.5-coder-0.5b-instruct \\
        --yarn-factor 4 --tasks text --lengths 64K 128K
    # a quick end-to-end check (a temporary results directory, a few minutes on a CPU)
    sharedsparse-evaluate --smoke
    # only rebuild summary, tables and plots from what is on disk
    sharedsparse-evaluate --out-dir eval/ --report-only

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

from tqdm.auto import tqdm

from evaluation.harness.settings import DEFAULT_METHODS, parse_variant
from evaluation.harness.store import TEXT, ResultStore
from sharedsparse_cli import flags
from sharedsparse_jax.config import METHODS

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
# Lengths of a model that is neither built-in model (clipped to its context).
OTHER_LENGTHS = (4096, 8192, 16384, 32768)


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
    parser = flags.new_parser("evaluate", __doc__)
    flags.add_checkpoint(parser, many=True, default=None)
    parser.set_defaults(checkpoint=[SMOLLM2, QWEN])
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=list(DEFAULT_TASKS),
        help=f"'{TEXT}' (perplexity + fidelity) and retrieval tasks (default: all)",
    )
    parser.add_argument(
        "--lengths",
        nargs="+",
        type=parse_length,
        help="text and retrieval lengths for every model (overrides defaults)",
    )
    parser.add_argument(
        "--text-lengths",
        nargs="+",
        type=parse_length,
        help="text (perplexity) lengths for every model (default: per model)",
    )
    parser.add_argument(
        "--retrieval-lengths",
        nargs="+",
        type=parse_length,
        help="retrieval lengths for every model (default: per model)",
    )
    flags.add_method(
        parser,
        choices=METHODS,
        default=list(DEFAULT_METHODS),
        what="; dense always runs, as every comparison's reference",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["default"],
        help="presets (default, small) or NAME=BASE,key=value,... (default: default)",
    )
    parser.add_argument(
        "--windows", type=int, default=8, help="text windows per length (default: %(default)s)"
    )
    parser.add_argument(
        "--samples",
        nargs="+",
        default=["100"],
        help="retrieval samples per cell: N, or task=N ... (default=N for the rest; default: 100)",
    )
    parser.add_argument(
        "--kl-positions",
        type=int,
        default=64,
        help="last positions of each window whose next-token KL to dense is measured"
        " (default: %(default)s)",
    )
    parser.add_argument("--max-new-tokens", type=int, help="cap on each task's generation budget")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the windows and samples (default: 0)"
    )
    flags.add_dtype(parser)
    flags.add_table(parser)
    flags.add_yarn_factor(parser)
    parser.add_argument(
        "--device-budget",
        type=parse_duration,
        help="stop starting new units after this long (e.g. 90m); rerun resumes",
    )
    flags.add_out_dir(
        parser,
        required=False,
        what="the results (resumable), summary.json and, unless --report / --figures say"
        " otherwise, report.md and figures/ (required unless --smoke)",
    )
    parser.add_argument(
        "--report", type=Path, help="the markdown report to write (default: <out-dir>/report.md)"
    )
    parser.add_argument(
        "--figures",
        type=Path,
        help="directory for the report's figures (default: <out-dir>/figures)",
    )
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
    args.checkpoint = [SMOLLM2]
    args.tasks = [TEXT, "passkey"]
    args.lengths = [1024]
    args.method = ["dense", "flexprefill"]
    args.variants = ["small"]
    args.windows = 1
    args.samples = ["2"]
    args.max_new_tokens = args.max_new_tokens or 16
    if args.out_dir is None:
        args.out_dir = Path(tempfile.mkdtemp(prefix="evaluate-smoke-"))
    args.no_report = True


def lengths_per_model(args, fixed, per_model_arg, defaults) -> dict[str, tuple[int, ...]]:
    """Lengths per --checkpoint source: given ones, else the built-in's defaults, else
    OTHER_LENGTHS (tiny-random: 1024)."""
    chosen = per_model_arg or fixed
    if chosen:
        return {m: tuple(chosen) for m in args.checkpoint}
    return {
        m: defaults.get(m, (1024,) if m == "tiny-random" else OTHER_LENGTHS)
        for m in args.checkpoint
    }


def build_options(args: argparse.Namespace):
    """The run's EvalOptions; ValueError naming the option when one is wrong."""
    from evaluation.harness.model_runs import TINY_MODEL
    from evaluation.harness.options import EvalOptions
    from evaluation.tasks import TASKS

    problem = flags.checkpoint_problem(
        [m for m in args.checkpoint if m != TINY_MODEL]
    ) or flags.method_problem(args.method, METHODS)
    if problem is not None:
        raise ValueError(problem)

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
    problem = flags.table_problem(args.table) or flags.yarn_factor_problem(args.yarn_factor)
    if problem is not None:
        raise ValueError(problem)
    return EvalOptions(
        models=args.checkpoint,
        tasks=args.tasks,
        text_lengths=lengths_per_model(args, args.lengths, args.text_lengths, DEFAULT_TEXT_LENGTHS),
        retrieval_lengths=lengths_per_model(
            args, args.lengths, args.retrieval_lengths, DEFAULT_RETRIEVAL_LENGTHS
        ),
        methods=args.method,
        variants=variants,
        windows=args.windows,
        samples=samples,
        kl_positions=args.kl_positions,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        dtype=args.dtype,
        table=args.table,
        yarn_factor=args.yarn_factor,
        device_budget_s=args.device_budget,
    )


def paths_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the output paths (None: nothing); fills in --report and --figures."""
    if args.out_dir is None:
        return "--out-dir is required: the directory for the results and the report"
    problem = flags.out_dir_problem(args.out_dir)
    if problem is not None:
        return problem
    if args.report_only and not args.out_dir.is_dir():
        return f"--report-only: {args.out_dir} holds no results"
    args.report = args.report or args.out_dir / "report.md"
    args.figures = args.figures or args.out_dir / "figures"
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
    problem = paths_problem(args)
    if problem is not None:
        flags.fail(parser, problem)
    try:
        options = None if args.report_only else build_options(args)
    except ValueError as error:
        flags.fail(parser, str(error))
    store = ResultStore(args.out_dir)
    if options is not None:
        from evaluation.harness.environment import environment
        from evaluation.harness.run import run_evaluation

        env = environment()
        print(
            f"results: {args.out_dir}\nrunning on {env['device_kind']} ({env['cpu']}, "
            f"{env['cpu_count']} cores), commit {env['commit'][:10] if env['commit'] else '?'}"
            + (f", uncommitted changes in {len(env['dirty'])} files" if env["dirty"] else "")
        )
        store.log_run(
            {
                "environment": env,
                "program": parser.prog,
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
    (args.out_dir / "summary.json").write_text(json.dumps(summaries, indent=1) + "\n")
    print(f"wrote {args.out_dir / 'summary.json'} ({len(summaries)} cells)")
    if not args.no_report:
        from evaluation.harness.report import write_report

        notes = args.out_dir / "notes.md"  # hand-written context, kept across regenerations
        intro = notes.read_text() if notes.is_file() else ""
        written = write_report(
            store, summaries, args.report, args.figures, root=Path.cwd(), intro=intro
        )
        for path in written:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
