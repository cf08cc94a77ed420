"""The shared test battery for every block-sparse attention implementation.

Each implementation's test module subclasses `Battery` with its name and the cases it can run
(TPU interpret mode is slow, so its cases are tiny). Every case draws fresh random inputs and a
fresh random layout and compares against the float64 NumPy oracle.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.block_sparse_attention import (
    BlockGeometry,
    block_sparse_attention,
    block_sparse_attention_with_block_map,
    layout_from_mask,
)
from tests.oracle import numpy_attention

# Largest allowed |got - want| for out and for lse, per input dtype, against float64.
TOLERANCES = {
    jnp.float32: {"out": 2e-5, "lse": 2e-5, "block_map": 1e-6},
    jnp.float16: {"out": 4e-3, "lse": 2e-3, "block_map": 1e-3},
    jnp.bfloat16: {"out": 3e-2, "lse": 1.5e-2, "block_map": 1e-2},
}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    batch: int = 2
    num_queries: int = 256
    num_keys: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    block_size: int = 64
    dtype: object = jnp.float32
    pattern: str = "random"  # random | diagonal | full | sink_diagonal | mixed

    def __str__(self):
        return self.name


CASES = (
    Case("base"),
    Case("gqa1", num_heads=3, num_kv_heads=3),
    Case("gqa3", num_heads=6, num_kv_heads=2),
    Case("gqa4", num_heads=8, num_kv_heads=2),
    Case("gqa8", num_heads=8, num_kv_heads=1, batch=1),
    Case("ragged_T", num_queries=200, num_keys=200),
    Case("chunk_offset_unaligned", num_queries=100, num_keys=300),
    Case("chunk_offset_aligned", num_queries=128, num_keys=320),
    Case("single_query", num_queries=1, num_keys=150),
    Case("diagonal_only", pattern="diagonal"),
    Case("full_rows", pattern="full"),
    Case("sink_and_diagonal", pattern="sink_diagonal"),
    Case("mixed_densities", pattern="mixed", num_heads=4, batch=2),
    Case("bf16", dtype=jnp.bfloat16, head_dim=128),
    Case("f16", dtype=jnp.float16, head_dim=128, num_queries=200, num_keys=200),
    Case("head_dim_128_block_128", head_dim=128, block_size=128, num_queries=300, num_keys=300),
)

TINY_CASES = (
    Case("tiny", batch=1, num_queries=96, num_keys=128, num_heads=2, num_kv_heads=1, block_size=32),
    Case(
        "tiny_gqa3_ragged",
        batch=1,
        num_queries=70,
        num_keys=70,
        num_heads=3,
        num_kv_heads=1,
        block_size=32,
        pattern="mixed",
    ),
    Case(
        "tiny_bf16",
        batch=1,
        num_queries=64,
        num_keys=96,
        num_heads=2,
        num_kv_heads=2,
        block_size=32,
        head_dim=128,
        dtype=jnp.bfloat16,
    ),
)


def random_block_mask(rng: np.random.Generator, case: Case) -> np.ndarray:
    """bool[B, N, Tb, Sb] causal mask with the diagonal always listed."""
    geometry = BlockGeometry(
        num_queries=case.num_queries, num_keys=case.num_keys, block_size=case.block_size
    )
    shape = (case.batch, case.num_heads, geometry.num_q_blocks, geometry.num_k_blocks)
    diagonal = geometry.diagonal_blocks()[:, None]
    cols = np.arange(geometry.num_k_blocks)[None, :]
    pattern = case.pattern
    if pattern == "mixed":  # every row draws its own density, from empty to full
        density = rng.choice([0.0, 0.1, 0.5, 1.0], size=shape[:3] + (1,))
        mask = rng.random(shape) < density
    elif pattern == "random":
        mask = rng.random(shape) < rng.uniform(0.2, 0.7)
    elif pattern == "diagonal":
        mask = np.zeros(shape, bool)
    elif pattern == "full":
        mask = np.ones(shape, bool)
    elif pattern == "sink_diagonal":
        mask = np.broadcast_to(cols == 0, shape).copy()
    else:
        raise ValueError(pattern)
    return (mask | (cols == diagonal)) & (cols <= diagonal)


def make_inputs(rng: np.random.Generator, case: Case):
    def draw(shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32).astype(case.dtype)

    q = draw((case.batch, case.num_queries, case.num_heads, case.head_dim))
    k = draw((case.batch, case.num_keys, case.num_kv_heads, case.head_dim))
    v = draw((case.batch, case.num_keys, case.num_kv_heads, case.head_dim))
    return q, k, v


def as_np(x):
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


class Battery:
    """Subclass with `implementation`, and optionally `cases`, `smoke_cases` and `interpret`.

    `cases` run the numerical checks, `map_cases` the block maps, `smoke_cases` the properties
    that do not depend on shapes (determinism, jit).
    """

    implementation: str = ""
    cases: tuple[Case, ...] = CASES
    map_cases: tuple[Case, ...] = tuple(
        c
        for c in CASES
        if c.name
        in {
            "base",
            "gqa3",
            "ragged_T",
            "chunk_offset_unaligned",
            "mixed_densities",
            "bf16",
            "single_query",
        }
    )
    smoke_cases: tuple[Case, ...] = (CASES[0], CASES[5])
    interpret: bool = True

    def run(self, q, k, v, layout, **kwargs):
        return block_sparse_attention(
            q,
            k,
            v,
            layout,
            implementation=self.implementation,
            interpret=self.interpret,
            **kwargs,
        )

    def test_matches_oracle(self, case: Case, rng):
        q, k, v = make_inputs(rng, case)
        mask = random_block_mask(rng, case)
        layout = layout_from_mask(jnp.asarray(mask), block_size=case.block_size)
        out, lse = self.run(q, k, v, layout, return_lse=True)
        want_out, want_lse, _ = numpy_attention.attention(
            as_np(q), as_np(k), as_np(v), mask, case.block_size
        )
        tol = TOLERANCES[case.dtype]
        assert out.dtype == q.dtype and out.shape == q.shape
        assert lse.dtype == jnp.float32
        assert lse.shape == (case.batch, case.num_heads, case.num_queries)
        # Interpret-mode outputs start as NaN, so finiteness shows every element was written.
        assert np.isfinite(as_np(out)).all() and np.isfinite(np.asarray(lse)).all()
        np.testing.assert_allclose(as_np(out), want_out, atol=tol["out"], rtol=0)
        np.testing.assert_allclose(np.asarray(lse, np.float64), want_lse, atol=tol["lse"], rtol=0)

    def test_block_maps(self, map_case: Case, rng):
        case = map_case
        q, k, v = make_inputs(rng, case)
        mask = random_block_mask(rng, case)
        layout = layout_from_mask(jnp.asarray(mask), block_size=case.block_size)
        selected = rng.random((case.batch, case.num_heads)) < 0.5
        selected[0, -1] = True  # at least one
        out, lse, block_map = block_sparse_attention_with_block_map(
            q,
            k,
            v,
            layout,
            jnp.asarray(selected),
            max_selected=min(int(selected.sum()) + 1, selected.size),
            implementation=self.implementation,
            interpret=self.interpret,
        )
        want_out, want_lse, probs = numpy_attention.attention(
            as_np(q), as_np(k), as_np(v), mask, case.block_size
        )
        want_map = numpy_attention.block_map(probs, case.num_keys, case.block_size)
        tol = TOLERANCES[case.dtype]
        np.testing.assert_allclose(as_np(out), want_out, atol=tol["out"], rtol=0)
        np.testing.assert_allclose(np.asarray(lse, np.float64), want_lse, atol=tol["lse"], rtol=0)
        block_map = np.asarray(block_map, np.float64)
        assert block_map.dtype == np.float64 and np.isfinite(block_map).all()
        np.testing.assert_allclose(
            block_map[selected], want_map[selected], atol=tol["block_map"], rtol=1e-4
        )
        assert (block_map[~selected] == 0).all(), "unselected heads must stay zero"
        np.testing.assert_allclose(block_map[selected].sum(-1), 1.0, atol=1e-5)
        assert (block_map[selected][~mask[selected]] == 0).all(), "unlisted blocks must be zero"

    def test_deterministic(self, smoke_case: Case, rng):
        case = smoke_case
        q, k, v = make_inputs(rng, case)
        layout = layout_from_mask(
            jnp.asarray(random_block_mask(rng, case)), block_size=case.block_size
        )
        first = self.run(q, k, v, layout, return_lse=True)
        second = self.run(q, k, v, layout, return_lse=True)
        for a, b in zip(first, second, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def test_under_jit_matches_eager(self, smoke_case: Case, rng):
        case = smoke_case
        q, k, v = make_inputs(rng, case)
        layout = layout_from_mask(
            jnp.asarray(random_block_mask(rng, case)), block_size=case.block_size
        )
        eager = self.run(q, k, v, layout)
        jitted = jax.jit(lambda q, k, v, layout: self.run(q, k, v, layout))(q, k, v, layout)
        # XLA may fuse differently inside an outer jit: equal up to rounding, not bit-equal.
        np.testing.assert_allclose(
            as_np(eager), as_np(jitted), atol=TOLERANCES[case.dtype]["out"] / 4, rtol=0
        )
