"""Seeded random kernel cases: every CPU-runnable implementation against the float64 oracle.

Each case draws its shapes (batch 1-2, GQA groups, T == S or T < S, lengths that end mid-block,
block sizes that do not divide T or S), dtype, causality, a random layout (the diagonal kept in
causal rows, some rows empty) and the heads whose block maps are asked for, then runs
`block_sparse_attention_with_block_map` under jit (traced layout, selection and lengths): its
output, LSE and maps cover both launches (the main one and the selected heads' recording one).
The oracle is tests/oracle/numpy_attention.py (float64 NumPy, written from the definition).

Implementations: reference, xla and triton (interpret mode) on every case; mosaic_gpu (interpret
mode, seconds a call) on cases it supports, one of them in the default suite; mosaic_tpu (TPU
interpret mode) on a few cases. What exceeds the default suite's budget is marked slow.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.block_sparse_attention import (
    BlockGeometry,
    block_sparse_attention_with_block_map,
    layout_from_mask,
)
from tests.kernels.battery import TOLERANCES, as_np
from tests.oracle import numpy_attention


@dataclasses.dataclass(frozen=True)
class FuzzCase:
    seed: int
    batch: int
    num_queries: int
    num_keys: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: object
    causal: bool

    @property
    def name(self) -> str:
        return (
            f"{self.seed}-{jnp.dtype(self.dtype).name}-B{self.batch}N{self.num_heads}"
            f"K{self.num_kv_heads}H{self.head_dim}-T{self.num_queries}S{self.num_keys}"
            f"bs{self.block_size}" + ("" if self.causal else "-noncausal")
        )

    @property
    def geometry(self) -> BlockGeometry:
        return BlockGeometry(
            num_queries=self.num_queries, num_keys=self.num_keys, block_size=self.block_size
        )


def draw_case(seed: int, *, for_mosaic_gpu: bool = False) -> FuzzCase:
    """A small random case. Block size, dtype, T == S and causality cycle with the seed, so that
    any run of a few seeds covers them; the rest is drawn. `for_mosaic_gpu` draws a case that
    mosaic_gpu runs too (bf16, head dim and block size 64)."""
    rng = np.random.default_rng(seed)
    block_size = 64 if for_mosaic_gpu else (16, 32, 64)[seed % 3]
    num_keys = int(rng.integers(block_size // 2, 4 * block_size + 1))
    if (seed // 2) % 2 == 0:
        num_queries = num_keys
    else:
        num_queries = int(rng.integers(1, num_keys + 1))
    num_kv_heads = int(rng.integers(1, 3))
    return FuzzCase(
        seed=seed,
        batch=int(rng.integers(1, 3)),
        num_queries=num_queries,
        num_keys=num_keys,
        num_heads=num_kv_heads * int(rng.integers(1, 4)),
        num_kv_heads=num_kv_heads,
        head_dim=64 if for_mosaic_gpu else int(rng.choice([32, 64])),
        block_size=block_size,
        dtype=jnp.bfloat16 if for_mosaic_gpu or seed % 2 else jnp.float32,
        causal=seed % 4 != 1,
    )


def draw_inputs(case: FuzzCase):
    """q, k, v, block mask bool[B, N, Tb, Sb], selected bool[B, N], max_selected and lengths
    int32[B], all from the case's seed."""
    rng = np.random.default_rng([case.seed, 1])
    geometry = case.geometry

    def draw(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32).astype(case.dtype)

    q = draw(case.batch, case.num_queries, case.num_heads, case.head_dim)
    k = draw(case.batch, case.num_keys, case.num_kv_heads, case.head_dim)
    v = draw(case.batch, case.num_keys, case.num_kv_heads, case.head_dim)
    shape = (case.batch, case.num_heads, geometry.num_q_blocks, geometry.num_k_blocks)
    density = rng.choice([0.0, 0.3, 0.7, 1.0], size=shape[:3] + (1,))
    mask = rng.random(shape) < density
    if case.causal:
        diagonal = geometry.diagonal_blocks()[:, None]
        cols = np.arange(geometry.num_k_blocks)
        mask = (mask | (cols == diagonal)) & (cols <= diagonal)
    # Rows that list nothing: allowed under jit (the block-map launch makes them too).
    mask &= ~(rng.random(shape[:3]) < 0.1)[..., None]
    selected = rng.random(shape[:2]) < 0.5
    selected.flat[rng.integers(selected.size)] = True
    max_selected = int(rng.integers(selected.sum(), selected.size + 1))
    # Real lengths: no padding, or ending anywhere from before the first query to the end.
    offset = case.num_keys - case.num_queries
    lengths = np.where(
        rng.random(case.batch) < 0.3,
        case.num_keys,
        rng.integers(max(offset - case.block_size, 0), case.num_keys + 1, size=case.batch),
    )
    return q, k, v, mask, selected, max_selected, lengths.astype(np.int32)


# The default suite runs the first DEFAULT_CASES seeds on reference, xla and triton and one
# case on mosaic_gpu (its interpret mode takes seconds per call); the rest is marked slow.
DEFAULT_CASES = 5
CASES = [draw_case(seed) for seed in range(32)]
MOSAIC_GPU_CASES = [draw_case(seed, for_mosaic_gpu=True) for seed in range(100, 106)]
# TPU interpret mode steps through the grid (B, N, Tb, M) in Python: seconds per case.
MOSAIC_TPU_CASES = 6


def _runs():
    """(case, implementation, interpret) triples with their marks; under
    SHAREDSPARSE_TEST_PLATFORM=gpu the compiled triton and mosaic_gpu kernels run every case
    they support (marked gpu)."""
    slow, gpu = pytest.mark.slow, pytest.mark.gpu
    runs = []
    for i, case in enumerate(CASES):
        for name in ("reference", "xla", "triton"):
            marks = () if i < DEFAULT_CASES else (slow,)
            runs.append(pytest.param(case, name, True, id=f"{name}-{case.name}", marks=marks))
        if i < MOSAIC_TPU_CASES:
            marks = (slow, pytest.mark.tpu_interpret)
            runs.append(
                pytest.param(case, "mosaic_tpu", True, id=f"mosaic_tpu-{case.name}", marks=marks)
            )
        runs.append(pytest.param(case, "triton", False, id=f"triton-gpu-{case.name}", marks=gpu))
    for i, case in enumerate(MOSAIC_GPU_CASES):
        marks = () if i == 0 else (slow,)
        runs.append(
            pytest.param(case, "mosaic_gpu", True, id=f"mosaic_gpu-{case.name}", marks=marks)
        )
        runs.append(
            pytest.param(case, "mosaic_gpu", False, id=f"mosaic_gpu-gpu-{case.name}", marks=gpu)
        )
    return runs


@pytest.mark.parametrize(("fuzz_case", "implementation", "interpret"), _runs())
def test_fuzz_matches_oracle(fuzz_case: FuzzCase, implementation: str, interpret: bool):
    case = fuzz_case
    q, k, v, mask, selected, max_selected, lengths = draw_inputs(case)
    max_blocks = max(int(mask.sum(-1).max()), 1)
    layout = layout_from_mask(jnp.asarray(mask), block_size=case.block_size, max_blocks=max_blocks)

    def run(q, k, v, layout, selected, lengths):
        return block_sparse_attention_with_block_map(
            q,
            k,
            v,
            layout,
            selected,
            lengths=lengths,
            max_selected=max_selected,
            causal=case.causal,
            implementation=implementation,
            interpret=interpret,
        )

    out, lse, block_map = jax.jit(run)(q, k, v, layout, jnp.asarray(selected), jnp.asarray(lengths))
    want_out, want_lse, probs = numpy_attention.attention(
        as_np(q), as_np(k), as_np(v), mask, case.block_size, causal=case.causal
    )
    want_map = numpy_attention.block_map(probs, case.num_keys, case.block_size, lengths)
    tol = TOLERANCES[case.dtype]
    assert out.dtype == q.dtype and out.shape == q.shape
    assert lse.dtype == jnp.float32 and lse.shape == want_lse.shape
    assert block_map.shape == mask.shape
    # Interpret-mode outputs start as NaN: finiteness shows every element was written.
    assert np.isfinite(as_np(out)).all() and np.isfinite(np.asarray(lse)).all()
    np.testing.assert_allclose(as_np(out), want_out, atol=tol["out"], rtol=0)
    np.testing.assert_allclose(np.asarray(lse, np.float64), want_lse, atol=tol["lse"], rtol=0)
    block_map = np.asarray(block_map, np.float64)
    np.testing.assert_allclose(
        block_map[selected], want_map[selected], atol=tol["block_map"], rtol=1e-4
    )
    assert (block_map[~selected] == 0).all(), "unselected heads must stay zero"
    assert (block_map[~mask] == 0).all(), "unlisted blocks must stay zero"
