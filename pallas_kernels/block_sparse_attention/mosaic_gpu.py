"""Block-sparse flash attention on Pallas Mosaic GPU (Hopper: TMA, wgmma, warp specialization).

FA3-style: a work item is one (query head, query block, batch) row of the layout. Each CTA has
`num_compute_wgs` compute warpgroups (each owns bs / num_compute_wgs query rows of the block)
and one memory warpgroup. The memory warpgroup reads each row's key-block list from the layout
(scalar GMEM loads) and issues TMA copies of the listed K/V blocks into a ring of `num_stages`
shared-memory slots; the compute warpgroups run QK^T and PV as wgmma from shared memory, with an
exp2-domain online softmax in registers. Two compute warpgroups ping-pong through a schedule
barrier so that one's softmax overlaps the other's matmuls. Shared memory holds the input dtype
(bf16 or f16).

The launch is persistent (with one Q tile, `q_tiles=1`, each CTA runs one item instead): one CTA
per SM runs the item its index names, then claims the next unclaimed item of the launch order
with an atomic add on a counter in global memory, so no SM idles at a CTA boundary and one that
drew short items takes more. The memory warpgroup claims two items ahead and publishes them to
the compute warpgroups through shared-memory slots. The K/V ring runs on from item to item, and
items follow each other without a drain: a block step is the softmax and PV of a block whose S
is already in registers, then the QK^T of the next block; at an item's last block that QK^T is
the next item's first, and this item's normalize and output store run while it is in flight
(and, past the schedule barrier, while the other warpgroup's matmuls run). Over each run of
items with blocks the second warpgroup stays one schedule phase behind the first. Each item in
flight has its own Q/O tile (`q_tiles`, reused in turn); item t + 1's Q loads at the start of
item t. The boundary without a drain and the work queue are what bring the kernel to cuDNN's
rate per active block at 32K and 10 % density (docs/results.md section 7).

The launch order is query blocks fastest, from the last (the longest causal rows) to the first,
then heads. CTAs in flight together therefore read one head's K/V, which the L2 keeps; an order
with heads fastest is 4-17 points of cuDNN's rate slower at 32K-128K and 10-20 % density
(docs/results.md section 7).

Only the last listed block can cross the diagonal (lists are ascending and never go past it) or
the end of the keys, so the loop runs unmasked over the first `count - 1` blocks and masks the
last one only when it needs it; the last block runs in its own step, which issues no QK^T of
this item. Rows with fewer blocks than stages issue only the copies they have, and rows with no
block (count 0) write zeros and an LSE of MASK_VALUE. GQA is native: query head h copies kv head
h // G, K/V are never repeated.

With `with_block_lse` (the block-map launch of the selected heads) each block step also stores
its rows' block LSE, the natural log of the sum of exp(scores) over the block's keys, from the
running max and the row sums the softmax already has: one log per row and a vector store of the
warpgroup's rows straight to global memory, no shared memory and no TMA group.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.block_sparse_attention import common, mosaic_gpu_queue
from pallas_kernels.block_sparse_attention.layout import BlockGeometry, BlockLayout
from pallas_kernels.block_sparse_attention.mosaic_gpu_config import (
    ITEM_SLOTS,
    MosaicGpuConfig,
    check_supported,
    compiler_params,
    default_config,
    scratch_types,
)


def _kernel(
    idx_ref,
    count_ref,
    q_ref,
    k_ref,
    v_ref,
    counter_ref,
    out_ref,
    lse_ref,
    block_lse_ref,
    buffers,
    loaded_barriers,
    free_barriers,
    item_barriers,
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
    num_programs: int,
    claim,
):
    q_smem, k_smem, v_smem, lse_smem, items_smem, *p_smem = buffers
    p_smem = p_smem[0] if p_smem else None
    q_loaded, k_loaded, v_loaded = loaded_barriers
    k_free, v_free = free_barriers
    item_ready, item_free = item_barriers
    block_q = block_size // num_compute_wgs
    num_q_buffers = q_smem.shape[0]
    persistent = num_q_buffers > 1
    dtype = q_ref.dtype
    head_dim = q_ref.shape[-1]
    num_heads = count_ref.shape[1]
    wg = lax.axis_index("wg")
    num_items = count_ref.size
    uses_schedule = schedule_barrier is not None
    # Logits are scaled inside the exp2's FMA; a masked raw logit must stay finite once scaled.
    masked_logit = common.MASK_VALUE / max(1.0, qk_scale)

    def work_item(item):
        """(batch, head, query tile) of an item of the launch order (module docstring). An
        item past the end (no more work) reads the last item's."""
        item = jnp.minimum(item, num_items - 1)
        tile = num_q_tiles - 1 - lax.rem(item, num_q_tiles)
        rest = lax.div(item, num_q_tiles)
        return lax.div(rest, num_heads), lax.rem(rest, num_heads), tile

    def ring_slot(step):
        return lax.rem(step, jnp.int32(num_stages))

    def item_slot(turn):
        return lax.rem(turn, jnp.int32(ITEM_SLOTS))

    def sync_schedule():
        plgpu.barrier_arrive(schedule_barrier)
        plgpu.barrier_wait(schedule_barrier)

    def q_rows(tile):
        return tile * block_size + wg * block_q

    def q_buffer(turn):
        return lax.rem(turn, jnp.int32(num_q_buffers))

    def q_barrier(turn):
        return q_loaded.at[q_buffer(turn) * num_compute_wgs + wg]

    def load_q(turn, item):
        batch, head, tile = work_item(item)
        plgpu.copy_gmem_to_smem(
            q_ref.at[batch, pl.ds(q_rows(tile), block_q), head],
            q_smem.at[q_buffer(turn), wg],
            q_barrier(turn),
        )

    def row_extent(item):
        """(count, last listed block) of an item's row; count 0 past the end."""
        batch, head, tile = work_item(item)
        count = count_ref[batch, head, tile]
        last = idx_ref[batch, head, tile, jnp.maximum(count - 1, 0)]
        return jnp.where(item < num_items, count, 0), last

    def read_item(turn):
        """This CTA's turn-th item, as the memory warpgroup published it."""
        slot = item_slot(turn)
        plgpu.barrier_wait(item_ready.at[slot])
        item = items_smem[slot]
        plgpu.barrier_arrive(item_free.at[slot])
        return item

    def qk(turn, step, while_in_flight=lambda: None):
        """S = Q K^T of the turn-th item's Q tile and the K block of ring step `step`. Between
        issuing the wgmma and reading S, the warpgroup passes the schedule barrier (the other
        warpgroup's matmuls may start) and runs `while_in_flight`."""
        slot = ring_slot(step)

        def body(acc_ref):
            plgpu.wgmma(acc_ref, q_smem.at[q_buffer(turn), wg], k_smem.at[slot].T)
            if uses_schedule:
                sync_schedule()
            while_in_flight()
            return acc_ref[...]

        s = pl.run_scoped(body, plgpu.ACC((block_q, block_size), jnp.float32))
        plgpu.barrier_arrive(k_free.at[slot])
        return s

    def no_scores():
        """The carried S of an item without blocks (never read)."""
        return plgpu.layout_cast(
            jnp.full((block_q, block_size), 0.0, jnp.float32), plgpu.Layout.WGMMA
        )

    # The schedule barrier pairs the warpgroups' arrivals one for one. Over each run of
    # consecutive items with blocks (a segment), the second warpgroup stays one schedule phase
    # behind the first: it falls behind before the segment's first QK^T (stagger), and the
    # first catches up after the segment's last item. Items without blocks pass no schedule
    # barrier; a second warpgroup still behind would wait through them for the first's next
    # arrival while holding the item slots the first needs to get there, a deadlock after a
    # run of such items.
    def stagger(first_of_segment):
        if uses_schedule:
            with jax.named_scope("stagger"):
                pl.when((wg == 1) & first_of_segment)(sync_schedule)

    def catch_up(last_of_segment):
        if uses_schedule:
            pl.when((wg == 0) & last_of_segment)(sync_schedule)

    def first_qk(turn, step, while_in_flight=lambda: None, *, first_of_segment):
        """S of the turn-th item's first block, once its Q and that K block have landed.
        first_of_segment: whether the CTA's item before it had no block (or there was none)."""
        stagger(first_of_segment)
        plgpu.barrier_wait(q_barrier(turn))
        plgpu.barrier_wait(k_loaded.at[ring_slot(step)])
        return qk(turn, step, while_in_flight)

    def compute_item(carry):
        """This CTA's turn-th item; its j-th block sits in ring slot (first_step + j) %
        num_stages. The carry holds the ring position, the item, its count and last block
        (loaded an item ahead) and S of its first block (when count > 0), computed at the end
        of the previous item."""
        turn, item, first_step, count, last, s = carry
        batch, head, tile = work_item(item)
        q_abs_start = first_q_pos + q_rows(tile)
        next_item = read_item(turn + 1)
        next_count, next_last = row_extent(next_item)
        if persistent:
            # The next Q's tile held the output of item turn + 1 - num_q_buffers, and this
            # item's LSE row the output of item turn - 2: wait until their stores have read
            # them (the stores of later items may still be in flight).
            plgpu.wait_smem_to_gmem(num_q_buffers - 2, wait_read_only=True)
            pl.when(next_item < num_items)(lambda: load_q(turn + 1, next_item))

        with jax.named_scope("setup"):

            def needs_mask(kb):
                block_end = kb * block_size + block_size
                crosses = block_end > num_keys
                if causal:
                    crosses |= block_end - 1 > q_abs_start
                return crosses

            row_layout = plgpu.Layout.WGMMA.reduce(1)
            m = plgpu.layout_cast(jnp.full((block_q,), common.MASK_VALUE, jnp.float32), row_layout)
            l = plgpu.layout_cast(jnp.full((block_q,), 0.0, jnp.float32), row_layout)
            acc = plgpu.layout_cast(
                jnp.full((block_q, head_dim), 0.0, jnp.float32), plgpu.Layout.WGMMA
            )

        def kv_step(j, carry, *, masked: bool, last_of_item: bool):
            """Softmax and PV of block j, whose S is in the carry; then, unless this is the
            item's last block, S of block j + 1."""
            acc, m, l, s = carry
            slot = ring_slot(first_step + j)
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
            row_sum = p.sum(axis=1)
            l = l * alpha + row_sum
            if block_lse_ref is not None:
                # row_sum is 0 only by underflow (every row sees a key of each listed block):
                # the mask value then, not log(0); a NaN passes through.
                rows = pl.ds(wg * block_q, block_q)
                block_lse_ref.at[batch, head, tile, j, rows][...] = jnp.where(
                    row_sum == 0, common.MASK_VALUE, (m_new + jnp.log2(row_sum)) * common.LN_2
                )
            p_in = p.astype(dtype)
            if uses_schedule:
                # Keep the softmax ahead of the barrier (attention_mgpu measured this ordering).
                acc, l, m_new, p_in = lax.optimization_barrier((acc, l, m_new, p_in))
                plgpu.barrier_arrive(schedule_barrier)
            plgpu.barrier_wait(v_loaded.at[slot])
            if uses_schedule:
                plgpu.barrier_wait(schedule_barrier)

            def wait_next_k():
                if not last_of_item:
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
            if not last_of_item:
                s = qk(turn, first_step + j + 1)
            return acc, m_new, l, s

        with jax.named_scope("blocks"):
            # Only the last block can need the mask (module docstring): it runs in one of the
            # two one-step loops after the others.
            last_j = jnp.maximum(count - 1, 0)
            masked_last = jnp.where((count > 0) & needs_mask(last), 1, 0)
            carry = (acc, m, l, s)
            for lo, hi, masked, last_of_item in (
                (0, last_j, False, False),
                (last_j, last_j + masked_last, True, True),
                (last_j + masked_last, count, False, True),
            ):
                step = functools.partial(kv_step, masked=masked, last_of_item=last_of_item)
                carry = lax.fori_loop(lo, hi, step, carry)
            acc, m, l, _ = carry

        def finish():
            """Normalizes and stores this item's output and LSE (the output through its Q
            tile, which no matmul reads any more)."""
            with jax.named_scope("normalize"):
                # An empty row never waited for its Q: it must land before being overwritten.
                pl.when(count == 0)(lambda: plgpu.barrier_wait(q_barrier(turn)))
                # l is 0 only in a row that sees no key (acc is 0 there too); a NaN among a
                # row's visible scores makes l NaN, and the NaN must reach out and LSE.
                is_empty = l == 0
                safe_l = jnp.where(is_empty, 1.0, l)
                inv_l = 1.0 / safe_l  # one division per row, then products
                out_tile = q_smem.at[q_buffer(turn), wg]
                lse_row = lse_smem.at[lax.rem(turn, lse_smem.shape[0]), wg]
                out_tile[...] = (acc * lax.broadcast_in_dim(inv_l, acc.shape, [0])).astype(dtype)
                lse_row[...] = jnp.where(
                    is_empty, common.MASK_VALUE, (m + jnp.log2(safe_l)) * common.LN_2
                )
                plgpu.commit_smem()
            with jax.named_scope("store"):
                rows = pl.ds(q_rows(tile), block_q)
                plgpu.copy_smem_to_gmem(out_tile, out_ref.at[batch, rows, head], commit_group=False)
                plgpu.copy_smem_to_gmem(lse_row, lse_ref.at[batch, head, rows])

        def finish_under_next_qk():
            # The next item's first QK^T runs on the tensor cores, and after the schedule
            # barrier the other warpgroup's matmuls, while this warpgroup normalizes.
            return first_qk(
                turn + 1,
                first_step + count,
                while_in_flight=finish,
                first_of_segment=count == 0,
            )

        def finish_alone():
            finish()
            catch_up(count > 0)
            # Not the carried S: returning it would keep its registers live through the item.
            return no_scores()

        if persistent:
            s = lax.cond(next_count > 0, finish_under_next_qk, finish_alone)
        else:
            s = finish_alone()
        return turn + 1, next_item, first_step + count, next_count, next_last, s

    def claim_item():
        """The next unclaimed item: the grid's first num_programs items are the CTAs' own."""
        if not persistent:
            return jnp.int32(num_items)
        claim(counter_ref, items_smem)
        return num_programs + items_smem[ITEM_SLOTS]

    def publish(turn, item):
        slot = item_slot(turn)
        pl.when(turn >= ITEM_SLOTS)(lambda: plgpu.barrier_wait(item_free.at[slot]))
        items_smem[slot] = item
        plgpu.barrier_arrive(item_ready.at[slot])

    def memory_item(carry):
        """Publishes the item two turns ahead, then copies this item's K/V blocks into ring
        slots (first_step + j) % num_stages, each once the compute warpgroups have released
        the block that used the slot before."""
        turn, item, next_item, first_step = carry
        item_after = claim_item()
        publish(turn + 2, item_after)
        batch, head, tile = work_item(item)
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

        return turn + 1, next_item, item_after, first_step + count

    def has_work(carry):
        """Both warpgroups' item loops run while their current item (carry[1]) is a real one."""
        return carry[1] < num_items

    @pl.when(wg < num_compute_wgs)
    def _compute_wg():
        if num_compute_wgs == 2:
            plgpu.set_max_registers(232, action="increase")
        item = read_item(0)
        load_q(0, item)
        count, last = row_extent(item)
        s = lax.cond(count > 0, lambda: first_qk(0, 0, first_of_segment=True), no_scores)
        turns, *_ = lax.while_loop(
            has_work, compute_item, (jnp.int32(0), item, jnp.int32(0), count, last, s)
        )
        # The memory warpgroup also published the item after the first past-the-end one.
        read_item(turns + 1)
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == num_compute_wgs)
    def _memory_wg():
        if num_compute_wgs == 2:
            plgpu.set_max_registers(40, action="decrease")
        first_item = lax.axis_index("programs")
        publish(0, first_item)
        second_item = claim_item()
        publish(1, second_item)
        with jax.named_scope("issue"):
            turns, _, _, num_steps = lax.while_loop(
                has_work, memory_item, (jnp.int32(0), first_item, second_item, jnp.int32(0))
            )
        with jax.named_scope("drain"):
            # Observe the releases of the last copies and item slots too, so that every
            # barrier phase is consumed before the CTA exits (interpret mode checks this; on
            # hardware it is a short tail wait).
            @pl.loop(jnp.maximum(num_steps - num_stages, 0), num_steps)
            def _(step):
                plgpu.barrier_wait(k_free.at[ring_slot(step)])
                plgpu.barrier_wait(v_free.at[ring_slot(step)])

            # Turns 0 .. turns + 1 were published; those from ITEM_SLOTS on waited for a
            # release of the slot's previous item.
            @pl.loop(jnp.maximum(turns + 2 - ITEM_SLOTS, 0), turns + 2)
            def _(turn):
                plgpu.barrier_wait(item_free.at[item_slot(turn)])


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
    """See common.BackendResult for what is returned."""
    bs = geometry.block_size
    head_dim = q.shape[-1]
    config = config or default_config(head_dim, bs, geometry.num_q_blocks)
    check_supported(q, bs, config, interpret)
    batch, _, num_heads, _ = q.shape
    group = num_heads // k.shape[2]
    num_compute_wgs = config.compute_wgs(bs)

    q_padded = common.pad_queries(q, geometry)
    k_padded = common.pad_keys(k, geometry)
    v_padded = common.pad_keys(v, geometry)

    num_programs = config.programs(batch * geometry.num_q_blocks * num_heads)
    kernel = functools.partial(
        _kernel,
        qk_scale=sm_scale * common.LOG2_E,
        block_size=bs,
        num_q_tiles=geometry.num_q_blocks,
        first_q_pos=geometry.first_q_block * bs,
        num_keys=geometry.num_keys,
        group=group,
        num_stages=config.num_stages,
        num_compute_wgs=num_compute_wgs,
        causal=causal,
        num_programs=num_programs,
        claim=mosaic_gpu_queue.claim_interpreted if interpret else mosaic_gpu_queue.claim,
    )
    if not config.ping_pongs(bs):
        kernel = functools.partial(kernel, schedule_barrier=None)
    out_type = [
        jax.ShapeDtypeStruct(q_padded.shape, q.dtype),
        jax.ShapeDtypeStruct((batch, num_heads, geometry.padded_queries), jnp.float32),
    ]
    if with_block_lse:
        block_lse_shape = (batch, num_heads, geometry.num_q_blocks, layout.max_blocks, bs)
        out_type.append(jax.ShapeDtypeStruct(block_lse_shape, jnp.float32))
    else:
        kernel = _without_block_lse(kernel)
    # Items claimed after the CTAs' own; a fresh zero for every call.
    counter = jax.new_ref(jnp.zeros((1,), jnp.int32))
    outs = plgpu.kernel(
        kernel,
        out_type=out_type,
        scratch_types=scratch_types(config, bs, head_dim, q.dtype, interpret),
        grid=(num_programs,),
        grid_names=("programs",),
        num_threads=num_compute_wgs + 1,
        thread_name="wg",
        compiler_params=compiler_params(config),
        interpret=plgpu.InterpretGPUParams() if interpret else None,
        kernel_name="block_sparse_attention_mgpu",
    )(layout.kv_block_idx, layout.kv_block_count, q_padded, k_padded, v_padded, counter)
    return common.BackendResult(
        common.unpad_queries(outs[0], geometry),
        common.unpad_queries(outs[1], geometry, axis=2),
        outs[2] if with_block_lse else None,
    )


def _without_block_lse(kernel):
    """The kernel body of a launch without the block-LSE output: its ref is None."""

    def body(
        idx_ref, count_ref, q_ref, k_ref, v_ref, counter_ref, out_ref, lse_ref, *scratch, **kw
    ):
        refs = (idx_ref, count_ref, q_ref, k_ref, v_ref, counter_ref, out_ref, lse_ref)
        return kernel(*refs, None, *scratch, **kw)

    return body
