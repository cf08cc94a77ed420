"""Calibration windows of a model: token windows of the calibration texts (Austen's novels,
Paul Graham's essays), split into calibration and held-out sets, and their collected attention
maps, cached on disk. `sharedsparse-calibrate` clusters the maps (`sharedsparse_jax.calibrate`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from evaluation import texts
from evaluation.windows import Window, plan_windows, tokenize_documents
from models.collect import BlockMapCollector, CollectedMaps, collect_block_maps
from sharedsparse_jax.calibrate import grid_maps

__all__ = ["SOURCES", "Sample", "choose_samples", "collect_all", "grid_of", "tokenize_sources"]

SOURCES = ("austen", "essays")


@dataclasses.dataclass(frozen=True)
class Sample:
    """A calibration window: its source, place and token ids."""

    source: str
    window: Window
    tokens: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.source}:{self.window.document}@{self.window.start}"


def tokenize_sources(tokenizer) -> dict[str, dict[str, list[int]]]:
    """Token ids of every calibration document, per source."""
    documents = {
        "austen": texts.load_austen_novels(),
        "essays": {"essays": texts.load_paul_graham_essays()},
    }
    return {
        source: tokenize_documents(
            documents[source], lambda t: tokenizer.encode(t, add_special_tokens=False)
        )
        for source in SOURCES
    }


def choose_samples(
    sources: dict[str, dict[str, np.ndarray]],
    *,
    length: int,
    samples: int,
    heldout: int,
    seed: int,
) -> tuple[list[Sample], list[Sample]]:
    """Disjoint calibration and held-out windows of `length` tokens, per source `samples` +
    `heldout` of them (the choice seeded by `seed` and the length)."""
    rng = np.random.default_rng([seed, length])
    calibration, held_out = [], []
    for source in SOURCES:
        tokens = sources[source]
        windows = plan_windows({name: len(ids) for name, ids in tokens.items()}, length)
        needed = samples + heldout
        if len(windows) < needed:
            raise ValueError(
                f"{source} holds {len(windows)} windows of {length} tokens, {needed} needed"
            )
        chosen = rng.choice(len(windows), needed, replace=False)
        picked = [
            Sample(
                source, windows[i], tokens[windows[i].document][windows[i].start : windows[i].stop]
            )
            for i in chosen
        ]
        calibration += picked[:samples]
        held_out += picked[samples:]
    return calibration, held_out


def collect_all(
    model,
    samples: list[Sample],
    length: int,
    collector: BlockMapCollector,
    work_dir: Path,
    desc: str,
) -> list[CollectedMaps]:
    """Collects (or reads from the cache) every sample's maps, truncated to `length` tokens.
    Cached maps are keyed by the collector, the model's dtype and its rope (YaRN changes the
    maps)."""
    key = f"{collector!r} {model.dtype}"
    if model.config.rope.rope_type != "default":
        key += f" {model.config.rope!r}"
    key = hashlib.sha256(key.encode()).hexdigest()[:10]
    results = []
    for sample in tqdm(samples, desc=desc, unit="window"):
        path = work_dir / f"{sample.name.replace(':', '_').replace('@', '_')}-{length}-{key}.npz"
        if path.is_file():
            data = np.load(path)
            estimates = {k[4:]: data[k] for k in data.files if k.startswith("est_")}
            results.append(
                CollectedMaps(data["block_maps"], length, collector.block_size, estimates)
            )
            continue
        collected = collect_block_maps(model, [sample.tokens[:length]], collector)
        single = CollectedMaps(
            collected.block_maps[0],
            collected.length,
            collected.block_size,
            {k: v[0] for k, v in collected.estimates.items()},
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            block_maps=single.block_maps,
            **{f"est_{k}": v for k, v in single.estimates.items()},
        )
        results.append(single)
    return results


def grid_of(collected: list[CollectedMaps], grid: int) -> np.ndarray:
    """[S, L, N, G, G] grid maps of collected samples."""
    return np.stack([grid_maps(c.block_maps, c.length, c.block_size, grid) for c in collected])
