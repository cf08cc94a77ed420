"""Per-head attention profiles of a real model: how its attention mass splits by structure.

A head's block-averaged attention map (rows: query blocks, columns: key blocks, each row sums to
1) is split into
  - sink: key block 0;
  - band: the key blocks within `band_tokens` of the query block (the diagonal and its
    neighbours);
  - vertical: key columns whose mass stands out (`line_ratio` times the median column) in every
    row below them;
  - slash: diagonals at a fixed offset whose mass stands out in the same way;
  - rest: everything else (diffuse mass),
with the shares measured on the last rows (the planner's last query block) and the columns and
diagonals identified over all rows given. Two more numbers describe the rest and the whole:
`rest_concentration` (the share of the rest's blocks holding 95 % of its mass: 0.95 when it is
uniform, small when it is clumped) and `gamma_density` (the share of a last row's causal blocks
that a cumulative-mass cut at gamma keeps).

`decompose_rows` works on any set of rows, so a synthetic layer can be checked against a
profile with a few sampled rows (benchmarks/diagnostics/synthetic_heads.py).

Make a profile (CPU, dense prefill of a built-in model on two texts, a few minutes):

    python -m benchmarks.attention_profiles --model smollm2-135m-instruct --length 2048 \\
        --out benchmarks/profiles/smollm2-135m-instruct.json

and at the lengths the 8B-shaped benchmark runs (GPU; beyond 32K with Qwen's context extended):

    python -m benchmarks.attention_profiles --model qwen2.5-coder-0.5b-instruct --length 131072 \\
        --map-block-size 128 --yarn-factor 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sharedsparse_cli import flags

SHARES = ("sink", "band", "vertical", "slash", "rest")


def decompose_rows(
    rows: np.ndarray,
    row_index: np.ndarray,
    *,
    block_size: int,
    last_rows: int = 2,
    band_tokens: int = 128,
    line_ratio: float = 5.0,
    max_lines: int = 4,
    gamma: float = 0.95,
) -> dict:
    """Splits one head's attention rows into sink / band / vertical / slash / rest shares.

    Args:
      rows: float[R, C] block-averaged attention rows (row i covers key blocks 0..row_index[i],
        summing to 1; entries past the diagonal are ignored).
      row_index: int[R] ascending query-block index of each row.
      block_size: tokens per block of the map.
      last_rows: how many of the last given rows the shares are measured on.
      band_tokens: the local band's reach; offsets below ceil(band_tokens / block_size) blocks.
      line_ratio: a column (diagonal) is vertical (slash) when its mass, scaled by the row's
        block count, is at least this many times the median column's (diagonal's).
      max_lines: at most this many vertical columns and this many slash offsets.
      gamma: the cumulative-mass threshold of `gamma_density`.

    Returns:
      {"sink", "band", "vertical", "slash", "rest": shares on the last rows (sum 1),
       "vertical_columns": key-block indices, "slash_offsets": block offsets,
       "rest_concentration", "gamma_density": means over the last rows}.
    """
    rows = np.asarray(rows, np.float64)
    row_index = np.asarray(row_index)
    num_rows, num_cols = rows.shape
    cols = np.arange(num_cols)[None, :]
    offsets = row_index[:, None] - cols
    causal = offsets >= 0
    rows = np.where(causal, rows, 0.0)
    band_blocks = max(1, -(-band_tokens // block_size))
    is_sink = (cols == 0) & causal
    is_band = (offsets < band_blocks) & causal & ~is_sink
    remainder = np.where(is_sink | is_band, 0.0, rows)
    outside = causal & ~is_sink & ~is_band
    # Scaled by the row's block count, a uniform remainder scores the same in every row.
    scaled = remainder * (row_index[:, None] + 1)

    def lines(score_of, num):
        """Ids (columns or offsets) whose mean scaled mass stands out."""
        ids = np.arange(num)
        means = np.full(num, np.nan)
        for i in ids:
            values = score_of(i)
            if values.size:
                means[i] = values.mean()
        valid = np.isfinite(means)
        if valid.sum() < 3:
            return np.zeros(0, int)
        baseline = max(np.median(means[valid]), 1e-12)
        order = ids[valid][np.argsort(-means[valid])]
        return np.sort(order[means[order] >= line_ratio * baseline][:max_lines])

    vertical_columns = lines(lambda c: scaled[outside[:, c], c], num_cols)
    is_vertical = np.isin(cols, vertical_columns) & outside
    after_vertical = np.where(is_vertical, 0.0, scaled)
    diagonal = outside & ~is_vertical
    slash_offsets = lines(lambda d: after_vertical[(offsets == d) & diagonal], num_cols)
    is_slash = np.isin(offsets, slash_offsets) & diagonal

    last = slice(num_rows - min(last_rows, num_rows), num_rows)
    parts = {
        "sink": is_sink,
        "band": is_band,
        "vertical": is_vertical,
        "slash": is_slash,
    }
    shares = {
        name: float(np.where(mask, rows, 0.0)[last].sum(1).mean()) for name, mask in parts.items()
    }
    shares["rest"] = max(0.0, 1.0 - sum(shares.values()))
    is_rest = outside & ~is_vertical & ~is_slash
    concentration, density = [], []
    for i in range(*last.indices(num_rows)):
        rest = np.sort(rows[i][is_rest[i]])[::-1]
        if rest.size and rest.sum() > 0:
            needed = np.searchsorted(np.cumsum(rest), 0.95 * rest.sum()) + 1
            concentration.append(min(needed, rest.size) / rest.size)
        causal_row = np.sort(rows[i][causal[i]])[::-1]
        needed = np.searchsorted(np.cumsum(causal_row), gamma * causal_row.sum()) + 1
        density.append(min(needed, causal_row.size) / causal_row.size)
    return {
        **shares,
        "vertical_columns": [int(c) for c in vertical_columns],
        "slash_offsets": [int(d) for d in slash_offsets],
        "rest_concentration": float(np.mean(concentration)) if concentration else 0.95,
        "gamma_density": float(np.mean(density)),
    }


def profile_heads(block_maps: np.ndarray, block_size: int, first_row: int = 4) -> list[dict]:
    """Profiles of every (layer, query head) from full maps of one or more texts.

    Args:
      block_maps: float[X, L, N, Tb, Tb] exact block-averaged maps of X texts.
      block_size: tokens per block.
      first_row: rows before this one (attending to almost nothing but sink and band) are left
        out of the column and diagonal identification.

    Returns:
      One dict per (layer, head), shares averaged over the texts.
    """
    num_texts, num_layers, num_heads, num_blocks, _ = block_maps.shape
    row_index = np.arange(first_row, num_blocks)
    heads = []
    for layer in range(num_layers):
        for head in range(num_heads):
            parts = [
                decompose_rows(
                    block_maps[x, layer, head, first_row:], row_index, block_size=block_size
                )
                for x in range(num_texts)
            ]
            entry = {"layer": layer, "head": head}
            for key in (*SHARES, "rest_concentration", "gamma_density"):
                entry[key] = round(float(np.mean([p[key] for p in parts])), 5)
            # Lines in tokens (offsets) or as a fraction of the text (columns), from the first text.
            entry["vertical_positions"] = [
                round(c / num_blocks, 4) for c in parts[0]["vertical_columns"]
            ]
            entry["slash_offsets_tokens"] = [d * block_size for d in parts[0]["slash_offsets"]]
            heads.append(entry)
    return heads


def load_profile(path: str | Path) -> dict:
    """Reads a profile JSON written by `main`."""
    data = json.loads(Path(path).read_text())
    if "heads" not in data or not data["heads"]:
        raise ValueError(f"{path} holds no head profiles")
    return data


def _texts(tokenizer, length: int, count: int) -> list[tuple[str, np.ndarray]]:
    """`count` windows of `length` tokens, from Emma and the essays alternately: from a text's
    middle, or earlier where the rest would hold too few tokens (about 5 characters a token)."""
    from evaluation import texts

    sources = [
        ("austen:emma", lambda: texts.load_austen_novels()["emma"]),
        ("essays", texts.load_paul_graham_essays),
    ]
    chosen = []
    for name, load in (sources * count)[:count]:
        text = load()
        start = max(0, min(len(text) // 2, len(text) - 5 * length))
        ids = tokenizer.encode(text[start : start + 12 * length], add_special_tokens=False)
        if len(ids) < length:
            raise ValueError(f"{name}: {len(ids)} tokens from character {start}, {length} needed")
        chosen.append((f"{name}@{start}", np.asarray(ids[:length], np.int32)))
    return chosen


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--length", type=int, default=2048, help="tokens per text")
    parser.add_argument("--texts", type=int, default=2, help="texts (Austen, essays, ...)")
    parser.add_argument("--map-block-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    flags.add_yarn_factor(parser)
    args = parser.parse_args(argv)
    if problem := flags.yarn_factor_problem(args.yarn_factor):
        parser.error(problem)

    from evaluation.harness.store import model_label
    from models import load_builtin
    from models.collect import BlockMapCollector, collect_block_maps
    from sharedsparse_jax.config import SharePrefillConfig

    start = time.time()
    loaded = load_builtin(args.model, yarn_factor=args.yarn_factor)
    planner = SharePrefillConfig()
    collector = BlockMapCollector(block_size=args.map_block_size, estimate_config=planner)
    maps, query_aware, names = [], [], []
    for name, tokens in _texts(loaded.tokenizer, args.length, args.texts):
        collected = collect_block_maps(loaded.model, [tokens], collector)
        maps.append(collected.block_maps[0])
        query_aware.append(collected.estimates["query_aware"][0])
        names.append(name)
        print(f"{name}: collected in {time.time() - start:.0f} s", flush=True)
    block_maps = np.stack(maps)
    heads = profile_heads(block_maps, args.map_block_size)
    query_aware_rate = np.mean(np.stack(query_aware), axis=0)  # [L, N]
    for entry in heads:
        entry["query_aware_rate"] = float(query_aware_rate[entry["layer"], entry["head"]])
    config = loaded.config
    profile = {
        "model": model_label(args.model, args.yarn_factor),
        "yarn_factor": args.yarn_factor,
        "num_layers": int(block_maps.shape[1]),
        "num_heads": int(block_maps.shape[2]),
        "num_kv_heads": int(config.num_kv_heads),
        "length": int(collected.length),
        "block_size": args.map_block_size,
        "texts": names,
        "definitions": {
            "band_tokens": 128,
            "last_rows": 2,
            "line_ratio": 5.0,
            "max_lines": 4,
            "gamma": 0.95,
            "planner_for_query_aware": "SharePrefillConfig() defaults",
        },
        "command": "python -m benchmarks.attention_profiles "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "heads": heads,
    }
    summary = {key: float(np.mean([h[key] for h in heads])) for key in SHARES}
    print("mean shares over heads:", {k: round(v, 3) for k, v in summary.items()}, flush=True)
    out = args.out or Path(f"benchmarks/profiles/{profile['model']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(profile, indent=1) + "\n")
    print(f"wrote {out} ({len(heads)} heads) in {time.time() - start:.0f} s", flush=True)
    return profile


if __name__ == "__main__":
    main()
