"""Block-sparse attention kernels against cuDNN dense causal attention, on one GPU.

Llama-3.1-8B attention shape by default (N=32, K=8, H=128, bf16, B=1; --shape N/K/H for
another), S in {8K, 32K, 64K, 128K}, layouts with realistic structure (sink column, local band,
vertical columns, slashes) at about 100, 50, 20, 10, 5 and 2 % of the causal blocks. In one run:
correctness against the f32 reference and cuDNN, a launch-config sweep, the sweep over lengths
and densities, the cost of building a layout from a block mask, and the cost of block maps for
1 and 4 heads. Every record carries the shape (num_heads, num_kv_heads, head_dim).

    python -m benchmarks.attention --out benchmarks/results/attention_h200.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from pallas_kernels.block_sparse_attention import (
    BlockGeometry,
    block_sparse_attention_with_block_map,
    causal_layout,
    layout_from_mask,
)
from pallas_kernels.block_sparse_attention import mosaic_gpu as mosaic_backend
from pallas_kernels.block_sparse_attention import triton as triton_backend
from sharedsparse_jax.dense import dense_causal_attention


@dataclasses.dataclass(frozen=True)
class Shape:
    """The attention heads of one layer: N query heads over K kv heads, head dim H."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self):
        if min(self.num_heads, self.num_kv_heads, self.head_dim) < 1:
            raise ValueError(f"a shape needs positive N, K and H, got {self}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"N={self.num_heads} is not a multiple of K={self.num_kv_heads}")

    @classmethod
    def parse(cls, text: str) -> Shape:
        """'N/K/H', e.g. '14/2/64' (Qwen2.5-Coder-1.5B)."""
        try:
            num_heads, num_kv_heads, head_dim = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"a shape is N/K/H (e.g. 14/2/64), got {text!r}") from None
        return cls(num_heads, num_kv_heads, head_dim)

    def __str__(self) -> str:
        return f"{self.num_heads}/{self.num_kv_heads}/{self.head_dim}"

    def record(self) -> dict:
        """The shape's keys of a result record: num_heads, num_kv_heads, head_dim, and shape
        ('N/K/H')."""
        return dataclasses.asdict(self) | {"shape": str(self)}


LLAMA_8B = Shape(num_heads=32, num_kv_heads=8, head_dim=128)
BLOCK = 128
LAYOUT_PATTERNS = ("structured", "random")
DENSITIES = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02)
TUNING_CONFIGS = (
    triton_backend.TritonConfig(block_q=128, num_warps=8, num_stages=2),
    triton_backend.TritonConfig(block_q=128, num_warps=8, num_stages=3),
    triton_backend.TritonConfig(block_q=64, num_warps=4, num_stages=2),
    triton_backend.TritonConfig(block_q=64, num_warps=4, num_stages=3),
    triton_backend.TritonConfig(block_q=128, num_warps=4, num_stages=2),
)


def structured_mask(
    geometry: BlockGeometry, num_heads: int, density: float, seed: int = 0
) -> jax.Array:
    """bool[1, N, Tb, Sb] causal block mask: sink column, local band, verticals and slashes.

    Each head draws its own band width, vertical columns and slash offsets in proportions
    0.3 / 0.35 / 0.35 of a per-row block budget; the budget is bisected until the mask's share
    of causal blocks is within 3 % of `density`.
    """
    num_k = geometry.num_k_blocks
    rows = jnp.asarray(geometry.diagonal_blocks())[:, None]
    cols = jnp.arange(num_k)[None, :]
    causal = cols <= rows
    offsets = rows - cols
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(0.75, 1.25, size=(num_heads, 3))
    vertical_order = np.stack([rng.permutation(num_k) for _ in range(num_heads)])
    slash_order = np.stack([rng.permutation(num_k) for _ in range(num_heads)])

    @jax.jit
    def build(budget):
        shares = budget * jnp.asarray(jitter) * jnp.asarray([0.3, 0.35, 0.35])
        band, n_vertical, n_slash = (jnp.round(shares[:, i]).astype(jnp.int32) for i in range(3))
        rank_v = jnp.argsort(jnp.asarray(vertical_order), axis=1)  # rank of each column
        rank_s = jnp.argsort(jnp.asarray(slash_order), axis=1)
        is_vertical = rank_v < n_vertical[:, None]  # [N, Sb]
        is_slash = rank_s < n_slash[:, None]  # [N, Sb] over offsets
        mask = (
            (cols == 0)
            | (offsets[None] <= band[:, None, None])
            | is_vertical[:, None, :]
            | is_slash[:, jnp.clip(offsets, 0, num_k - 1)]
        ) & causal
        return mask[None]

    total = float(causal.sum()) * num_heads
    lo, hi = 0.0, 4.0 * num_k
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        mask = build(mid)
        achieved = float(mask.sum()) / total
        if abs(achieved - density) <= 0.03 * density:
            break
        lo, hi = (mid, hi) if achieved < density else (lo, mid)
    return mask


def random_mask(geometry: BlockGeometry, num_heads: int, density: float, seed: int = 0):
    """bool[1, N, Tb, Sb] causal block mask: the sink column, the diagonal, and each other
    causal block drawn independently with the one probability that makes the expected share of
    causal blocks `density` (issue 26's layouts)."""
    diagonal = geometry.diagonal_blocks()[:, None]
    cols = np.arange(geometry.num_k_blocks)[None, :]
    causal = cols <= diagonal
    forced = ((cols == 0) | (cols == diagonal)) & causal
    free = causal.sum() - forced.sum()
    share = (density * causal.sum() - forced.sum()) / max(free, 1)
    rng = np.random.default_rng(seed)
    drawn = rng.random((1, num_heads) + causal.shape) < np.clip(share, 0.0, 1.0)
    return jnp.asarray((drawn | forced) & causal)


def make_inputs(seq_len: int, seed: int = 0, shape: Shape = LLAMA_8B):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    num_heads, num_kv_heads, head_dim = shape.num_heads, shape.num_kv_heads, shape.head_dim
    q = jax.random.normal(keys[0], (1, seq_len, num_heads, head_dim), jnp.bfloat16)
    k = jax.random.normal(keys[1], (1, seq_len, num_kv_heads, head_dim), jnp.bfloat16)
    v = jax.random.normal(keys[2], (1, seq_len, num_kv_heads, head_dim), jnp.bfloat16)
    return q, k, v


def make_layout(
    geometry: BlockGeometry,
    density: float,
    *,
    num_heads: int = LLAMA_8B.num_heads,
    pattern: str = "structured",
    max_blocks: int | None = None,
):
    """(layout, block mask); the mask is None for the full causal layout.

    Args:
      pattern: "structured" (structured_mask) or "random" (random_mask).
      max_blocks: the lists' capacity M; None: the most blocks a row lists. Sb gives every
        density of one length the same shapes (one compile).
    """
    if density >= 1.0:
        return causal_layout(1, num_heads, geometry), None
    if pattern == "structured":
        mask = structured_mask(geometry, num_heads, density)
    elif pattern == "random":
        mask = random_mask(geometry, num_heads, density)
    else:
        raise ValueError(f"pattern must be one of {LAYOUT_PATTERNS}, got {pattern!r}")
    max_blocks = max_blocks or int(mask.sum(-1).max())
    return layout_from_mask(mask, block_size=BLOCK, max_blocks=max_blocks), mask


def active_flops(layout, geometry: BlockGeometry, shape: Shape = LLAMA_8B) -> float:
    """4 * H * bs^2 per active block, diagonal blocks counted as half (as dense causal is)."""
    blocks = float(layout.kv_block_count.sum())
    diagonal = layout.kv_block_count.size  # B * N * Tb rows, one diagonal block each
    return 4.0 * shape.head_dim * BLOCK * BLOCK * (blocks - 0.5 * diagonal)


ON_GPU = jax.default_backend() == "gpu"  # elsewhere: a dry run (XLA dense, interpreted kernel)


dense_cudnn = jax.jit(dense_causal_attention)


def sparse_kernel(backend, with_block_lse: bool = False):
    """jit(q, k, v, layout, config=None) -> out: a Pallas backend's kernel, called directly.
    With `with_block_lse`, the launch that records block LSEs for block maps (they are
    computed with the output in one kernel; only the output is returned)."""

    @functools.partial(jax.jit, static_argnames=("config",))
    def run(q, k, v, layout, config=None):
        geometry = BlockGeometry(num_queries=q.shape[1], num_keys=k.shape[1], block_size=BLOCK)
        return backend.attention(
            q,
            k,
            v,
            layout,
            sm_scale=q.shape[-1] ** -0.5,
            causal=True,
            geometry=geometry,
            with_block_lse=with_block_lse,
            interpret=not ON_GPU,
            config=config,
        ).out

    return run


sparse_triton = sparse_kernel(triton_backend)
sparse_mosaic = sparse_kernel(mosaic_backend)
recording_triton = sparse_kernel(triton_backend, with_block_lse=True)
recording_mosaic = sparse_kernel(mosaic_backend, with_block_lse=True)


def causal_flops(seq_len: int, shape: Shape = LLAMA_8B) -> float:
    """FLOPs of dense causal attention at a shape (half of the full square)."""
    return 4.0 * shape.num_heads * shape.head_dim * seq_len * seq_len / 2


def kernel_record(
    layout,
    geometry: BlockGeometry,
    target_density: float,
    time_s: float,
    dense_time_s: float,
    shape: Shape = LLAMA_8B,
) -> dict:
    """A sparse kernel's time at one shape, length and layout, beside cuDNN dense causal's."""
    dense_flops = causal_flops(geometry.num_queries, shape)
    return shape.record() | {
        "seq_len": geometry.num_queries,
        "target_density": target_density,
        "density": float(layout.density(geometry).mean()),
        "time_ms": time_s * 1e3,
        "dense_time_ms": dense_time_s * 1e3,
        "dense_tflops": dense_flops / dense_time_s / 1e12,
        "tflops_active": active_flops(layout, geometry, shape) / time_s / 1e12,
        "speedup": dense_time_s / time_s,
        "max_blocks": layout.max_blocks,
    }


def check_correctness(
    seq_len: int,
    implementation: str = "triton",
    kernel: Callable = sparse_triton,
    shape: Shape = LLAMA_8B,
) -> list[dict]:
    """A kernel vs the f32 reference (sparse, with maps) and vs cuDNN (full causal).

    Args:
      seq_len: the sparse check's length (the full causal one rounds it down to even).
      implementation: the block_sparse_attention implementation checked.
      kernel: the same implementation's `sparse_kernel`, for the full causal check.
      shape: the heads checked; maps for heads 0, 5 and 17 (those of them the shape has).

    Returns:
      One record per check: check, max_abs_err, rel_err and the shape's keys.
    """
    records = []
    q, k, v = make_inputs(seq_len, seed=1, shape=shape)
    geometry = BlockGeometry(num_queries=seq_len, num_keys=seq_len, block_size=BLOCK)
    layout, _ = make_layout(geometry, 0.1, num_heads=shape.num_heads)
    map_heads = jnp.array([h for h in (0, 5, 17) if h < shape.num_heads])
    selected = jnp.zeros((1, shape.num_heads), bool).at[0, map_heads].set(True)
    got = block_sparse_attention_with_block_map(
        q,
        k,
        v,
        layout,
        selected,
        max_selected=4,
        implementation=implementation,
        interpret=not ON_GPU,
    )
    want = block_sparse_attention_with_block_map(
        q, k, v, layout, selected, max_selected=4, implementation="reference"
    )
    names = ("out", "lse", "block_map")
    for name, a, b in zip(names, got, want, strict=True):
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
        records.append(
            shape.record()
            | {
                "check": f"{implementation} vs reference {name}, S={seq_len}, 10%",
                "max_abs_err": float(jnp.abs(a - b).max()),
                "rel_err": float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)),
            }
        )
    row_sums = got[2].sum(-1)[selected]
    records.append(
        shape.record()
        | {
            "check": "block map rows sum to 1 (selected heads)",
            "max_abs_err": float(jnp.abs(row_sums - 1).max()),
            "rel_err": 0.0,
        }
    )
    seq_len = 2 * (seq_len // 2)
    q, k, v = make_inputs(seq_len, seed=2, shape=shape)
    geometry = BlockGeometry(num_queries=seq_len, num_keys=seq_len, block_size=BLOCK)
    a = kernel(q, k, v, causal_layout(1, shape.num_heads, geometry)).astype(jnp.float32)
    b = dense_cudnn(q, k, v).astype(jnp.float32)
    records.append(
        shape.record()
        | {
            "check": f"{implementation} full causal vs cuDNN, S={seq_len}",
            "max_abs_err": float(jnp.abs(a - b).max()),
            "rel_err": float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)),
        }
    )
    return records


def tune(seq_len: int, shape: Shape = LLAMA_8B) -> tuple[triton_backend.TritonConfig, list[dict]]:
    q, k, v = make_inputs(seq_len, shape=shape)
    geometry = BlockGeometry(num_queries=seq_len, num_keys=seq_len, block_size=BLOCK)
    layouts = {d: make_layout(geometry, d, num_heads=shape.num_heads)[0] for d in (1.0, 0.1)}
    records, totals = [], {}
    for config in TUNING_CONFIGS:
        totals[config] = 0.0
        for density, layout in layouts.items():
            t = timing.time_call(sparse_triton, q, k, v, layout, config=config)
            totals[config] += t
            records.append(
                shape.record()
                | {
                    "seq_len": seq_len,
                    "target_density": density,
                    "block_q": config.block_q,
                    "num_warps": config.num_warps,
                    "num_stages": config.num_stages,
                    "time_ms": t * 1e3,
                    "tflops_active": active_flops(layout, geometry, shape) / t / 1e12,
                }
            )
    best = min(totals, key=totals.get)
    return best, records


def sweep(seq_lens, config, shape: Shape = LLAMA_8B) -> tuple[list[dict], list[dict], list[dict]]:
    kernel_records, layout_records, map_records = [], [], []
    for seq_len in seq_lens:
        q, k, v = make_inputs(seq_len, shape=shape)
        geometry = BlockGeometry(num_queries=seq_len, num_keys=seq_len, block_size=BLOCK)
        dense_time = timing.time_call(dense_cudnn, q, k, v)
        for density in DENSITIES:
            layout, mask = make_layout(geometry, density, num_heads=shape.num_heads)
            t = timing.time_call(sparse_triton, q, k, v, layout, config=config)
            record = kernel_record(layout, geometry, density, t, dense_time, shape)
            achieved = record["density"]
            kernel_records.append(
                {"implementation": "triton"}
                | record
                | {"config": f"bq{config.block_q}w{config.num_warps}s{config.num_stages}"}
            )
            if density == 0.1:
                max_blocks = layout.max_blocks
                build = jax.jit(
                    functools.partial(layout_from_mask, block_size=BLOCK, max_blocks=max_blocks)
                )
                t_build = timing.time_call(build, mask)
                layout_records.append(
                    shape.record()
                    | {
                        "seq_len": seq_len,
                        "density": achieved,
                        "layout_ms": t_build * 1e3,
                        "kernel_ms": t * 1e3,
                        "layout_fraction": t_build / t,
                    }
                )
            if density in (1.0, 0.1):
                for num_selected in (1, 4):
                    selected = jnp.zeros((1, shape.num_heads), bool)
                    selected = selected.at[0, :num_selected].set(True)
                    with_map = jax.jit(
                        functools.partial(
                            block_sparse_attention_with_block_map,
                            max_selected=num_selected,
                            implementation="triton",
                            interpret=not ON_GPU,
                        )
                    )
                    t_map = timing.time_call(with_map, q, k, v, layout, selected)
                    per_head = t / shape.num_heads
                    map_records.append(
                        shape.record()
                        | {
                            "seq_len": seq_len,
                            "density": achieved,
                            "heads": num_selected,
                            "plain_ms": t * 1e3,
                            "with_map_ms": t_map * 1e3,
                            "map_cost_ms": (t_map - t) * 1e3,
                            "cost_per_head_attention": (t_map - t) / num_selected / per_head,
                        }
                    )
    return kernel_records, layout_records, map_records


def break_even(records: list[dict], shape: Shape = LLAMA_8B) -> list[dict]:
    """Density at which the kernel matches cuDNN dense, interpolated per length."""
    out = []
    for seq_len in sorted({r["seq_len"] for r in records}):
        rows = sorted((r for r in records if r["seq_len"] == seq_len), key=lambda r: r["density"])
        dens = np.array([r["density"] for r in rows])
        speed = np.array([r["speedup"] for r in rows])
        above = np.nonzero(speed < 1.0)[0]
        if len(above) == 0:
            value = float("inf")  # faster than dense even at full causal
        else:
            i = above[0]
            value = float(np.interp(1.0, speed[[i, i - 1]], dens[[i, i - 1]])) if i else 0.0
        out.append(shape.record() | {"seq_len": seq_len, "break_even_density": value})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[8192, 32768, 65536, 131072])
    parser.add_argument("--tune-seq-len", type=int, default=32768)
    parser.add_argument("--check-seq-len", type=int, default=4096 + 77)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--shape", type=Shape.parse, default=LLAMA_8B, help="N/K/H (default 32/8/128)"
    )
    args = parser.parse_args()
    meta = timing.environment()
    print(meta, flush=True)
    checks = check_correctness(args.check_seq_len, shape=args.shape)
    timing.print_table(checks, ["check", "max_abs_err", "rel_err"])
    best, tuning = tune(args.tune_seq_len, args.shape)
    timing.print_table(
        tuning,
        [
            "seq_len",
            "target_density",
            "block_q",
            "num_warps",
            "num_stages",
            "time_ms",
            "tflops_active",
        ],
    )
    print("chosen config:", best, flush=True)
    kernels, layouts, maps = sweep(args.seq_lens, best, args.shape)
    even = break_even(kernels, args.shape)
    out = args.out or Path(f"benchmarks/results/attention_{timing.gpu_tag()}.json")
    records = (
        kernels
        + [dict(r, kind="layout") for r in layouts]
        + [dict(r, kind="block_map") for r in maps]
        + [dict(r, kind="tuning") for r in tuning]
        + [dict(r, kind="check") for r in checks]
        + [dict(r, kind="break_even") for r in even]
    )
    timing.write_records(out, records, meta)
    timing.print_table(
        maps,
        [
            "seq_len",
            "density",
            "heads",
            "plain_ms",
            "with_map_ms",
            "map_cost_ms",
            "cost_per_head_attention",
        ],
    )
    timing.print_table(layouts, ["seq_len", "density", "layout_ms", "kernel_ms", "layout_fraction"])
    timing.print_table(even, ["seq_len", "break_even_density"])
    timing.print_table(
        kernels,
        [
            "seq_len",
            "target_density",
            "density",
            "time_ms",
            "dense_time_ms",
            "tflops_active",
            "speedup",
        ],
    )


if __name__ == "__main__":
    main()
