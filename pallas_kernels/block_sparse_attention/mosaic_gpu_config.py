"""Launch configuration of the Mosaic GPU kernel (mosaic_gpu.py): its options, the default
launch for a shape, the shared memory and barriers a launch allocates and what the kernel can
run."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental.pallas import mosaic_gpu as plgpu

SUPPORTED_HEAD_DIMS = (64, 128, 256)
SUPPORTED_DTYPES = (jnp.bfloat16, jnp.float16)
# wgmma works on 64-row tiles per warpgroup.
WGMMA_ROWS = 64
# Shared memory per CTA on H100/H200 (227 KB usable).
SMEM_BYTES = 227 * 1024
# Profiler ranges kept per warpgroup and CTA (a truncated trace is cut, not corrupted).
PROFILE_RANGES = 320
# Pallas Mosaic GPU starts every shared-memory allocation on a 1 KB boundary.
SMEM_ALIGNMENT = 1024
HOPPER_SMS = 132
# Work items published by the memory warpgroup to the compute warpgroups, in shared memory
# slots 0 .. ITEM_SLOTS - 1; slot ITEM_SLOTS holds the memory warpgroup's last claim.
ITEM_SLOTS = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class MosaicGpuConfig:
    """Launch parameters.

    num_stages: depth of the K/V shared-memory ring (copies in flight ahead of the compute).
    num_compute_wgs: compute warpgroups per CTA, 1 or 2; each owns bs / num_compute_wgs query
      rows, which must be a multiple of 64. None: 2 when the block has >= 128 rows, else 1.
    use_schedule_barrier: ping-pong the two compute warpgroups (FA3's intra-CTA overlap).
    profile_dir: when set, every CTA records the start and end cycle of each of its warpgroups'
      named phases (stagger, setup, blocks, normalize, store; issue, drain) and each launch
      writes them as a Chrome trace into this directory. For diagnosis: the dump is slow, and
      every launch writes a file (benchmarks/diagnostics/mosaic_gpu_timeline.py reads them).
    q_tiles: Q/O tiles per CTA, 1 to 3. With one, each CTA runs one work item.
      With more the launch is persistent: each CTA runs the item its index names, then
      claims the next unclaimed item of the launch order from a counter in global memory,
      and items follow each other without a drain (mosaic_gpu.py). Item t + 1's Q loads at
      the start of item t, into the tile of item t + 1 - q_tiles once that item's output
      store has read it: with three tiles that store was issued an item earlier, with two
      it was issued just before (a short wait).
    num_programs: CTAs of the persistent launch; None: one per SM of the device.
    """

    num_stages: int = 2
    num_compute_wgs: int | None = None
    use_schedule_barrier: bool = True
    profile_dir: str | None = None
    q_tiles: int = 1
    num_programs: int | None = None

    def __post_init__(self):
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {self.num_stages}")
        if self.q_tiles not in (1, 2, 3):
            raise ValueError(f"q_tiles must be 1, 2 or 3, got {self.q_tiles}")
        if self.num_programs is not None and self.num_programs < 1:
            raise ValueError(f"num_programs must be >= 1 or None, got {self.num_programs}")
        if self.num_compute_wgs not in (None, 1, 2):
            raise ValueError(f"num_compute_wgs must be 1, 2 or None, got {self.num_compute_wgs}")

    def compute_wgs(self, block_size: int) -> int:
        if self.num_compute_wgs is not None:
            return self.num_compute_wgs
        return 2 if block_size >= 2 * WGMMA_ROWS else 1

    def ping_pongs(self, block_size: int) -> bool:
        """Whether two compute warpgroups alternate through the schedule barrier."""
        return self.compute_wgs(block_size) == 2 and self.use_schedule_barrier

    @property
    def persistent(self) -> bool:
        return self.q_tiles > 1

    def programs(self, num_items: int) -> int:
        """CTAs of the launch for num_items work items."""
        if not self.persistent:
            return num_items
        return min(num_items, self.num_programs or device_sms())


def device_sms() -> int:
    """SMs of the default device: 132 (H100 SXM, H200) where it does not say (interpret mode,
    lowering without a GPU)."""
    return getattr(jax.devices()[0], "core_count", None) or HOPPER_SMS


# Query blocks up to which head dim 64 at block size 128 runs one item per CTA (8K tokens).
HEAD_DIM_64_ONE_ITEM_Q_BLOCKS = 64


def default_config(
    head_dim: int, block_size: int, num_q_blocks: int | None = None
) -> MosaicGpuConfig:
    """The default launch for a head dim, block size and (where known) Tb query blocks.

    Head dim 64 at block size 128, the real models' shape, has its own rule, measured on the
    H100 against cuDNN in the same rounds (docs/results.md section 7, 9/3 and 14/2 heads, random
    layouts): up to 64 query blocks one item per CTA (99 % of cuDNN's rate on full rows at 8K
    against 85 % for two Q tiles and three stages; 77-84 % against 69-76 % at 30-40 % density;
    within 2.3 points at 10 %); beyond, and where Tb is not given, two Q tiles beside four K/V
    stages (ahead of three stages in every cell but two within a point, up to 14 points at
    128K).

    Otherwise: persistent with two Q tiles where they fit beside two K/V stages, else one item
    per CTA; as many stages as fit, up to 3. On the H200 (bs 128, H 128) two and three Q tiles
    are within a point of each other at 32K and 10 % density (about 92-93 % of cuDNN's rate);
    two lead at 128K and on full rows, three at 32K and 5 %; one item per CTA reaches about
    84 % at 32K and 10 %.
    """
    if (head_dim, block_size) == (64, 128):
        if num_q_blocks is not None and num_q_blocks <= HEAD_DIM_64_ONE_ITEM_Q_BLOCKS:
            return MosaicGpuConfig()
        return MosaicGpuConfig(num_stages=4, q_tiles=2)
    for q_tiles in (2, 1):
        for num_stages in (3, 2, 1):
            config = MosaicGpuConfig(num_stages=num_stages, q_tiles=q_tiles)
            fits = smem_bytes(head_dim, block_size, config) <= SMEM_BYTES
            if fits and (q_tiles == 1 or num_stages >= 2):
                return config
    return MosaicGpuConfig(num_stages=1)


def compiler_params(config: MosaicGpuConfig) -> plgpu.CompilerParams:
    # The softmax's row reductions stay inside warps (WGMMA layout), so no shared memory is
    # reserved for cross-warp reductions; the default 2 KB would keep a third K/V stage from
    # fitting beside one Q tile at bs 128, H 128.
    profile = {}
    if config.profile_dir is not None:
        profile = dict(
            profile_space=PROFILE_RANGES,
            profile_dir=config.profile_dir,
            profile_bounds_check=True,
        )
    return plgpu.CompilerParams(approx_math=True, reduction_scratch_bytes=0, **profile)


def lse_rows(config: MosaicGpuConfig) -> int:
    """LSE rows per compute warpgroup: one per item in flight, at most two (an item's row is
    rewritten two items later, when the item between has started)."""
    return min(config.q_tiles, 2)


def smem_bytes(head_dim: int, block_size: int, config: MosaicGpuConfig) -> int:
    """Shared memory one CTA allocates: Q/O tiles, K/V ring, LSE rows, work-item slots (each
    on a 1 KB boundary) and barriers (8 bytes each)."""

    def aligned(nbytes):
        return -(-nbytes // SMEM_ALIGNMENT) * SMEM_ALIGNMENT

    tiles = (config.q_tiles + 2 * config.num_stages) * aligned(2 * block_size * head_dim)
    lse = aligned(4 * block_size * lse_rows(config))
    items = aligned(4 * (ITEM_SLOTS + 1))
    wgs = config.compute_wgs(block_size)
    barriers = config.q_tiles * wgs + 4 * config.num_stages + 2 * ITEM_SLOTS + 1
    return tiles + lse + items + 8 * barriers


def scratch_types(
    config: MosaicGpuConfig, block_size: int, head_dim: int, dtype, interpret: bool
) -> list:
    """The kernel's shared memory (what smem_bytes counts) and barriers: [(Q/O tiles, K ring,
    V ring, LSE rows, item slots[, P tiles]), (Q, K, V loaded), (K, V free), (item published,
    item released)] and the schedule barrier when the launch ping-pongs."""
    wgs = config.compute_wgs(block_size)
    block_q = block_size // wgs
    stages = config.num_stages
    # 16-bit tiles of 64 columns are 128 bytes wide: the 128-byte swizzle wgmma reads best.
    transforms = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    buffers = (
        plgpu.SMEM((config.q_tiles, wgs, block_q, head_dim), dtype, transforms=transforms),
        plgpu.SMEM((stages, block_size, head_dim), dtype, transforms=transforms),
        plgpu.SMEM((stages, block_size, head_dim), dtype, transforms=transforms),
        plgpu.SMEM((lse_rows(config), wgs, block_q), jnp.float32),
        plgpu.SMEM((ITEM_SLOTS + 1,), jnp.int32),
    )
    if interpret:
        # P for the PV wgmma; on hardware P stays in registers.
        buffers += (plgpu.SMEM((wgs, block_q, block_size), dtype, transforms=transforms),)
    scratch = [
        buffers,
        (
            plgpu.Barrier(num_barriers=config.q_tiles * wgs),
            plgpu.Barrier(num_barriers=stages),
            plgpu.Barrier(num_barriers=stages),
        ),
        (
            plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
            plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
        ),
        (
            plgpu.Barrier(num_barriers=ITEM_SLOTS),
            plgpu.Barrier(num_arrivals=wgs, num_barriers=ITEM_SLOTS),
        ),
    ]
    if config.ping_pongs(block_size):
        scratch.append(plgpu.Barrier(num_arrivals=wgs))
    return scratch


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
            f" H={head_dim}, {config.num_stages} stages, {config.q_tiles} Q tiles), over"
            f" {SMEM_BYTES}"
        )
