"""Work-item claims of the persistent Mosaic GPU launch (mosaic_gpu.py): the next item number
from a counter in global memory, for a whole warpgroup.

Pallas Mosaic GPU's atomics (jax 0.11.2: `plgpu.atomic_add` and the others) return nothing, so
the fetch-and-add is written as inline Mosaic GPU code. Interpret mode runs no inline code and
gets a stand-in.
"""

from __future__ import annotations

from jax.experimental.mosaic.gpu import utils as mgpu_utils
from jax.experimental.pallas import mosaic_gpu as plgpu
from jaxlib.mlir import ir
from jaxlib.mlir.dialects import arith, memref

from pallas_kernels.block_sparse_attention.mosaic_gpu_config import ITEM_SLOTS


def claim(counter_ref, items_ref) -> None:
    """items_ref[ITEM_SLOTS] = counter_ref[0]++: one thread's atomic add on the counter (GMEM),
    its old value passed on to the rest of the warpgroup through items_ref (SMEM)."""

    @plgpu.inline_mgpu(arg_types=(plgpu.RefType(), plgpu.RefType()))
    def fetch_and_add(ctx, counter, items):
        del ctx
        index = ir.IndexType.get()
        one = arith.constant(ir.IntegerType.get_signless(32), 1)
        mgpu_utils.warpgroup_barrier()  # every thread has read the previous claim
        with mgpu_utils.single_thread(scope=mgpu_utils.ThreadSubset.WARPGROUP):
            old = memref.atomic_rmw(
                arith.AtomicRMWKind.addi, one, counter, [arith.constant(index, 0)]
            )
            memref.store(old, items, [arith.constant(index, ITEM_SLOTS)])
        mgpu_utils.warpgroup_barrier()

    fetch_and_add(counter_ref, items_ref)


def claim_interpreted(counter_ref, items_ref) -> None:
    """Interpret mode's claim: a read and a write, not atomic across CTAs. Two CTAs that read
    the same value run the same item and write the same output; no item is skipped."""
    items_ref[ITEM_SLOTS] = counter_ref[0]
    counter_ref[0] = items_ref[ITEM_SLOTS] + 1
