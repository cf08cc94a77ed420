"""Block-sparse flash attention on Pallas Mosaic GPU (Hopper: TMA, wgmma, warp specialization).

FA3-style: a work item is one (query head, query block, batch) row of the layout, and each CTA
runs `items_per_program` consecutive items of the launch order with `num_compute_wgs` compute
warpgroups (each owns bs / num_compute_wgs query rows of the block) and one memory warpgroup.
The memory warpgroup reads each row's key-block list from the layout (scalar GMEM loads) and
issues TMA copies of the listed K/V blocks into a ring of `num_stages` shared-memory slots that
runs on from one item into the next; the compute warpgroups run QK^T and PV as wgmma from shared
memory, with an exp2-domain online softmax in registers. Two compute warpgroups ping-pong
through a schedule barrier so that one's softmax overlaps the other's matmuls. With several
items per CTA the Q tile is double-buffered: the next item's Q loads during this one's
normalize and store, and its output store overlaps the next item's start. Shared memory holds
the input dtype (bf16 or f16).

The launch order is the one the hardware gives a (heads, query blocks, batch) grid: query
blocks fastest, from the last (the longest causal rows) to the first, then heads. CTAs in
flight together therefore read one head's K/V, which the L2 keeps; run 16 (docs/results.md 7.3)
measured an order with heads fastest 4-17 points of cuDNN's rate slower at 32K-128K and
10-20 % density.

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

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.block_sparse_attention import common
from pallas_kernels.block_sparse_attention import triton as triton_backend
from pallas_kernels.block_sparse_attention.layout import BlockGeometry, BlockLayout
from pallas_kernels.block_sparse_attention.mosaic_gpu_config import (
    MosaicGpuConfig,
    check_supported,
    compiler_params,
    default_config,
    q_buffers,
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
    items_per_program: int,
):
    q_smem, k_smem, v_smem, lse_smem, *p_smem = buffers
    p_smem = p_smem[0] if p_smem else None
    q_loaded, k_loaded, v_loaded = loaded_barriers
    k_free, v_free = free_barriers
    block_q = block_size // num_compute_wgs
    num_q_buffers = q_smem.shape[0]
    dtype = q_ref.dtype
    head_dim = q_ref.shape[-1]
    num_heads = count_ref.shape[1]
    wg = lax.axis_index("wg")
    # This CTA runs items first_item .. first_item + num_turns - 1 of the launch order.
    num_items = count_ref.size
    first_item = lax.axis_index("programs") * items_per_program
    num_turns = jnp.minimum(items_per_program, num_items - first_item)
    uses_schedule = schedule_barrier is not None
    # Logits are scaled inside the exp2's FMA; a masked raw logit must stay finite once scaled.
    masked_logit = common.MASK_VALUE / max(1.0, qk_scale)

    def work_item(turn):
        """(batch, head, query tile) of this CTA's turn-th item (module docstring: the launch
        order). Turns past the end (the one-ahead loads of the last item) read the launch
        order's last item."""
        item = jnp.minimum(first_item + turn, num_items - 1)
        tile = num_q_tiles - 1 - lax.rem(item, num_q_tiles)
        rest = lax.div(item, num_q_tiles)
        return lax.div(rest, num_heads), lax.rem(rest, num_heads), tile

    def ring_slot(step):
        return lax.rem(step, jnp.int32(num_stages))

    def sync_schedule():
        plgpu.barrier_arrive(schedule_barrier)
        plgpu.barrier_wait(schedule_barrier)

    def q_rows(tile):
        return tile * block_size + wg * block_q

    def q_buffer(turn):
        return lax.rem(turn, jnp.int32(num_q_buffers))

    def load_q(turn):
        batch, head, tile = work_item(turn)
        buffer = q_buffer(turn)
        plgpu.copy_gmem_to_smem(
            q_ref.at[batch, pl.ds(q_rows(tile), block_q), head],
            q_smem.at[buffer, wg],
            q_loaded.at[buffer * num_compute_wgs + wg],
        )

    def row_extent(turn):
        """(count, last listed block) of the turn-th item's row."""
        batch, head, tile = work_item(turn)
        count = count_ref[batch, head, tile]
        return count, idx_ref[batch, head, tile, jnp.maximum(count - 1, 0)]

    def compute_item(turn, carry):
        """One item; its j-th block sits in ring slot (first_step + j) % num_stages. The carry
        holds the ring position and this item's count and last block, loaded one item ahead."""
        first_step, count, last = carry
        batch, head, tile = work_item(turn)
        buffer = q_buffer(turn)
        q_tile_smem = q_smem.at[buffer, wg]
        row_start = q_rows(tile)
        q_abs_start = first_q_pos + row_start

        def prefetch_next_q():
            # The other buffer staged the previous item's output: once its store has read it,
            # load the next item's Q there. Issued after this item's last block (a branch in
            # every block step measured slower, run 18), so the copy runs under this item's
            # normalize and store.
            if num_q_buffers > 1:

                @pl.when(turn + 1 < num_turns)
                def _():
                    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
                    load_q(turn + 1)

        with jax.named_scope("setup"):
            # One item per CTA: no next item to load ahead.
            next_extent = row_extent(turn + 1) if items_per_program > 1 else (count, last)

            def needs_mask(kb):
                block_end = kb * block_size + block_size
                crosses = block_end > num_keys
                if causal:
                    crosses |= block_end - 1 > q_abs_start
                return crosses

            num_unmasked = jnp.where((count > 0) & needs_mask(last), count - 1, count)
            row_layout = plgpu.Layout.WGMMA.reduce(1)
            m = plgpu.layout_cast(jnp.full((block_q,), common.MASK_VALUE, jnp.float32), row_layout)
            l = plgpu.layout_cast(jnp.full((block_q,), 0.0, jnp.float32), row_layout)
            acc = plgpu.layout_cast(
                jnp.full((block_q, head_dim), 0.0, jnp.float32), plgpu.Layout.WGMMA
            )
        with jax.named_scope("q_wait"):
            plgpu.barrier_wait(q_loaded.at[buffer * num_compute_wgs + wg])

        with jax.named_scope("k0_wait"):

            @pl.when(count > 0)
            def _():
                plgpu.barrier_wait(k_loaded.at[ring_slot(first_step)])

        with jax.named_scope("stagger"):
            if uses_schedule:
                pl.when(wg == 1)(sync_schedule)

        def kv_step(j, carry, *, masked: bool):
            acc, m, l = carry
            slot = ring_slot(first_step + j)

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
                @pl.when(j + 1 < count)
                def _():
                    plgpu.barrier_wait(k_loaded.at[ring_slot(first_step + j + 1)])

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
            prefetch_next_q()
            if uses_schedule:
                pl.when(wg == 0)(sync_schedule)

        with jax.named_scope("normalize"):
            has_keys = l > 0
            safe_l = jnp.where(has_keys, l, 1.0)
            acc /= lax.broadcast_in_dim(safe_l, acc.shape, [0])
            # The LSE row is shared by the items: the previous item's store must have read it.
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
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
        return first_step + count, *next_extent

    def memory_item(turn, first_step):
        """Copies the item's K/V blocks into ring slots (first_step + j) % num_stages, each once
        the compute warpgroups have released the block that used the slot before."""
        batch, head, tile = work_item(turn)
        count = count_ref[batch, head, tile]
        kv_head = lax.div(head, jnp.int32(group))

        @pl.loop(0, count)
        def _(j):
            step = first_step + j
            slot = ring_slot(step)
            kb = idx_ref[batch, head, tile, j]
            rows = pl.ds(pl.multiple_of(kb * block_size, block_size), block_size)
            source = (batch, rows, kv_head)
            refill = step >= num_stages
            pl.when(refill)(lambda: plgpu.barrier_wait(k_free.at[slot]))
            plgpu.copy_gmem_to_smem(k_ref.at[source], k_smem.at[slot], k_loaded.at[slot])
            pl.when(refill)(lambda: plgpu.barrier_wait(v_free.at[slot]))
            plgpu.copy_gmem_to_smem(v_ref.at[source], v_smem.at[slot], v_loaded.at[slot])

        return first_step + count

    @pl.when(wg < num_compute_wgs)
    def _compute_wg():
        if num_compute_wgs == 2:
            plgpu.set_max_registers(232, action="increase")
        pl.when(num_turns > 0)(lambda: load_q(0))
        lax.fori_loop(0, num_turns, compute_item, (jnp.int32(0), *row_extent(0)))
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == num_compute_wgs)
    def _memory_wg():
        if num_compute_wgs == 2:
            plgpu.set_max_registers(40, action="decrease")
        with jax.named_scope("issue"):
            num_steps = lax.fori_loop(0, num_turns, memory_item, jnp.int32(0))
        with jax.named_scope("drain"):
            # Observe the releases of the last copies too, so that every barrier phase is
            # consumed before the CTA exits (interpret mode checks this; on hardware it is a
            # short tail wait).
            @pl.loop(jnp.maximum(num_steps - num_stages, 0), num_steps)
            def _(step):
                plgpu.barrier_wait(k_free.at[ring_slot(step)])
                plgpu.barrier_wait(v_free.at[ring_slot(step)])


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
        plgpu.SMEM(
            (q_buffers(config), num_compute_wgs, block_q, head_dim), q.dtype, transforms=transforms
        ),
        plgpu.SMEM((num_stages, bs, head_dim), q.dtype, transforms=transforms),
        plgpu.SMEM((num_stages, bs, head_dim), q.dtype, transforms=transforms),
        plgpu.SMEM((num_compute_wgs, block_q), jnp.float32),
    )
    if interpret:
        # P for the PV wgmma; on hardware P stays in registers.
        buffers += (plgpu.SMEM((num_compute_wgs, block_q, bs), q.dtype, transforms=transforms),)
    loaded_barriers = (
        plgpu.Barrier(num_barriers=q_buffers(config) * num_compute_wgs),
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
        items_per_program=config.items_per_program,
    )
    if uses_schedule:
        scratch.append(plgpu.Barrier(num_arrivals=num_compute_wgs))
    else:
        kernel = functools.partial(kernel, schedule_barrier=None)
    num_items = batch * geometry.num_q_blocks * num_heads
    out, lse = plgpu.kernel(
        kernel,
        out_type=(
            jax.ShapeDtypeStruct(q_padded.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, num_heads, geometry.padded_queries), jnp.float32),
        ),
        scratch_types=scratch,
        grid=(-(-num_items // config.items_per_program),),
        grid_names=("programs",),
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
