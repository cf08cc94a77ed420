"""The block-map launch at the real models' shape on one GPU: compile and run timed apart.

`block_sparse_attention_with_block_map` runs the selected heads in a recording launch and every
other head in the main launch, where the selected heads' rows list no block. Calibration selects
every head (`models.collect`), SharePrefill its pivots. This times, at Qwen2.5-Coder's attention
shape (14 query heads over 2 kv heads, head dim 64, blocks of 128, bf16), on a full causal
layout:

- `layer`: one layer's launch with 2 heads selected, then with all 14, compile and run apart;
- `collect`: a calibration window, the prefill of random weights of Qwen's shape through the
  map collector (`models.collect.BlockMapCollector`), three windows in a row.

A launch that never returns is the finding: run it under `timeout`. On a CPU it runs the XLA
implementation (`--implementation xla`), a check that the command runs.

    timeout 60 python -m benchmarks.diagnostics.block_map_launch layer --seq-len 16384
    timeout 90 python -m benchmarks.diagnostics.block_map_launch collect --seq-len 16384
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import attention as bench
from pallas_kernels.block_sparse_attention import (
    BlockGeometry,
    block_sparse_attention_with_block_map,
    causal_layout,
)

QWEN_HEADS = bench.Shape(num_heads=14, num_kv_heads=2, head_dim=64)


def layer(seq_len: int, implementation: str | None, say) -> None:
    """One layer's launch with 2 and then all heads selected (one compiled program)."""
    q, k, v = bench.make_inputs(seq_len, shape=QWEN_HEADS)
    geometry = BlockGeometry(num_queries=seq_len, num_keys=seq_len, block_size=bench.BLOCK)
    layout = causal_layout(1, QWEN_HEADS.num_heads, geometry)
    launch = jax.jit(
        lambda q, k, v, layout, selected: block_sparse_attention_with_block_map(
            q, k, v, layout, selected, implementation=implementation
        )
    )
    everyone = jnp.ones((1, QWEN_HEADS.num_heads), bool)
    compiled = None
    for name, selected in (("2 heads", everyone.at[:, 2:].set(False)), ("all heads", everyone)):
        if compiled is None:
            lowered = launch.lower(q, k, v, layout, selected)
            say(f"{name}: lowered")
            compiled = lowered.compile()
            say(f"{name}: compiled")
        for run in range(2):
            start = time.perf_counter()
            jax.block_until_ready(compiled(q, k, v, layout, selected))
            say(f"{name}: run {run}: {(time.perf_counter() - start) * 1e3:.2f} ms")


def collect(seq_len: int, implementation: str | None, say) -> None:
    """Three calibration windows of random token ids through the map collector."""
    from benchmarks.prefill_latency import QWEN2_5_0_5B
    from models import generate
    from models.collect import BlockMapCollector
    from models.random_weights import random_model
    from sharedsparse_jax.config import SharePrefillConfig

    model = random_model(QWEN2_5_0_5B, seed=0, dtype=jnp.bfloat16)
    tokens = np.random.default_rng(0).integers(0, QWEN2_5_0_5B.vocab_size, (1, seq_len))
    collector = BlockMapCollector(
        block_size=bench.BLOCK, estimate_config=SharePrefillConfig(), implementation=implementation
    )
    for window in range(3):
        start = time.perf_counter()
        result = generate.prefill(model, tokens, attention=collector)
        maps = np.asarray(result.stats["block_map"])
        seconds = time.perf_counter() - start
        say(f"window {window}: {seconds:.2f} s, last map row sums to {maps[0, 0, 0, -1].sum():.4f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("layer", "collect"))
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument(
        "--implementation",
        default=None,
        help="block-sparse implementation (default: the best for the device)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    tag = f"[{args.mode} {args.implementation or 'default'} {args.seq_len}]"

    def say(message: str) -> None:
        print(f"{tag} {time.perf_counter() - started:7.2f}s {message}", flush=True)

    {"layer": layer, "collect": collect}[args.mode](args.seq_len, args.implementation, say)


if __name__ == "__main__":
    main()
