"""Public block-sparse attention: input validation and the implementation registry."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import registry
from pallas_kernels.block_sparse_attention import (
    block_map,
    common,
    mosaic_gpu,
    mosaic_tpu,
    reference,
    triton,
    xla,
)
from pallas_kernels.block_sparse_attention.layout import (
    BlockGeometry,
    BlockLayout,
    validate_layout,
)

Implementation = Callable[..., common.BackendResult]

IMPLEMENTATIONS: dict[str, Implementation] = {
    "reference": reference.attention,
    "xla": xla.attention,
    "triton": triton.attention,
    "mosaic_gpu": mosaic_gpu.attention,
    "mosaic_tpu": mosaic_tpu.attention,
}

# What `implementation=None` tries, in order, for each jax backend. On GPU, mosaic_gpu (faster
# than triton in every case measured on the H200) takes what it can run: Hopper, bf16/f16, its
# head dims and block sizes; the rest falls through to triton (mosaic_gpu.check_supported).
DEFAULT_IMPLEMENTATIONS: dict[str, tuple[str, ...]] = {
    "gpu": ("mosaic_gpu", "triton", "xla"),
    "tpu": ("mosaic_tpu", "xla"),
    "cpu": ("xla",),
}

SUPPORTED_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)


def block_sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    layout: BlockLayout,
    *,
    sm_scale: float | None = None,
    causal: bool = True,
    return_lse: bool = False,
    implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Attention of each query block over the key blocks its layout row lists.

    Args:
      q: [B, T, N, H]; the T queries are the last T of the S key positions.
      k: [B, S, K, H], N a multiple of K (GQA: query head h uses kv head h // (N // K)).
      v: [B, S, K, H].
      layout: block lists, [B, N, Tb, M] (see layout.BlockGeometry for how blocks align).
      sm_scale: logit scale, finite and positive; default 1 / sqrt(H).
      causal: mask keys after each query inside the listed blocks.
      return_lse: also return the natural-log LSE.
      implementation: a name in IMPLEMENTATIONS, a sequence tried in order (falling through on
        NotImplementedError), or None for the best one for `jax.default_backend()`.
      interpret: run Pallas kernels in interpret mode (CPU testing).

    Returns:
      out [B, T, N, H] in q's dtype, and float32[B, N, T] lse when `return_lse`.
    """
    geometry = _validate(q, k, v, layout, causal)
    result = _attention(
        q,
        k,
        v,
        layout,
        geometry=geometry,
        sm_scale=_scale(q, sm_scale),
        causal=causal,
        with_block_lse=False,
        implementation=_candidates(implementation),
        interpret=interpret,
    )
    return (result.out, result.lse) if return_lse else result.out


def block_sparse_attention_with_block_map(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    layout: BlockLayout,
    selected: jax.Array,
    *,
    lengths: jax.Array | None = None,
    max_selected: int | None = None,
    sm_scale: float | None = None,
    causal: bool = True,
    implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Block-sparse attention that also returns block-averaged maps for selected heads.

    The selected heads run in a second launch that records each listed block's per-row
    log-sum-exp; their maps are finished from those and the final LSE (block_map.py). The other
    heads pay nothing beyond being excluded from that launch.

    Args:
      q, k, v, layout, sm_scale, causal, implementation, interpret: as block_sparse_attention.
      selected: bool[B, N], which (batch, head) maps to compute; traced values are fine.
      lengths: int32[B] or None: real tokens per batch element, the rest of the S key positions
        being end padding. Query rows at positions >= lengths[b] are padding and take no part in
        the maps: each map row averages the real rows of its query block only, and query blocks
        without a real row get all-zero rows. Output and LSE do not depend on it. None: every
        position is real. Traced values are fine; concrete ones must lie in [0, S].
      max_selected: static capacity P, at least the number of selected heads (default B * N).
        Under jit, heads selected beyond P get no map (their output is still exact); with
        concrete `selected` a count above P raises.

    Returns:
      out [B, T, N, H], lse float32[B, N, T], block_map float32[B, N, Tb, Sb] (zero for
      unselected heads, for blocks the layout does not list and for query blocks without a real
      row).
    """
    geometry = _validate(q, k, v, layout, causal)
    batch, _, num_heads, _ = q.shape
    num_keys = k.shape[1]
    if selected.shape != (batch, num_heads):
        raise ValueError(
            f"selected must be bool[B, N] = {(batch, num_heads)}, got {selected.shape}"
        )
    lengths = jnp.full((batch,), num_keys, jnp.int32) if lengths is None else jnp.asarray(lengths)
    if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(
            f"lengths must be int[B={batch}], got {lengths.dtype}{list(lengths.shape)}"
        )
    if not isinstance(lengths, jax.core.Tracer):  # numpy: jnp ops would be staged under jit
        values = np.asarray(lengths)
        if ((values < 0) | (values > num_keys)).any():
            raise ValueError(f"lengths must be in [0, S={num_keys}], got {values.tolist()}")
    capacity = batch * num_heads if max_selected is None else max_selected
    if not 1 <= capacity <= batch * num_heads:
        raise ValueError(
            f"max_selected must be in [1, B*N={batch * num_heads}], got {max_selected}"
        )
    if not isinstance(selected, jax.core.Tracer):  # numpy, as for lengths
        num_selected = int(np.asarray(selected).sum())
        if num_selected > capacity:
            raise ValueError(f"{num_selected} heads selected but max_selected={capacity}")
    return _attention_with_block_map(
        q,
        k,
        v,
        layout,
        selected.astype(bool),
        lengths.astype(jnp.int32),
        geometry=geometry,
        capacity=capacity,
        sm_scale=_scale(q, sm_scale),
        causal=causal,
        implementation=_candidates(implementation),
        interpret=interpret,
    )


@functools.partial(
    jax.jit,
    static_argnames=("geometry", "capacity", "sm_scale", "causal", "implementation", "interpret"),
)
def _attention_with_block_map(
    q,
    k,
    v,
    layout,
    selected,
    lengths,
    *,
    geometry,
    capacity,
    sm_scale,
    causal,
    implementation,
    interpret,
):
    batch, _, num_heads, _ = q.shape
    group = num_heads // k.shape[2]
    num_rows = batch * num_heads
    # Static-size list of the selected (b, h); unused slots point past the end.
    picked = jnp.nonzero(selected.reshape(-1), size=capacity, fill_value=num_rows)[0]
    is_real = picked < num_rows
    b_sel = jnp.where(is_real, picked // num_heads, 0)
    h_sel = jnp.where(is_real, picked % num_heads, 0)
    in_map_launch = jnp.zeros((num_rows,), bool).at[picked].set(True, mode="drop")
    in_map_launch = in_map_launch.reshape(batch, num_heads)

    # Heads in the map launch are skipped (count 0) in the main launch.
    main_layout = BlockLayout(
        layout.kv_block_idx,
        jnp.where(in_map_launch[..., None], 0, layout.kv_block_count),
        layout.block_size,
    )
    main = _dispatch(
        q,
        k,
        v,
        main_layout,
        geometry=geometry,
        sm_scale=sm_scale,
        causal=causal,
        with_block_lse=False,
        implementation=implementation,
        interpret=interpret,
    )
    sel_layout = BlockLayout(
        layout.kv_block_idx[b_sel, h_sel][:, None],
        jnp.where(is_real[:, None], layout.kv_block_count[b_sel, h_sel], 0)[:, None],
        layout.block_size,
    )
    sel = _dispatch(
        q[b_sel, :, h_sel][:, :, None],  # [P, T, 1, H]
        k[b_sel, :, h_sel // group][:, :, None],
        v[b_sel, :, h_sel // group][:, :, None],
        sel_layout,
        geometry=geometry,
        sm_scale=sm_scale,
        causal=causal,
        with_block_lse=True,
        implementation=implementation,
        interpret=interpret,
    )
    # Each selected (b, h) is a batch row of its own: it takes its batch element's length.
    maps = block_map.block_map_from_block_lse(
        sel.block_lse, sel.lse, sel_layout, geometry, lengths[b_sel]
    )
    b_put = jnp.where(is_real, b_sel, batch)  # out of range: dropped
    out = main.out.at[b_put, :, h_sel].set(sel.out[:, :, 0], mode="drop")
    lse = main.lse.at[b_put, h_sel].set(sel.lse[:, 0], mode="drop")
    full_map = (
        jnp.zeros((batch, num_heads, geometry.num_q_blocks, geometry.num_k_blocks), jnp.float32)
        .at[b_put, h_sel]
        .set(maps[:, 0], mode="drop")
    )
    return out, lse, full_map


def _scale(q: jax.Array, sm_scale: float | None) -> float:
    if sm_scale is None:
        return 1.0 / math.sqrt(q.shape[-1])
    scale = float(sm_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"sm_scale must be finite and positive, got {sm_scale!r}")
    return scale


def _validate(q, k, v, layout: BlockLayout, causal: bool) -> BlockGeometry:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"expected q [B, T, N, H] and k, v [B, S, K, H], got shapes {q.shape}, {k.shape},"
            f" {v.shape}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {k.shape} vs {v.shape}")
    batch, num_queries, num_heads, head_dim = q.shape
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"q {q.shape} and k {k.shape} disagree on batch or head dim")
    num_kv_heads = k.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(
            f"query heads N={num_heads} must be a multiple of kv heads K={num_kv_heads}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"dtype {q.dtype} not supported; use one of "
            f"{[jnp.dtype(d).name for d in SUPPORTED_DTYPES]}"
        )
    geometry = BlockGeometry(
        num_queries=num_queries, num_keys=k.shape[1], block_size=layout.block_size
    )
    validate_layout(layout, geometry, batch=batch, num_heads=num_heads, causal=causal)
    return geometry


def _candidates(implementation: str | Sequence[str] | None) -> tuple[str, ...]:
    return registry.candidates(implementation, IMPLEMENTATIONS, DEFAULT_IMPLEMENTATIONS)


def _dispatch(
    q, k, v, layout, *, implementation: tuple[str, ...], **kwargs
) -> common.BackendResult:
    """Runs the first implementation that does not raise NotImplementedError."""
    return registry.first_that_runs(implementation, IMPLEMENTATIONS, q, k, v, layout, **kwargs)


_attention = jax.jit(
    _dispatch,
    static_argnames=(
        "geometry",
        "sm_scale",
        "causal",
        "with_block_lse",
        "implementation",
        "interpret",
    ),
)
