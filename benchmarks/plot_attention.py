"""Plots a kernel benchmark's speedup over cuDNN against block density, one line per length.

    python -m benchmarks.plot_attention benchmarks/results/attention_h200.json \\
        docs/figures/attention_speedup_h200.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("figure", type=Path)
    args = parser.parse_args()
    data = json.loads(args.results.read_text())
    records = [r for r in data["records"] if "kind" not in r]
    env = data["environment"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for seq_len in sorted({r["seq_len"] for r in records}):
        rows = sorted((r for r in records if r["seq_len"] == seq_len), key=lambda r: r["density"])
        densities = [100 * r["density"] for r in rows]
        left.plot(densities, [r["speedup"] for r in rows], "o-", label=f"{seq_len // 1024}K")
        right.plot(densities, [r["tflops_active"] for r in rows], "o-", label=f"{seq_len // 1024}K")
    left.axhline(1.0, color="gray", lw=0.8, ls="--")
    left.set(
        xscale="log",
        yscale="log",
        xlabel="causal blocks kept (%)",
        ylabel="speedup over cuDNN dense causal",
        title="Triton block-sparse kernel",
    )
    right.set(
        xscale="log",
        xlabel="causal blocks kept (%)",
        ylabel="TFLOP/s over active blocks",
        title="Throughput on active blocks",
    )
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(title="S")
    fig.suptitle(
        f"{env['device_kind']}, N=32 K=8 H=128 bf16 B=1, commit {env['commit']}", fontsize=9
    )
    fig.tight_layout()
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=120)


if __name__ == "__main__":
    main()
