"""Block-sparse flash attention on Pallas Mosaic GPU (Hopper: TMA, wgmma, warp specialization).

FA3-style: one CTA per (query head, query block, batch) with `num_compute_wgs` compute
warpgroups (each owns bs / num_compute_wgs query rows of the block) and one memory warpgroup.
The memory warpgroup reads the row's key-block list from the layout (scalar GMEM loads) and
issues TMA copies of the listed K/V blocks into a ring of `num_stages` shared-memory slots; the
compute warpgroups run QK^T and PV as wgmma from shared memory, with an exp2-domain online
softmax in registers. Two compute warpgroups ping-pong through a schedule barrier so that one's
softmax overlaps the other's matmuls. Shared memory holds the input dtype (bf16 or f16).

Only the last listed block can cross the diagonal (lists are ascending and never go past it) or
the end of the keys, so the loop runs unmasked over the first `count - 1` blocks and masks the
last one only when it needs it. Rows with fewer blocks than stages issue only the copies they
have, and rows with no block (count 0) write zeros and an LSE of MASK_VALUE. GQA is native:
query head h copies kv head h // G, K/V are never repeated.

Block maps (`with_block_lse=True`) are not recorded by this kernel: the selected heads' launch
(a small fraction of heads in SharePrefill) runs on the Triton backend, which records block
LSEs in-loop; the main launch (all other heads) runs here. See `attention`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.block_sparse_attention import common
from pallas_kernels.block_sparse_attention import triton as triton_backend
from pallas_kernels.block_sparse_attention.layout import BlockGeometry, BlockLayout

SUPPORTED_HEAD_DIMS = (64, 128, 256)
SUPPORTED_DTYPES = (jnp.bfloat16, jnp.float16)
# wgmma works on 64-row tiles per warpgroup.
WGMMA_ROWS = 64
# Shared memory per CTA on H100/H200 (227 KB usable).
SMEM_BYTES = 227 * 1024
# Profiler ranges kept per warpgroup and CTA (a truncated trace is cut, not corrupted).
PROFILE_RANGES = 320


@dataclasses.dataclass(frozen=True, kw_only=True)
class MosaicGpuConfig:
    """Launch parameters.

    num_stages: depth of the K/V shared-memory ring (copies in flight ahead of the compute).
    num_compute_wgs: compute warpgroups per CTA, 1 or 2; each owns bs / num_compute_wgs query
      rows, which must be a multiple of 64. None: 2 when the block has >= 128 rows, else 1.
    use_schedule_barrier: ping-pong the two compute warpgroups (FA3's intra-CTA overlap).
    profile_dir: when set, every CTA records the start and end cycle of each of its warpgroups'
      named phases (setup, q_wait, k0_wait, stagger, blocks, normalize, store; issue, drain) and
      each launch writes them as a Chrome trace into this directory. For diagnosis: the dump
      is slow, and every launch writes a file (benchmarks/mosaic_gpu_timeline.py reads them).
    """

    num_stages: int = 2
    num_compute_wgs: int | None = None
    use_schedule_barrier: bool = True
    profile_dir: str | None = None

    def __post_init__(self):
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {self.num_stages}")
        if self.num_compute_wgs not in (None, 1, 2):
            raise ValueError(f"num_compute_wgs must be 1, 2 or None, got {self.num_compute_wgs}")

    def compute_wgs(self, block_size: int) -> int:
        if self.num_compute_wgs is not None:
            return self.num_compute_wgs
        return 2 if block_size >= 2 * WGMMA_ROWS else 1


def default_config(head_dim: int, block_size: int) -> MosaicGpuConfig:
    """The default launch: as many stages as fit the shared memory, up to 3 (unmeasured)."""
    per_stage = 2 * block_size * head_dim * 2  # K and V, 16-bit
    q_bytes = block_size * head_dim * 2
    stages = max(1, min(3, (SMEM_BYTES - q_bytes - 4096) // per_stage))
    return MosaicGpuConfig(num_stages=stages)


def compiler_params(config: MosaicGpuConfig) -> plgpu.CompilerParams:
    if config.profile_dir is None:
        return plgpu.CompilerParams(approx_math=True)
    return plgpu.CompilerParams(
        approx_math=True,
        profile_space=PROFILE_RANGES,
        profile_dir=config.profile_dir,
        profile_bounds_check=True,
    )


def smem_bytes(head_dim: int, block_size: int, config: MosaicGpuConfig) -> int:
    """Shared memory one CTA allocates (Q/O tiles, K/V ring, LSE rows), barriers excluded."""
    return 2 * block_size * head_dim * (1 + 2 * config.num_stages) + 4 * block_size


def check_supported(
    q: jax.Array, block_size: int, config: MosaicGpuConfig, interpret: bool
) -> None:
    """Raises NotImplementedError with the reason when this backend cannot run the call."""
    if not interpret:
        if jax.default_backend() != "gpu":
            raise NotImplementedError("mosaic_gpu needs a GPU (or interpret=True)")
        capability = getattr(jax.devices()[0], "compute_capability", "")
        if capability != "9.0":
            raise NotImplementedError(
                f"mosaic_gpu needs a Hopper GPU (compute capability 9.0), got {capability!r}"
            )
    if q.dtype not in SUPPORTED_DTYPES:
        raise NotImplementedError(f"mosaic_gpu supports bfloat16 and float16, got {q.dtype}")
    head_dim = q.shape[-1]
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise NotImplementedError(
            f"mosaic_gpu supports head dims {SUPPORTED_HEAD_DIMS}, got {head_dim}"
        )
    wgs = config.compute_wgs(block_size)
    if block_size % (wgs * WGMMA_ROWS):
        raise NotImplementedError(
            f"mosaic_gpu needs a block size multiple of {wgs * WGMMA_ROWS} with {wgs} compute"
            f" warpgroup(s), got {block_size}"
        )
    if block_size > 256:
        raise NotImplementedError(f"mosaic_gpu supports block sizes up to 256, got {block_size}")
    needed = smem_bytes(head_dim, block_size, config)
    if needed > SMEM_BYTES:
        raise NotImplementedError(
            f"mosaic_gpu launch needs {needed} bytes of shared memory (bs={block_size},"
            f" H={head_dim}, {config.num_stages} stages), over {SMEM_BYTES}"
        )


def _kernel(
    idx_ref,
    count_ref,
    q_ref,
    k_ref,
    v_ref,
    out_ref,
    lse_ref,
    buffers,
    loaded_barriers,
    free_barriers,
    schedule_barrier,
    *,
    qk_scale: float,
    block_size: int,
    num_q_tiles: int,
    first_q_pos: int,
    num_keys: int,
    group: int,
    num_stages: int,
    num_compute_wgs: int,
    causal: bool,
):
    q_smem, k_smem, v_smem, lse_smem, *p_smem = buffers
    p_smem = p_smem[0] if p_smem else None
    q_loaded, k_loaded, v_loaded = loaded_barriers
    k_free, v_free = free_barriers
    block_q = block_size // num_compute_wgs
    dtype = q_ref.dtype
    head_dim = q_ref.shape[-1]
    batch = lax.axis_index("batch")
    head = lax.axis_index("heads")
    # Heavier (later) query blocks launch first: causal rows grow with the block index.
    tile = num_q_tiles - 1 - lax.axis_index("q_tiles")
    wg = lax.axis_index("wg")
    count = count_ref[batch, head, tile]
    uses_schedule = schedule_barrier is not None
    # Logits are scaled inside the exp2's FMA; a masked raw logit must stay finite once scaled.
    masked_logit = common.MASK_VALUE / max(1.0, qk_scale)

    def sync_schedule():
        plgpu.barrier_arrive(schedule_barrier)
        plgpu.barrier_wait(schedule_barrier)

    @pl.when(wg < num_compute_wgs)
    def _compute_wg():
        with jax.named_scope("setup"):
            if num_compute_wgs == 2:
                plgpu.set_max_registers(232, action="increase")
            q_tile_smem = q_smem.at[wg]
            row_start = tile * block_size + wg * block_q
            q_abs_start = first_q_pos + row_start
            plgpu.copy_gmem_to_smem(
                q_ref.at[batch, pl.ds(row_start, block_q), head], q_tile_smem, q_loaded.at[wg]
            )

            def needs_mask(kb):
                block_end = kb * block_size + block_size
                crosses = block_end > num_keys
                if causal:
                    crosses |= block_end - 1 > q_abs_start
                return crosses

            last = idx_ref[batch, head, tile, jnp.maximum(count - 1, 0)]
            num_unmasked = jnp.where((count > 0) & needs_mask(last), count - 1, count)

            row_layout = plgpu.Layout.WGMMA.reduce(1)
            m = plgpu.layout_cast(jnp.full((block_q,), common.MASK_VALUE, jnp.float32), row_layout)
            l = plgpu.layout_cast(jnp.full((block_q,), 0.0, jnp.float32), row_layout)
            acc = plgpu.layout_cast(
                jnp.full((block_q, head_dim), 0.0, jnp.float32), plgpu.Layout.WGMMA
            )
        with jax.named_scope("q_wait"):
            plgpu.barrier_wait(q_loaded.at[wg])

        with jax.named_scope("k0_wait"):

            @pl.when(count > 0)
            def _():
                plgpu.barrier_wait(k_loaded.at[0])

        with jax.named_scope("stagger"):
            if uses_schedule:
                pl.when(wg == 1)(sync_schedule)

        def kv_step(j, carry, *, masked: bool):
            acc, m, l = carry
            slot = lax.rem(j, jnp.int32(num_stages))

            def qk(acc_ref):
                plgpu.wgmma(acc_ref, q_tile_smem, k_smem.at[slot].T)
                if uses_schedule:
                    sync_schedule()
                return acc_ref[...]

            s = pl.run_scoped(qk, plgpu.ACC((block_q, block_size), jnp.float32))
            plgpu.barrier_arrive(k_free.at[slot])
            if masked:
                kb = idx_ref[batch, head, tile, j]
                shape = (block_q, block_size)
                q_pos = q_abs_start + plgpu.broadcasted_iota(
                    jnp.int32, shape, 0, layout=plgpu.Layout.WGMMA
                )
                k_pos = kb * block_size + plgpu.broadcasted_iota(
                    jnp.int32, shape, 1, layout=plgpu.Layout.WGMMA
                )
                visible = k_pos < num_keys
                if causal:
                    visible &= k_pos <= q_pos
                s = jnp.where(visible, s, masked_logit)
            # Online softmax in the exp2 domain; m is already scaled so exp2's argument is an FMA.
            m_new = jnp.maximum(m, s.max(axis=1) * qk_scale)
            alpha = jnp.exp2(m - m_new)
            p = jnp.exp2(s * qk_scale - lax.broadcast_in_dim(m_new, s.shape, [0]))
            acc *= lax.broadcast_in_dim(alpha, acc.shape, [0])
            l = l * alpha + p.sum(axis=1)
            p_in = p.astype(dtype)
            if uses_schedule:
                # Keep the softmax ahead of the barrier (attention_mgpu measured this ordering).
                acc, l, m_new, p_in = lax.optimization_barrier((acc, l, m_new, p_in))
                plgpu.barrier_arrive(schedule_barrier)
            plgpu.barrier_wait(v_loaded.at[slot])
            if uses_schedule:
                plgpu.barrier_wait(schedule_barrier)

            def wait_next_k():
                next_step = j + 1

                @pl.when(next_step < count)
                def _():
                    plgpu.barrier_wait(k_loaded.at[lax.rem(next_step, jnp.int32(num_stages))])

            if p_smem is None:
                # P stays in registers: wgmma accumulates onto acc (the hardware path).
                def pv(acc_ref):
                    plgpu.wgmma(acc_ref, p_in, v_smem.at[slot])
                    wait_next_k()

                acc = pl.run_state(pv)(plgpu.ACC.init(acc))
            else:
                # Interpret mode simulates wgmma from shared memory into a fresh accumulator only.
                p_smem.at[wg][...] = p_in
                plgpu.commit_smem()

                def pv(acc_ref):
                    plgpu.wgmma(acc_ref, p_smem.at[wg], v_smem.at[slot])
                    wait_next_k()
                    return acc_ref[...]

                acc += pl.run_scoped(pv, plgpu.ACC((block_q, head_dim), jnp.float32))
            plgpu.barrier_arrive(v_free.at[slot])
            return acc, m_new, l

        with jax.named_scope("blocks"):
            carry = (acc, m, l)
            carry = lax.fori_loop(0, num_unmasked, functools.partial(kv_step, masked=False), carry)
            acc, m, l = lax.fori_loop(
                num_unmasked, count, functools.partial(kv_step, masked=True), carry
            )
            if uses_schedule:
                pl.when(wg == 0)(sync_schedule)

        with jax.named_scope("normalize"):
            has_keys = l > 0
            safe_l = jnp.where(has_keys, l, 1.0)
            acc /= lax.broadcast_in_dim(safe_l, acc.shape, [0])
            q_tile_smem[...] = acc.astype(dtype)
            lse_smem.at[wg][...] = jnp.where(
                has_keys, (m + jnp.log2(safe_l)) * common.LN_2, common.MASK_VALUE
            )
            plgpu.commit_smem()
        with jax.named_scope("store"):
            plgpu.copy_smem_to_gmem(q_tile_smem, out_ref.at[batch, pl.ds(row_start, block_q), head])
            plgpu.copy_smem_to_gmem(
                lse_smem.at[wg], lse_ref.at[batch, head, pl.ds(row_start, block_q)]
            )
            plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == num_compute_wgs)
    def _memory_wg():
        if num_compute_wgs == 2:
            plgpu.set_max_registers(40, action="decrease")
        kv_head = lax.div(head, jnp.int32(group))

        def kv_block(j):
            kb = idx_ref[batch, head, tile, j]
            return (batch, pl.ds(pl.multiple_of(kb * block_size, block_size), block_size), kv_head)

        def fill(step):
            source = kv_block(step)
            plgpu.copy_gmem_to_smem(k_ref.at[source], k_smem.at[step], k_loaded.at[step])
            plgpu.copy_gmem_to_smem(v_ref.at[source], v_smem.at[step], v_loaded.at[step])

        with jax.named_scope("issue"):
            # Prologue: fill the ring, issuing only the copies this row has.
            for step in range(num_stages):
                pl.when(step < count)(functools.partial(fill, step))

            @pl.loop(num_stages, jnp.maximum(count, num_stages))
            def _(step):
                slot = lax.rem(step, jnp.int32(num_stages))
                source = kv_block(step)
                plgpu.barrier_wait(k_free.at[slot])
                plgpu.copy_gmem_to_smem(k_ref.at[source], k_smem.at[slot], k_loaded.at[slot])
                plgpu.barrier_wait(v_free.at[slot])
                plgpu.copy_gmem_to_smem(v_ref.at[source], v_smem.at[slot], v_loaded.at[slot])

        with jax.named_scope("drain"):
            # Observe the releases of the last copies too, so that every barrier phase is
            # consumed before the CTA exits (interpret mode checks this; on hardware it is a
            # short tail wait).
            @pl.loop(jnp.maximum(count - num_stages, 0), count)
            def _(step):
                slot = lax.rem(step, jnp.int32(num_stages))
                plgpu.barrier_wait(k_free.at[slot])
                plgpu.barrier_wait(v_free.at[slot])


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    layout: BlockLayout,
    *,
    sm_scale: float,
    causal: bool,
    geometry: BlockGeometry,
    with_block_lse: bool,
    interpret: bool = False,
    config: MosaicGpuConfig | None = None,
) -> common.BackendResult:
    """See common.BackendResult for what is returned.

    With `with_block_lse` (the block-map launch of the selected heads), the call is served by the
    Triton backend, which records block LSEs in-loop; outputs are the same.
    """
    bs = geometry.block_size
    head_dim = q.shape[-1]
    config = config or default_config(head_dim, bs)
    check_supported(q, bs, config, interpret)
    if with_block_lse:
        return triton_backend.attention(
            q,
            k,
            v,
            layout,
            sm_scale=sm_scale,
            causal=causal,
            geometry=geometry,
            with_block_lse=True,
            interpret=interpret,
        )
    batch, _, num_heads, _ = q.shape
    group = num_heads // k.shape[2]
    num_compute_wgs = config.compute_wgs(bs)
    block_q = bs // num_compute_wgs
    num_stages = config.num_stages

    q_padded = common.pad_queries(q, geometry)
    k_padded = common.pad_keys(k, geometry)
    v_padded = common.pad_keys(v, geometry)

    # 16-bit tiles of 64 columns are 128 bytes wide: the 128-byte swizzle wgmma reads best.
    transforms = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    buffers = (
        plgpu.SMEM((num_compute_wgs, block_q, head_dim), q.dtype, transforms=transforms),
        plgpu.SMEM((num_stages, bs, head_dim), q.dtype, transforms=transforms),
        plgpu.SMEM((num_stages, bs, head_dim), q.dtype, transforms=transforms),
        plgpu.SMEM((num_compute_wgs, block_q), jnp.float32),
    )
    if interpret:
        # P for the PV wgmma; on hardware P stays in registers.
        buffers += (plgpu.SMEM((num_compute_wgs, block_q, bs), q.dtype, transforms=transforms),)
    loaded_barriers = (
        plgpu.Barrier(num_barriers=num_compute_wgs),
        plgpu.Barrier(num_barriers=num_stages),
        plgpu.Barrier(num_barriers=num_stages),
    )
    free_barriers = (
        plgpu.Barrier(num_arrivals=num_compute_wgs, num_barriers=num_stages),
        plgpu.Barrier(num_arrivals=num_compute_wgs, num_barriers=num_stages),
    )
    uses_schedule = num_compute_wgs == 2 and config.use_schedule_barrier
    scratch = [buffers, loaded_barriers, free_barriers]
    kernel = functools.partial(
        _kernel,
        qk_scale=sm_scale * common.LOG2_E,
        block_size=bs,
        num_q_tiles=geometry.num_q_blocks,
        first_q_pos=geometry.first_q_block * bs,
        num_keys=geometry.num_keys,
        group=group,
        num_stages=num_stages,
        num_compute_wgs=num_compute_wgs,
        causal=causal,
    )
    if uses_schedule:
        scratch.append(plgpu.Barrier(num_arrivals=num_compute_wgs))
    else:
        kernel = functools.partial(kernel, schedule_barrier=None)
    out, lse = plgpu.kernel(
        kernel,
        out_type=(
            jax.ShapeDtypeStruct(q_padded.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, num_heads, geometry.padded_queries), jnp.float32),
        ),
        scratch_types=scratch,
        grid=(num_heads, geometry.num_q_blocks, batch),
        grid_names=("heads", "q_tiles", "batch"),
        num_threads=num_compute_wgs + 1,
        thread_name="wg",
        compiler_params=compiler_params(config),
        interpret=plgpu.InterpretGPUParams() if interpret else None,
        kernel_name="block_sparse_attention_mgpu",
    )(layout.kv_block_idx, layout.kv_block_count, q_padded, k_padded, v_padded)
    return common.BackendResult(
        common.unpad_queries(out, geometry),
        common.unpad_queries(lse, geometry, axis=2),
        None,
    )
