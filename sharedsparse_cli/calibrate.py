"""Calibrate a model for SharePrefill: cluster its heads and write its sharing table.

    sharedsparse-calibrate --checkpoint smollm2-135m-instruct --sweep --out-dir calibration/

writes calibration/<model>_table.json (the sharing table: pass it as --table), <model>_report.json
and the calibration_<model>_*.png figures. --checkpoint takes any model source (a built-in name,
a converted directory, an HF safetensors directory or a GGUF file, converted once).

Steps (docs/calibration.md):
1. Collect: dense prefill of calibration windows (Austen novels and Paul Graham essays) with
   `models.collect.BlockMapCollector`, recording every (layer, head)'s block-averaged map and
   the planner's last-block estimates. Maps are cached per window under the work directory.
2. Cluster the heads' pooled grid maps (autoencoder or pooled embedding, hierarchical).
3. Choose shared clusters by replaying the online rule on held-out windows.
4. Measure the paper's observations: pattern distances within / across clusters, and the
   adjusted Rand index between clusterings on disjoint texts, on another length, and with
   another autoencoder seed.
5. Write the table (reference schema + metadata), a JSON report and figures; print a summary.

Every option is checked before the model is loaded; a bad one ends the run with one line on
stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from evaluation.calibration_windows import choose_samples, collect_all, grid_of, tokenize_sources
from evaluation.harness.store import model_label
from models.cache import cache_root
from models.collect import BlockMapCollector, CollectedMaps
from models.sources import load_source
from sharedsparse_cli import flags
from sharedsparse_cli.calibration_report import (
    json_float,
    print_summary,
    sharing_report,
    write_figures,
)
from sharedsparse_jax.calibrate import (
    DEFAULT_THRESHOLDS,
    EMBEDDINGS,
    AutoencoderConfig,
    CalibrationConfig,
    ClusterConfig,
    SelectionConfig,
    calibrate,
    cluster_embedded,
    embed_heads,
    head_evidence,
    length_bands,
    sharing_sample,
    similarity_report,
    stability,
    sweep,
)
from sharedsparse_jax.config import SharePrefillConfig

# Stability comparisons: (clustering input, clustering input), each clustered on its own.
STABILITY_PAIRS = {
    "austen_vs_essays": ("austen", "essays"),
    "half_a_vs_half_b": ("half_a", "half_b"),
    "length": ("all", "short"),
    "autoencoder_seed": ("all", "seed"),
}
SWEEP_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)


def parse_args(argv=None) -> argparse.Namespace:
    """Parses and checks the command line; a bad option exits with one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = argument_problem(args, SharePrefillConfig())
    if problem is not None:
        flags.fail(parser, problem)
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = flags.new_parser("calibrate", __doc__)
    flags.add_checkpoint(parser)
    flags.add_dtype(parser)
    flags.add_yarn_factor(parser)
    parser.add_argument(
        "--name",
        help="model name for the table and file names (default: the built-in's, or the source's"
        " file or directory name, with +yarn<FACTOR> under --yarn-factor)",
    )
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[4096],
        help="calibration tokens per window, one or more lengths (the lengths the model is used"
        " at): heads are clustered on all of them, shared clusters chosen per length, and the"
        " table gets one length band per length whose choice differs",
    )
    parser.add_argument(
        "--second-length",
        type=int,
        default=2048,
        help="prefix length of the shortest --lengths windows for the length-stability check"
        " (0: skip)",
    )
    parser.add_argument(
        "--samples", type=int, default=4, help="calibration windows per source (Austen, essays)"
    )
    parser.add_argument(
        "--heldout",
        type=int,
        default=2,
        help="held-out windows per source for shared-cluster choice",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="window choice and autoencoder seed (default: 0)"
    )
    parser.add_argument(
        "--map-block-size",
        type=int,
        default=64,
        help="tokens per block of the collected maps (default: %(default)s)",
    )
    parser.add_argument(
        "--grid",
        type=int,
        default=32,
        help="side of the grid every map is pooled to before clustering (default: %(default)s)",
    )
    defaults_cluster, defaults_select = ClusterConfig(), SelectionConfig()
    defaults_ae = defaults_cluster.autoencoder
    parser.add_argument(
        "--embedding",
        choices=EMBEDDINGS,
        default=defaults_cluster.embedding,
        help=f"head embedding (default: {defaults_cluster.embedding})",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"clustering distance cut (default: per embedding, {DEFAULT_THRESHOLDS})",
    )
    parser.add_argument(
        "--linkage",
        default=defaults_cluster.linkage,
        help="hierarchical clustering linkage (default: %(default)s)",
    )
    parser.add_argument(
        "--latent-dim",
        type=int,
        default=defaults_ae.latent_dim,
        help="autoencoder embedding size (default: %(default)s)",
    )
    parser.add_argument(
        "--ae-steps",
        type=int,
        default=defaults_ae.steps,
        help="autoencoder training steps (default: %(default)s)",
    )
    parser.add_argument(
        "--min-coverage",
        type=float,
        default=defaults_select.min_coverage,
        help="a shared cluster's pivot pattern must cover at least this share of its members'"
        " attention mass on held-out text (default: %(default)s)",
    )
    parser.add_argument(
        "--min-coverage-gain",
        type=float,
        default=defaults_select.min_coverage_gain,
        help="... and at least this much more than their own fallback (default: %(default)s)",
    )
    parser.add_argument(
        "--min-saving",
        type=float,
        default=defaults_select.min_saving,
        help="... at a net block saving of at least this (negative: a cost allowed; default:"
        " %(default)s)",
    )
    parser.add_argument(
        "--min-share-rate",
        type=float,
        default=defaults_select.min_share_rate,
        help="... and the online rule lets at least this share of the cluster's eligible later"
        " members share (default: %(default)s)",
    )
    flags.add_out_dir(
        parser,
        required=False,
        what="<model>_table.json, <model>_report.json and the calibration_<model>_*.png figures",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="compare embeddings and thresholds (stability and sharing quality) and print it",
    )
    parser.add_argument("--collect-only", action="store_true", help="stop after collecting maps")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="cache of collected maps (default: <cache>/calibration/<model>)",
    )
    parser.add_argument(
        "--implementation",
        default=None,
        help="block-sparse kernel implementation of the map collection (default: the best for"
        " the backend)",
    )
    return parser


def argument_problem(args, planner: SharePrefillConfig) -> str | None:
    """What is wrong with the options, checked without loading anything (None: nothing)."""
    problem = flags.checkpoint_problem(args.checkpoint) or flags.yarn_factor_problem(
        args.yarn_factor
    )
    if problem is not None:
        return problem
    args.lengths = sorted(set(args.lengths))
    for option, value, least in (
        ("--lengths", min(args.lengths), 1),
        ("--second-length", args.second_length, 0),
        ("--samples", args.samples, 1),
        ("--heldout", args.heldout, 1),
        ("--map-block-size", args.map_block_size, 1),
    ):
        if value < least:
            return f"{option} must be >= {least}, got {value}"
    problem = lengths_problem(args, planner)
    if problem is not None:
        return problem
    try:
        CalibrationConfig(
            grid=args.grid,
            cluster=cluster_config(args, args.embedding),
            selection=selection_config(args, planner),
        )
    except ValueError as error:
        return f"invalid calibration settings: {error}"
    problem = flags.out_dir_problem(args.out_dir)
    if problem is not None:
        return problem
    if args.work_dir is not None and args.work_dir.exists() and not args.work_dir.is_dir():
        return f"--work-dir {args.work_dir} is a file; give a directory"
    if args.implementation is not None and "," in args.implementation:
        return f"--implementation {args.implementation}: give one implementation"
    return flags.implementation_problem(args.implementation)


def load_model(args):
    """The --checkpoint model (converted once if needed) in the --dtype, its context extended
    by --yarn-factor, and its name; exits where the longest --lengths exceed its context."""
    try:
        dtype = jnp.dtype(flags.compute_dtype(args.dtype))
        loaded, name = load_source(args.checkpoint, dtype=dtype, yarn_factor=args.yarn_factor)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--checkpoint {args.checkpoint}: cannot be loaded: {error}") from error
    context = loaded.config.max_position_embeddings
    if args.lengths[-1] > context:
        longer = "" if args.yarn_factor is not None else " (--yarn-factor extends it)"
        raise SystemExit(
            f"--lengths {args.lengths[-1]} exceeds the model's context of {context} tokens{longer}"
        )
    return loaded, args.name or model_label(name, args.yarn_factor)


def lengths_problem(args, planner: SharePrefillConfig) -> str | None:
    """What is wrong with the window lengths and the map block size (None: nothing)."""
    shortest = args.lengths[0]
    lengths = args.lengths + ([args.second_length] if args.second_length else [])
    for length in lengths:
        if length % planner.block_size or length % args.map_block_size:
            return (
                f"length {length} must be a multiple of the planner's block size"
                f" ({planner.block_size}) and of --map-block-size ({args.map_block_size})"
            )
    if planner.block_size % args.map_block_size:
        return f"--map-block-size must divide {planner.block_size}"
    if shortest < planner.dense_below:
        return f"--lengths must be >= {planner.dense_below} (shorter prompts run dense)"
    if args.second_length >= shortest:
        return (
            f"--second-length ({args.second_length}) must be below the shortest --lengths"
            f" ({shortest}): its maps are the windows' prefixes"
        )
    return None


def selection_config(args, planner: SharePrefillConfig) -> SelectionConfig:
    return SelectionConfig(
        planner=planner,
        min_coverage=args.min_coverage,
        min_coverage_gain=args.min_coverage_gain,
        min_saving=args.min_saving,
        min_share_rate=args.min_share_rate,
    )


def cluster_config(args, embedding: str, *, seed: int | None = None) -> ClusterConfig:
    return ClusterConfig(
        embedding=embedding,
        distance_threshold=args.threshold if embedding == args.embedding else None,
        linkage=args.linkage,
        autoencoder=AutoencoderConfig(
            grid=args.grid,
            latent_dim=args.latent_dim,
            steps=args.ae_steps,
            seed=args.seed if seed is None else seed,
        ),
    )


def embed_inputs(args, embedding, inputs, progress) -> dict[str, np.ndarray]:
    """Embeddings of every clustering input (the autoencoder is trained on each alone)."""
    out = {}
    for name, (maps, seed) in inputs.items():
        if embedding != "autoencoder" and name == "seed":
            continue  # the pooled embedding has no seed
        out[name] = embed_heads(maps, cluster_config(args, embedding, seed=seed))
        progress.update(1)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    planner = SharePrefillConfig()
    loaded, model_name = load_model(args)
    config = loaded.config
    print(
        f"model {model_name}: {config.num_layers} layers x {config.num_heads} query heads"
        f" ({config.num_kv_heads} kv heads, {loaded.model.dtype}), calibrated at {args.lengths}"
        " tokens"
    )
    sources = tokenize_sources(loaded.tokenizer)
    collector = BlockMapCollector(
        block_size=args.map_block_size, estimate_config=planner, implementation=args.implementation
    )
    work_dir = args.work_dir or cache_root() / "calibration" / model_name
    windows, cal, held = {}, {}, {}
    for length in args.lengths:
        windows[length] = choose_samples(
            sources, length=length, samples=args.samples, heldout=args.heldout, seed=args.seed
        )
        calibration, heldout = windows[length]
        cal[length] = collect_all(
            loaded.model, calibration, length, collector, work_dir, f"calibration {length}"
        )
        held[length] = collect_all(
            loaded.model, heldout, length, collector, work_dir, f"held-out {length}"
        )
    collect_seconds = time.time() - started
    print(f"maps collected in {collect_seconds:.0f} s")
    if args.collect_only:
        return 0

    cal_grid = {length: grid_of(cal[length], args.grid) for length in args.lengths}
    all_grid = np.concatenate([cal_grid[length] for length in args.lengths])
    held_samples = {
        length: [
            sharing_sample(c.block_maps, c.length, c.block_size, c.estimates, planner.block_size)
            for c in held[length]
        ]
        for length in args.lengths
    }
    evidence = {
        length: [head_evidence(s, planner) for s in samples]
        for length, samples in held_samples.items()
    }
    inputs = clustering_inputs(args, windows, cal, cal_grid, all_grid)
    embeddings_used = EMBEDDINGS if args.sweep else (args.embedding,)
    embeddings = {}
    with tqdm(total=len(inputs) * len(embeddings_used), desc="embedding", unit="input") as bar:
        for embedding in embeddings_used:
            embeddings[embedding] = embed_inputs(args, embedding, inputs, bar)

    chosen = cluster_config(args, args.embedding)
    selection = selection_config(args, planner)
    clustering = cluster_embedded(embeddings[args.embedding]["all"], chosen.threshold, args.linkage)
    metadata = {
        "model": model_name,
        "texts": {
            "sources": "Jane Austen's novels (janeaustenr); Paul Graham's essays (RULER)",
            **{
                f"calibration_{length}": [s.name for s in windows[length][0]]
                for length in args.lengths
            },
            **{
                f"heldout_{length}": [s.name for s in windows[length][1]] for length in args.lengths
            },
        },
        "lengths": args.lengths,
        "second_length": args.second_length,
        "map_block_size": args.map_block_size,
        "yarn_factor": args.yarn_factor,
        "dtype": str(loaded.model.dtype),
        "seed": args.seed,
    }
    results = {
        length: calibrate(
            all_grid,
            held_samples[length],
            CalibrationConfig(grid=args.grid, cluster=chosen, selection=selection),
            metadata,
            clustering=clustering,
            evidence=evidence[length],
        )
        for length in args.lengths
    }
    band_min_tokens, shared_by_band = length_bands(
        args.lengths, [results[length].sharing.is_shared for length in args.lengths]
    )
    table = dataclasses.replace(
        results[args.lengths[0]].table,
        is_shared=shared_by_band.any(axis=0),
        band_min_tokens=band_min_tokens,
        shared_by_band=shared_by_band,
    )
    longest = args.lengths[-1]
    pairs = STABILITY_PAIRS | {
        f"length_{a}_vs_{b}": (f"len_{a}", f"len_{b}")
        for a, b in zip(args.lengths[:-1], args.lengths[1:], strict=True)
    }
    report = {
        "model": model_name,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "lengths": args.lengths,
        "second_length": args.second_length,
        "texts": metadata["texts"],
        "clustering": {
            "embedding": args.embedding,
            "threshold": chosen.threshold,
            "linkage": args.linkage,
            "clusters": clustering.num_clusters,
            "size_quantiles": np.percentile(results[longest].sharing.size, [10, 50, 90]).tolist(),
        },
        "sharing_by_length": {
            str(length): sharing_report(results[length].sharing, selection)
            for length in args.lengths
        },
        "bands": [
            {"min_tokens": bound, "shared_clusters": [int(c) + 1 for c in np.flatnonzero(flags)]}
            for bound, flags in zip(band_min_tokens, shared_by_band, strict=True)
        ],
        "observation_1": similarity_report(
            cal_grid[longest].mean(0),
            clustering.labels,
            np.stack([s.block_maps for s in held_samples[longest]]),
            np.stack([e.pattern for e in evidence[longest]]),
        ),
        "observation_2": stability(
            embeddings[args.embedding], pairs, chosen.threshold, args.linkage
        ),
    }
    if args.sweep:
        report["sweep"] = sweep(
            embeddings,
            pairs,
            SWEEP_THRESHOLDS,
            held_samples[longest],
            selection,
            linkage=args.linkage,
            evidence=evidence[longest],
        )
    report["seconds"] = {"collect": collect_seconds, "total": time.time() - started}
    print_summary(report)

    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        table_path = args.out_dir / f"{model_name}_table.json"
        table.save(table_path)
        print(f"\nwrote {table_path}")
        report_path = args.out_dir / f"{model_name}_report.json"
        report_path.write_text(json.dumps(report, indent=1, default=json_float) + "\n")
        print(f"wrote {report_path}")
        for path in write_figures(
            args.out_dir,
            model_name,
            report,
            clustering,
            results[longest].sharing,
            grid_of(held[longest], args.grid),
            cal_grid[longest],
        ):
            print(f"wrote {path}")
    return 0


def clustering_inputs(args, windows, cal, cal_grid, all_grid) -> dict:
    """Each clustering input: its [S, L, N, G, G] grid maps and autoencoder seed.

    "all" (every length's calibration windows) makes the table; the others are clustered alone
    for the stability checks: another seed, each source, each half, the shortest length's
    prefixes ("short") and each length ("len_<n>") when there are several.
    """
    is_austen = np.concatenate(
        [[s.source == "austen" for s in windows[length][0]] for length in args.lengths]
    )
    inputs = {
        "all": (all_grid, args.seed),
        "seed": (all_grid, args.seed + 1),
        "austen": (all_grid[is_austen], args.seed),
        "essays": (all_grid[~is_austen], args.seed),
        "half_a": (all_grid[0::2], args.seed),
        "half_b": (all_grid[1::2], args.seed),
    }
    if args.second_length:
        # Causal attention: a prefix's maps are the top-left corner of the whole window's maps
        # (checked on cached SmolLM2 windows: equal within 5e-7), so no second dense pass.
        whole = args.second_length // args.map_block_size
        short = [
            CollectedMaps(
                c.block_maps[..., :whole, :whole], whole * args.map_block_size, c.block_size, None
            )
            for c in cal[args.lengths[0]]
        ]
        inputs["short"] = (grid_of(short, args.grid), args.seed)
    if len(args.lengths) > 1:
        for length in args.lengths:
            inputs[f"len_{length}"] = (cal_grid[length], args.seed)
    return inputs


if __name__ == "__main__":
    sys.exit(main())
