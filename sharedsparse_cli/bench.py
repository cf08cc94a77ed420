"""Run one of the measurement scripts of a source checkout: `sharedsparse-bench NAME [options]`.

    sharedsparse-bench attention --out attention.json      # in a clone of the repository
    sharedsparse-bench prefill_latency --help

The benchmarks are the GPU/TPU measurements behind docs/results.md (`benchmarks/` in the
repository, with their raw results under benchmarks/results/). They are not installed with the
package: this command finds the checkout (the current directory or one above it, or
--checkout DIR) and runs `python -m benchmarks.NAME [options]` there with this Python, which
must have the project installed. Outside a checkout it says so and runs nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from sharedsparse_cli import flags

BENCHMARKS = {
    "attention": "block-sparse kernels against cuDNN dense causal attention",
    "planner_overhead": "the planner's cost on a Llama-3.1-8B-shaped layer",
    "prefill_latency": "end-to-end prefill latency of whole models (built-in or --checkpoint),"
    " per method and length",
    "chunked_prefill": "chunked against whole-prompt prefill: time, peak memory, accuracy",
    "pod": "the pod benchmark job: latency and accuracy of every method over a device mesh",
    "crossover": "the prompt length from which sparse prefill pays, per model and device",
    "method_attention": "attention-level time of every method on profile-matched layers",
    "attention_profiles": "per-head attention profiles of a real model (method_attention's input)",
    "sharing_ablation": "the paper's ablation of pattern sharing, accuracy against density",
    "mosaic_gpu_check": "the Hopper kernel's checks, timing and launch sweep",
    "plot_attention": "the kernel speed-up figure from attention's results",
    "diagnostics.mosaic_gpu_timeline": "cycles per phase of a mosaic_gpu work item (profiler)",
    "diagnostics.mosaic_gpu_schedule_model": "makespan model of launch schedules (CPU)",
}


def find_checkout(start: Path) -> Path | None:
    """The source checkout holding `start` (a directory with benchmarks/ and this project's
    pyproject.toml), or None."""
    for directory in (start, *start.parents):
        pyproject = directory / "pyproject.toml"
        if (directory / "benchmarks" / "__init__.py").is_file() and pyproject.is_file():
            if 'name = "sharedsparse-jax"' in pyproject.read_text():
                return directory
    return None


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<40} {what}" for name, what in BENCHMARKS.items())
    parser = flags.new_parser("bench", __doc__, epilog=f"benchmarks:\n{listing}")
    parser.add_argument("name", choices=BENCHMARKS, metavar="NAME", help="the benchmark to run")
    parser.add_argument(
        "--checkout",
        type=Path,
        help="the repository checkout to run it in (default: the one holding the current"
        " directory)",
    )
    parser.add_argument(
        "options", nargs=argparse.REMAINDER, help="the benchmark's own options (NAME --help)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = find_checkout((args.checkout or Path.cwd()).absolute())
    if root is None:
        where = args.checkout or Path.cwd()
        flags.fail(
            parser,
            f"{where} is not inside a sharedsparse-jax checkout: the benchmarks are not installed"
            " with the package; clone the repository and run this there (or pass --checkout)",
        )
    command = [sys.executable, "-m", f"benchmarks.{args.name}", *args.options]
    return subprocess.run(command, cwd=root, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
