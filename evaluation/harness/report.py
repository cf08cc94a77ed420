"""The markdown report and its figures, from cell summaries and the run log.

Every table carries its own caption with hardware, model, lengths, units per cell and commit,
so a table copied elsewhere still says where its numbers came from.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.harness.settings import DEFAULT_METHODS, DENSE
from evaluation.harness.store import TEXT, ResultStore, split_model_label

__all__ = ["write_report"]

_HEAD_CODES = {
    "dense": "D",
    "pivot": "P",
    "shared": "S",
    "query_aware": "QA",
    "vertical_slash": "VS",
    "streaming": "SW",
}
_MARKERS = {
    "dense": "*",
    "shareprefill": "o",
    "flexprefill": "s",
    "vertical_slash": "^",
    "streaming": "v",
}


def _sort_key(summary: dict) -> tuple:
    method_rank = (
        DEFAULT_METHODS.index(summary["method"]) if summary["method"] in DEFAULT_METHODS else 99
    )
    return (
        summary["task"] != TEXT,
        summary["task"],
        summary["length"],
        summary["variant"] or "",
        method_rank,
    )


def _length(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _heads(shares: dict[str, float]) -> str:
    parts = [f"{_HEAD_CODES.get(k, k)} {100 * v:.0f}" for k, v in shares.items() if v >= 0.005]
    return " / ".join(parts) or "-"


def _sci(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.2e}" if abs(x) < 1e-2 else f"{x:.3f}"


def _interval(estimate: dict | None, scale: float = 100.0, digits: int = 1) -> str:
    if not estimate:
        return "-"
    v, lo, hi = (scale * estimate[k] for k in ("value", "low", "high"))
    if estimate["method"] == "bootstrap" and estimate["n"] < 2:
        return f"{v:+.{digits}f} [one window: no interval]"
    return f"{v:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _note(summary: dict) -> str:
    if summary["setting"] == DENSE:
        return ""
    if summary["dense_by_construction"] >= 1.0:
        return " (=dense)"
    if summary.get("same_as"):
        return f" (={summary['same_as']})"
    return ""


def _is_run(summary: dict) -> bool:
    """Whether a cell was run itself (not a copy of dense or of its FlexPrefill twin)."""
    return summary["dense_by_construction"] < 1.0 and not summary.get("same_as")


def _runs_of(runs: list[dict], model: str) -> list[dict]:
    """The invocations that could have run `model` (a `store.model_label`): those with its YaRN
    factor (or none) listing it (or a source of that name) after `--checkpoint` (`--models` in
    older logs), and those that chose no models (every model)."""
    name, yarn_factor = split_model_label(model)

    def could_run(argv: list[str]) -> bool:
        factor = float(argv[argv.index("--yarn-factor") + 1]) if "--yarn-factor" in argv else None
        if factor != yarn_factor:
            return False
        option = next((o for o in ("--checkpoint", "--models") if o in argv), None)
        if option is None:
            return True
        listed = itertools.takewhile(
            lambda arg: not arg.startswith("--"), argv[argv.index(option) + 1 :]
        )
        return any(Path(source).name.removesuffix(".gguf") == name for source in listed)

    return [r for r in runs if could_run(r.get("argv", []))]


def _environment_line(runs: list[dict]) -> tuple[str, str]:
    envs = [r["environment"] for r in runs if "environment" in r]
    if not envs:
        return "unknown hardware", "unknown commit"
    kinds = sorted(
        {
            f"{e['device_kind']}"
            + (
                f" ({e['cpu']}, {e['cpu_count']} cores)"
                if e["platform"] == "cpu"
                else f" x{e['device_count']}"
            )
            for e in envs
        }
    )
    commits = sorted(
        {(e["commit"] or "?")[:7] + (" + local changes" if e["dirty"] else "") for e in envs}
    )
    return ", ".join(kinds), ", ".join(commits)


def _caption(summaries: list[dict], hardware: str, commits: str, what: str) -> str:
    lengths = ", ".join(_length(x) for x in sorted({s["length"] for s in summaries}))
    counts = sorted({s["n"] for s in summaries})
    dtypes = ", ".join(sorted({str(s.get("dtype")) for s in summaries}))
    count_text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return (
        f"*Hardware: {hardware}. Model: {summaries[0]['model']} ({dtypes}). "
        f"Lengths: {lengths} tokens. {what} per cell: {count_text}. Commit: {commits}.*"
    )


def _text_table(rows: list[dict], hardware: str, commits: str) -> list[str]:
    lines = [
        "| length | setting | windows | density % | heads % | PPL | PPL 2nd half | "
        "ΔNLL vs dense, nats/token [95% CI] | PPL ratio | KL mean | KL max | top-1 agree % | "
        "attn rel. err. mean / worst layer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in rows:
        diff = s.get("nll_diff_vs_dense")
        ratio = s.get("perplexity_ratio_vs_dense")
        err = (
            f"{_sci(s['attn_rel_error_mean'])} / {_sci(s['attn_rel_error_max_layer'])}"
            if "attn_rel_error_mean" in s
            else "-"
        )
        lines.append(
            f"| {_length(s['length'])} | {s['setting']}{_note(s)} | {s['n']} | "
            f"{_pct(s['density'])} | {_heads(s['heads'])} | {s['perplexity']:.3f} | "
            f"{s['perplexity_second_half']:.3f} | "
            f"{_interval(diff, scale=1.0, digits=4)} | "
            f"{'-' if ratio is None else f'{ratio:.4f}'} | "
            f"{_sci(s['kl_mean'])} | {_sci(s['kl_max'])} | {_pct(s['top1_agreement'])} | {err} |"
        )
    lines += ["", _caption(rows, hardware, commits, "Windows")]
    return lines


def _retrieval_table(rows: list[dict], hardware: str, commits: str) -> list[str]:
    lines = [
        "| task | length | setting | samples | prompt tokens | density % | heads % | "
        "accuracy % [95% CI] | Δ vs dense, points [95% CI] | discordant | McNemar p |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in rows:
        acc = s["accuracy"]
        accuracy = f"{100 * acc['value']:.1f} [{100 * acc['low']:.1f}, {100 * acc['high']:.1f}]"
        p = s.get("mcnemar_p")
        lines.append(
            f"| {s['task']} | {_length(s['length'])} | {s['setting']}{_note(s)} | {s['n']} | "
            f"{s['num_tokens_mean']:.0f} | {_pct(s['density'])} | {_heads(s['heads'])} | "
            f"{accuracy} | {_interval(s.get('diff_vs_dense'))} | "
            f"{s.get('discordant', '-')} | {'-' if p is None else f'{p:.3f}'} |"
        )
    lines += ["", _caption(rows, hardware, commits, "Samples")]
    return lines


def _figure_name(model: str, what: str) -> str:
    return f"eval_{model.replace('.', '_')}_{what}.png"


def _plot_text(rows: list[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sparse = [s for s in rows if s["setting"] != DENSE and "nll_diff_vs_dense" in s and _is_run(s)]
    if not sparse:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    lengths = sorted({s["length"] for s in sparse})
    colors = {n: plt.cm.viridis(i / max(1, len(lengths) - 1)) for i, n in enumerate(lengths)}
    for s in sparse:
        d = s["nll_diff_vs_dense"]
        x = 100 * s["density"]
        style = dict(
            marker=_MARKERS.get(s["method"], "x"),
            color=colors[s["length"]],
            markersize=7,
            linestyle="none",
        )
        change = [100 * math.expm1(d[k]) for k in ("value", "low", "high")]
        axes[0].errorbar(
            x, change[0], yerr=[[change[0] - change[1]], [change[2] - change[0]]], **style
        )
        axes[1].plot(x, max(s["kl_mean"], 1e-7), **style)
        if s["variant"] not in (None, "default"):
            axes[0].annotate(
                s["variant"],
                (x, change[0]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    axes[0].axhline(0, color="gray", linewidth=0.8)
    axes[0].set(
        xlabel="block density (% of causal blocks)",
        ylabel="perplexity vs dense (% change, 95% CI)",
        title="perplexity cost",
    )
    axes[1].set(
        xlabel="block density (% of causal blocks)",
        ylabel="KL(dense || sparse), nats",
        yscale="log",
        title="next-token KL, last positions",
    )
    handles = [
        plt.Line2D([], [], marker=_MARKERS.get(m, "x"), color="k", linestyle="none", label=m)
        for m in sorted({s["method"] for s in sparse})
    ]
    handles += [
        plt.Line2D([], [], marker="o", color=c, linestyle="none", label=_length(n))
        for n, c in colors.items()
    ]
    axes[1].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle(f"{rows[0]['model']}: Austen windows, sparse prefill vs dense", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_layers(rows: list[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [s for s in rows if "attn_rel_error_per_layer" in s and _is_run(s)]
    if not measured:
        return False
    lengths = sorted({s["length"] for s in measured})
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.5 * len(lengths), 3.8), squeeze=False)
    for ax, length in zip(axes[0], lengths, strict=True):
        for s in measured:
            if s["length"] == length:
                errors = s["attn_rel_error_per_layer"]
                ax.plot(
                    range(len(errors)),
                    [max(e, 1e-7) for e in errors],
                    marker=_MARKERS.get(s["method"], "x"),
                    markersize=3,
                    label=s["setting"],
                )
        ax.set(yscale="log", xlabel="layer", title=f"{_length(length)} tokens")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("relative error of attention output")
    fig.suptitle(f"{rows[0]['model']}: per-layer error vs dense on the same q/k/v", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_retrieval(rows: list[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in rows if _is_run(s)]
    if not rows:
        return False
    cells = sorted({(s["task"], s["length"]) for s in rows})
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.8), squeeze=False)
    for ax, (task, length) in zip(axes[0], cells, strict=True):
        for s in rows:
            if (s["task"], s["length"]) != (task, length):
                continue
            a = s["accuracy"]
            x = 100 * s["density"]
            ax.errorbar(
                x,
                100 * a["value"],
                yerr=[[100 * (a["value"] - a["low"])], [100 * (a["high"] - a["value"])]],
                marker=_MARKERS.get(s["method"], "x"),
                linestyle="none",
                capsize=3,
                label=s["setting"] + _note(s),
            )
        ax.set(
            xlabel="block density (%)",
            ylabel="accuracy (%)",
            ylim=(-5, 105),
            title=f"{task}, {_length(length)}",
        )
        ax.legend(fontsize=6)
    fig.suptitle(f"{rows[0]['model']}: retrieval accuracy (95% Wilson) vs density", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _provenance(runs: list[dict]) -> list[str]:
    lines = [
        "| date | hardware | jax | commit | local changes | command |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        e = run.get("environment", {})
        hardware = e.get("device_kind", "?") + (
            f" ({e.get('cpu')}, {e.get('cpu_count')} cores)" if e.get("platform") == "cpu" else ""
        )
        dirty = ", ".join(e.get("dirty", [])) or "none"
        lines.append(
            f"| {e.get('date', '?')} | {hardware} | {e.get('jax', '?')} | "
            f"{(e.get('commit') or '?')[:10]} | {dirty} | "
            f"`{run.get('program', 'scripts/evaluate.py')} {' '.join(run.get('argv', []))}` |"
        )
    return lines


def _variants(runs: list[dict]) -> list[str]:
    seen: dict[str, dict] = {}
    for run in runs:
        seen.update(run.get("variants", {}))
    lines = ["| variant | what it is | overrides of SharePrefillConfig defaults |", "|---|---|---|"]
    for name, v in sorted(seen.items()):
        overrides = ", ".join(f"{k}={val}" for k, val in sorted(v["overrides"].items())) or "none"
        lines.append(f"| {name} | {v['description']} | {overrides} |")
    return lines


def write_report(
    store: ResultStore,
    summaries: Sequence[dict[str, Any]],
    report_path: str | Path,
    figures_dir: str | Path,
    *,
    root: str | Path | None = None,
    intro: str = "",
) -> list[Path]:
    """Writes the markdown report and its PNG figures.

    Args:
      store: the results directory (its run log gives hardware, commits and commands).
      summaries: `aggregate.summarize_store(store)`.
      report_path: the markdown file.
      figures_dir: where `eval_*.png` go.
      root: repository root, for relative paths in the markdown (default: report's parent).
      intro: markdown placed after the title (context the numbers need).

    Figures need matplotlib (the `plot` extra); without it the report says so and has none.

    Returns:
      The files written.
    """
    report_path, figures_dir = Path(report_path), Path(figures_dir)
    can_plot = importlib.util.find_spec("matplotlib") is not None
    if can_plot:
        figures_dir.mkdir(parents=True, exist_ok=True)
    root = Path(root) if root else report_path.parent
    runs = store.runs()
    written: list[Path] = []

    def rel(path: Path) -> str:
        return os.path.relpath(path, report_path.parent)

    lines = ["# Accuracy of sparse prefill against dense attention", ""]
    if intro:
        lines += [intro.strip(), ""]
    lines += [
        f"Raw results: `{os.path.relpath(store.root, root)}/` (one JSON Lines file per cell, "
        "one record per window or sample; `summary.json` holds every number below). Regenerate "
        "with the commands in the provenance table (`sharedsparse-evaluate` skips finished units).",
        "",
        "Reading the tables: *density* is the share of causal key blocks each method attends to "
        "(mean over layers, heads and units); *heads* is the mix of head categories over all "
        "(layer, head) slots (D dense, P pivot, S shared, QA query-aware, VS vertical-slash, "
        "SW streaming). *(=dense)* marks a setting that keeps every block by construction at "
        "this length (prompt under `dense_below`, or a budget floor covering the prompt): its "
        "numbers are the dense run's, not re-run. *(=flexprefill@v)* marks SharePrefill without "
        "shared clusters, which is FlexPrefill exactly. Intervals are 95%: Wilson for one "
        "cell's accuracy, Newcombe's paired interval for a difference to dense on the same "
        "samples (McNemar's exact test beside it), a paired bootstrap over windows for ΔNLL.",
        "",
        *(
            []
            if can_plot
            else ["No figures: they need matplotlib (`pip install 'sharedsparse-jax[plot]'`).", ""]
        ),
        "## Variants",
        "",
        *_variants(runs),
        "",
    ]
    by_model: dict[str, list[dict]] = {}
    for s in summaries:
        by_model.setdefault(s["model"], []).append(s)
    for model, rows in by_model.items():
        rows = sorted(rows, key=_sort_key)
        hardware, commits = _environment_line(_runs_of(runs, model))
        tables = sorted({str(s["table"]) for s in rows if s["method"] == "shareprefill"})
        lines += [f"## {model}", ""]
        if tables:
            lines += [f"SharePrefill sharing table: {'; '.join(tables)}.", ""]
        text = [s for s in rows if s["task"] == TEXT]
        if text:
            lines += ["### Perplexity and fidelity (Austen, non-overlapping windows)", ""]
            lines += [
                "PPL pools every scored token of every window (PG-19 style; window of T tokens, "
                "T - 1 predictions, no BOS). *PPL 2nd half* scores only tokens with at least "
                "T/2 tokens of context. KL(dense ‖ sparse) and top-1 agreement are over each "
                "window's last positions; the attention error is ‖sparse − dense‖ / ‖dense‖ "
                "of each layer's output on that layer's own q, k, v (so it is the layer's own "
                "error, not accumulated drift), averaged over windows.",
                "",
            ]
            lines += _text_table(text, hardware, commits) + [""]
            for name, plot in (("ppl_vs_density", _plot_text), ("layer_error", _plot_layers)):
                path = figures_dir / _figure_name(model, name)
                if can_plot and plot(text, path):
                    written.append(path)
                    lines += [f"![{model} {name}]({rel(path)})", ""]
        retrieval = [s for s in rows if s["task"] != TEXT]
        if retrieval:
            lines += ["### Retrieval (RULER-style, exact match, greedy)", ""]
            lines += _retrieval_table(retrieval, hardware, commits) + [""]
            path = figures_dir / _figure_name(model, "retrieval_vs_density")
            if can_plot and _plot_retrieval(retrieval, path):
                written.append(path)
                lines += [f"![{model} retrieval]({rel(path)})", ""]
    lines += ["## Provenance", "", *_provenance(runs), ""]
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text("\n".join(lines))
    written.insert(0, report_path)
    return written
