"""Planner overhead for one Llama-3.1-8B-shaped layer, against that layer's cuDNN attention.

N=32 query / K=8 kv heads, H=128, bf16, B=1, at 32K and 128K. The planner's work is timed as
the models pay it: plan_layer (estimation, query-aware test, classification, every head's
block mask), layout_from_mask (block lists for the kernel) and absorb_pivot_maps (pivot
patterns and vs_ratios). The table puts the layer's heads in four shared clusters and
tau_qa = 0, so every cluster gets a pivot and the absorb step does its full work.

Parts timed on their own: the estimation with the default and with the XLA profiles (and the
largest difference between their profiles), the profiles alone, and the query-aware selection
(computed for every head, used by the query-aware ones). `--profile-launches` also times the
Triton profiles kernel's launch configurations.

    python -m benchmarks.planner_overhead --out benchmarks/results/planner_overhead_h200.json
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks import timing
from pallas_kernels.block_sparse_attention import layout_from_mask
from pallas_kernels.query_block_profiles import query_block_profiles
from pallas_kernels.query_block_profiles import triton as profiles_triton
from sharedsparse_jax import estimate, patterns, planner
from sharedsparse_jax.config import SharePrefillConfig
from sharedsparse_jax.dense import dense_causal_attention
from sharedsparse_jax.sharing import SharingState, SharingTable
from sharedsparse_jax.stats import layer_stats

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 32, 8, 128


def structured_inputs(seq_len: int, seed: int = 0):
    """q, k, v with a sink and a local band on top of noise (not uniform attention)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    positions = jnp.arange(seq_len, dtype=jnp.float32)[:, None]
    frequencies = 1.0 / (10.0 ** jnp.linspace(0.0, 3.0, HEAD_DIM // 4))
    local = jnp.concatenate(
        [jnp.cos(positions * frequencies), jnp.sin(positions * frequencies)], axis=1
    )  # [S, H/2]
    local = jnp.pad(local, ((0, 0), (0, HEAD_DIM // 2)))
    q = jax.random.normal(keys[0], (1, seq_len, NUM_HEADS, HEAD_DIM)) + 2.0 * local[None, :, None]
    k = (
        jax.random.normal(keys[1], (1, seq_len, NUM_KV_HEADS, HEAD_DIM))
        + 2.0 * local[None, :, None]
    )
    k = k.at[:, 0].add(6.0)  # a sink
    v = jax.random.normal(keys[2], (1, seq_len, NUM_KV_HEADS, HEAD_DIM))
    return q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16)


def scaled_last_block(q: jax.Array, block_size: int) -> jax.Array:
    """The last block's queries scaled by 1/sqrt(H), as the estimation hands them to the
    profiles kernel."""
    return (q[:, -block_size:].astype(jnp.float32) * HEAD_DIM**-0.5).astype(q.dtype)


def make_table() -> SharingTable:
    clusters = {str(c): [[0, h] for h in range(NUM_HEADS) if h % 4 == c] for c in range(4)}
    return SharingTable.from_json_dict(
        {"clusters": clusters, "shared_clusters": list(clusters)}, num_layers=1, num_heads=NUM_HEADS
    )


def measure(seq_len: int, config: SharePrefillConfig, table: SharingTable) -> dict:
    q, k, v = structured_inputs(seq_len)
    lengths = jnp.asarray([seq_len], jnp.int32)
    tb = -(-seq_len // config.block_size)
    state = SharingState.initial(1, table.num_shared, tb)

    dense = jax.jit(dense_causal_attention)

    @functools.partial(jax.jit, static_argnames="implementation")
    def only_estimate(q, k, implementation=None):
        return estimate.estimate_last_block(q, k, lengths, config, implementation=implementation)

    start = lengths - config.block_size
    last_q = scaled_last_block(q, config.block_size)

    @functools.partial(jax.jit, static_argnames="implementation")
    def profiles(last_q, k, implementation=None):
        return query_block_profiles(last_q, k, start, implementation=implementation)

    @jax.jit
    def query_aware(q, k):
        return patterns.query_aware_selection(
            q, k, lengths, config.block_size, config.gamma, quirks=False
        )

    @jax.jit
    def plan(q, k, state):
        return planner.plan_layer(q, k, state, layer=0, lengths=lengths, config=config, table=table)

    build_layout = jax.jit(functools.partial(layout_from_mask, block_size=config.block_size))

    @jax.jit
    def absorb(state, layer_plan, maps):
        return planner.absorb_pivot_maps(
            state, layer_plan, maps, layer=0, lengths=lengths, config=config, table=table
        )

    layer_plan, planned_state = plan(q, k, state)
    # Stand-in maps for the pivots (rows normalised like real block-averaged maps).
    raw = jax.random.uniform(jax.random.PRNGKey(1), layer_plan.block_mask.shape)
    maps = jnp.where(layer_plan.block_mask, raw, 0.0)
    maps = maps / maps.sum(-1, keepdims=True)

    t_dense = timing.time_call(dense, q, k, v)
    t_estimate = timing.time_call(only_estimate, q, k)
    t_estimate_xla = timing.time_call(only_estimate, q, k, implementation="xla")
    t_profiles = timing.time_call(profiles, last_q, k)
    t_query_aware = timing.time_call(query_aware, q, k)
    profiles_difference = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(profiles(last_q, k), profiles(last_q, k, implementation="xla"), strict=True)
    )
    t_plan = timing.time_call(plan, q, k, state)
    t_layout = timing.time_call(build_layout, layer_plan.block_mask)
    t_absorb = timing.time_call(absorb, planned_state, layer_plan, maps)
    total = t_plan + t_layout + t_absorb
    stats = layer_stats(layer_plan, lengths, config.block_size)
    return {
        "seq_len": seq_len,
        "dense_attention_ms": t_dense * 1e3,
        "estimate_ms": t_estimate * 1e3,
        "estimate_xla_profiles_ms": t_estimate_xla * 1e3,
        "profiles_ms": t_profiles * 1e3,
        "profiles_max_abs_diff_vs_xla": profiles_difference,
        "query_aware_ms": t_query_aware * 1e3,
        "plan_layer_ms": t_plan * 1e3,
        "layout_ms": t_layout * 1e3,
        "absorb_ms": t_absorb * 1e3,
        "planner_ms": total * 1e3,
        "overhead_fraction_of_dense": total / t_dense,
        "num_pivot": int(stats["num_pivot"][0]),
        "density": float(stats["density"][0]),
    }


PROFILE_LAUNCHES = ((4, 4), (8, 4), (16, 4), (8, 8), (16, 8))  # (tiles per program, warps)


def profiles_launch_sweep(seq_len: int, block_size: int) -> list[dict]:
    """The Triton profiles kernel's time for each launch in PROFILE_LAUNCHES."""
    q, k, _ = structured_inputs(seq_len)
    last_q = scaled_last_block(q, block_size)
    start = jnp.asarray([seq_len - block_size], jnp.int32)
    records = []
    for tiles, warps in PROFILE_LAUNCHES:
        launch = profiles_triton.TritonConfig(tiles_per_program=tiles, num_warps=warps)
        run = jax.jit(functools.partial(profiles_triton.profiles, config=launch))
        records.append(
            {
                "seq_len": seq_len,
                "profiles_tiles_per_program": tiles,
                "profiles_num_warps": warps,
                "profiles_ms": timing.time_call(run, last_q, k, start) * 1e3,
            }
        )
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument(
        "--profile-launches", action="store_true", help="also time the profiles kernel's launches"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    meta = timing.environment()
    print(meta, flush=True)
    config = SharePrefillConfig(tau_qa=0.0)
    table = make_table()
    records = [measure(seq_len, config, table) for seq_len in args.seq_lens]
    sweep = []
    if args.profile_launches:
        sweep = [r for n in args.seq_lens for r in profiles_launch_sweep(n, config.block_size)]
    out = args.out or Path(f"benchmarks/results/planner_overhead_{timing.gpu_tag()}.json")
    timing.write_records(out, records + sweep, meta)
    if sweep:
        timing.print_table(sweep, list(sweep[0]))
    timing.print_table(
        records,
        [
            "seq_len",
            "dense_attention_ms",
            "estimate_ms",
            "estimate_xla_profiles_ms",
            "profiles_ms",
            "profiles_max_abs_diff_vs_xla",
            "query_aware_ms",
            "plan_layer_ms",
            "layout_ms",
            "absorb_ms",
            "planner_ms",
            "overhead_fraction_of_dense",
            "num_pivot",
            "density",
        ],
    )


if __name__ == "__main__":
    main()
