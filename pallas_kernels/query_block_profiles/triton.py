"""Pallas Triton implementation: two launches over key tiles, no [Q, S] float32 tensor.

1. Scores: each program takes one query head and a run of key tiles, computes q . k on the
   tensor cores, stores the scores in the inputs' precision and each tile's per-row
   log-sum-exp (GQA native: query head n reads kv head n // G, and the G heads of a group run
   side by side so their K tiles are read from L2).
2. Profiles: with the rows' final log-sum-exp, each program turns a run of score tiles into
   softmax probabilities twice: as stored, summed over the queries for the column profile, and
   read along diagonals (a gather of offset d from key start + i - d in row i) for the diagonal
   profile. One read of the scores each, no skew copy.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from pallas_kernels.block_sparse_attention.common import MASK_VALUE

SUPPORTED_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
KEY_TILE = 128


@dataclasses.dataclass(frozen=True, kw_only=True)
class TritonConfig:
    """Launch parameters: key tiles per program and the Triton warp and stage counts."""

    tiles_per_program: int = 8
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        if self.tiles_per_program < 1:
            raise ValueError(f"tiles_per_program must be >= 1, got {self.tiles_per_program}")


def check_supported(q: jax.Array, interpret: bool) -> None:
    """Raises NotImplementedError with the reason when this backend cannot run the call."""
    num_queries, head_dim = q.shape[1], q.shape[3]
    if q.dtype not in SUPPORTED_DTYPES:
        raise NotImplementedError(f"triton profiles support bf16, f16 and f32, got {q.dtype}")
    for name, size in (("query count", num_queries), ("head dim", head_dim)):
        if size < 16 or size & (size - 1):
            raise NotImplementedError(
                f"triton profiles need a power-of-two {name} >= 16, got {size}"
            )
    if not interpret and jax.default_backend() != "gpu":
        raise NotImplementedError("triton profiles need a GPU (or interpret=True)")


def _scores_kernel(start_ref, q_ref, k_ref, scores_ref, tile_lse_ref, *, num_keys, precision):
    """scores_ref: [Q, tiles * KEY_TILE] of this program's run; tile_lse_ref: [tiles, Q]."""
    tiles = tile_lse_ref.shape[0]
    q = q_ref[...]
    num_queries = q.shape[0]
    first_key = pl.program_id(1) * tiles * KEY_TILE
    q_pos = start_ref[0] + jax.lax.broadcasted_iota(jnp.int32, (num_queries, KEY_TILE), 0)
    offsets = jax.lax.broadcasted_iota(jnp.int32, (num_queries, KEY_TILE), 1)

    def body(t, _):
        column = pl.multiple_of(t * KEY_TILE, KEY_TILE)
        k = k_ref[pl.ds(first_key + column, KEY_TILE), :]
        s = jax.lax.dot_general(
            q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32, precision=precision
        ).astype(scores_ref.dtype)
        scores_ref[:, pl.ds(column, KEY_TILE)] = s
        key = first_key + column + offsets
        s = jnp.where((key <= q_pos) & (key < num_keys), s.astype(jnp.float32), MASK_VALUE)
        m = jnp.max(s, axis=1)
        lse = m + jnp.log(jnp.sum(jnp.exp(s - m[:, None]), axis=1))
        tile_lse_ref[pl.ds(t, 1), :] = lse[None, :]

    jax.lax.fori_loop(0, tiles, body, None)


def _profiles_kernel(start_ref, lse_ref, scores_ref, column_ref, diagonal_ref, *, num_keys):
    """scores_ref: [Q, Sp] of this head; column_ref, diagonal_ref: this program's run."""
    tiles = column_ref.shape[0] // KEY_TILE
    lse = lse_ref[...]
    num_queries = lse.shape[0]
    first_key = pl.program_id(1) * tiles * KEY_TILE
    rows = jax.lax.broadcasted_iota(jnp.int32, (num_queries, KEY_TILE), 0)
    offsets = jax.lax.broadcasted_iota(jnp.int32, (num_queries, KEY_TILE), 1)
    q_pos = start_ref[0] + rows

    def mean_probability(scores, valid):
        p = jnp.where(valid, jnp.exp(scores.astype(jnp.float32) - lse[:, None]), 0.0)
        return jnp.sum(p, axis=0) / num_queries

    def body(t, _):
        column = pl.multiple_of(t * KEY_TILE, KEY_TILE)
        first = first_key + column
        key = first + offsets
        stored = scores_ref[:, pl.ds(first, KEY_TILE)]
        column_ref[pl.ds(column, KEY_TILE)] = mean_probability(
            stored, (key <= q_pos) & (key < num_keys)
        )
        # Offset d = first + offset reads key start + i - d of row i, never past the query.
        diagonal_key = q_pos - key
        on_diagonal = scores_ref[rows, jnp.clip(diagonal_key, 0, scores_ref.shape[1] - 1)]
        diagonal_ref[pl.ds(column, KEY_TILE)] = mean_probability(
            on_diagonal, (diagonal_key >= 0) & (diagonal_key < num_keys)
        )

    jax.lax.fori_loop(0, tiles, body, None)


def profiles(
    q: jax.Array,
    k: jax.Array,
    query_start: jax.Array,
    *,
    interpret: bool = False,
    config: TritonConfig | None = None,
) -> tuple[jax.Array, jax.Array]:
    """See api.query_block_profiles."""
    check_supported(q, interpret)
    config = config or TritonConfig()
    batch, num_queries, num_heads, head_dim = q.shape
    num_keys, num_kv_heads = k.shape[1], k.shape[2]
    group = num_heads // num_kv_heads
    tiles = min(config.tiles_per_program, -(-num_keys // KEY_TILE))
    run = tiles * KEY_TILE
    num_runs = -(-num_keys // run)
    padded_keys = num_runs * run
    k = jnp.pad(k, ((0, 0), (0, padded_keys - num_keys), (0, 0), (0, 0)))
    start = query_start.astype(jnp.int32)[:, None]
    grid = (num_heads, num_runs, batch)  # heads fastest: a kv group's programs run together
    params = pl_triton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)
    start_spec = pl.BlockSpec((None, 1), lambda n, r, b: (b, 0))

    scores, tile_lse = pl.pallas_call(
        functools.partial(
            _scores_kernel,
            num_keys=num_keys,
            precision=jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else None,
        ),
        grid=grid,
        in_specs=[
            start_spec,
            pl.BlockSpec((None, num_queries, None, head_dim), lambda n, r, b: (b, 0, n, 0)),
            pl.BlockSpec(
                (None, padded_keys, None, head_dim), lambda n, r, b: (b, 0, n // group, 0)
            ),
        ],
        out_specs=[
            pl.BlockSpec((None, None, num_queries, run), lambda n, r, b: (b, n, 0, r)),
            pl.BlockSpec((None, None, tiles, num_queries), lambda n, r, b: (b, n, r, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((batch, num_heads, num_queries, padded_keys), q.dtype),
            jax.ShapeDtypeStruct((batch, num_heads, num_runs * tiles, num_queries), jnp.float32),
        ],
        compiler_params=params,
        interpret=interpret,
        name="query_block_scores",
    )(start, q, k)
    lse = jax.nn.logsumexp(tile_lse, axis=2)  # [B, N, Q]

    column, diagonal = pl.pallas_call(
        functools.partial(_profiles_kernel, num_keys=num_keys),
        grid=grid,
        in_specs=[
            start_spec,
            pl.BlockSpec((None, None, num_queries), lambda n, r, b: (b, n, 0)),
            pl.BlockSpec((None, None, num_queries, padded_keys), lambda n, r, b: (b, n, 0, 0)),
        ],
        out_specs=[pl.BlockSpec((None, None, run), lambda n, r, b: (b, n, r))] * 2,
        out_shape=[jax.ShapeDtypeStruct((batch, num_heads, padded_keys), jnp.float32)] * 2,
        compiler_params=params,
        interpret=interpret,
        name="query_block_profiles",
    )(start, lse, scores)
    return column[..., :num_keys], diagonal[..., :num_keys]
