"""Launch configuration of the Mosaic GPU kernel (mosaic_gpu.py): its options, the default
launch for a shape, the shared memory a launch needs and what the kernel can run."""

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class MosaicGpuConfig:
    """Launch parameters.

    num_stages: depth of the K/V shared-memory ring (copies in flight ahead of the compute).
    num_compute_wgs: compute warpgroups per CTA, 1 or 2; each owns bs / num_compute_wgs query
      rows, which must be a multiple of 64. None: 2 when the block has >= 128 rows, else 1.
    use_schedule_barrier: ping-pong the two compute warpgroups (FA3's intra-CTA overlap).
    profile_dir: when set, every CTA records the start and end cycle of each of its warpgroups'
      named phases (stagger, setup, blocks, normalize, store; issue, drain) and
      each launch writes them as a Chrome trace into this directory. For diagnosis: the dump
      is slow, and every launch writes a file (benchmarks/mosaic_gpu_timeline.py reads them).
    items_per_program: consecutive work items each CTA runs, one Q/O tile each (up to three,
      reused in turn). A CTA's first item pays the Q load and the ring's fill, its last the
      drain and the output store; between its items the next item's first QK^T runs under
      this one's normalize and store (mosaic_gpu.py).
    """

    num_stages: int = 2
    num_compute_wgs: int | None = None
    use_schedule_barrier: bool = True
    profile_dir: str | None = None
    items_per_program: int = 1

    def __post_init__(self):
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {self.num_stages}")
        if self.items_per_program < 1:
            raise ValueError(f"items_per_program must be >= 1, got {self.items_per_program}")
        if self.num_compute_wgs not in (None, 1, 2):
            raise ValueError(f"num_compute_wgs must be 1, 2 or None, got {self.num_compute_wgs}")

    def compute_wgs(self, block_size: int) -> int:
        if self.num_compute_wgs is not None:
            return self.num_compute_wgs
        return 2 if block_size >= 2 * WGMMA_ROWS else 1


def default_config(head_dim: int, block_size: int) -> MosaicGpuConfig:
    """The default launch: two items per CTA where a second Q tile fits beside two K/V stages
    (else one), and as many stages as fit, up to 3.

    H200, bs 128, H 128, cuDNN timed in the same rounds (docs/results.md 7.5, run 24): two
    items per CTA measured 91.8 % of cuDNN's rate at 32K and 10 % density, against 83.0 % for
    one and 89.5 % for three; on full rows 101.5 % at 32K and 108.9 % at 128K, where three
    measured 99.9 % and 107.3 %. Three lead at 5 % density and at 128K / 10 % (78.0 % against
    77.1 %, 99.5 % against 96.1 %). A third stage measured within 2 points of two (run 18).
    """
    tile = block_size * head_dim * 2  # one 16-bit Q, K or V tile

    def stages_fitting(q_tiles: int) -> int:
        return (SMEM_BYTES - 4096 - q_tiles * tile) // (2 * tile)

    if stages_fitting(2) >= 2:
        return MosaicGpuConfig(num_stages=min(3, stages_fitting(2)), items_per_program=2)
    return MosaicGpuConfig(num_stages=max(1, min(3, stages_fitting(1))))


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


def q_buffers(config: MosaicGpuConfig) -> int:
    """Q/O tiles (and LSE rows) per CTA: one per item, up to three. With three, an item's Q
    loads two items ahead into the tile whose output store was issued an item earlier."""
    return min(config.items_per_program, 3)


def smem_bytes(head_dim: int, block_size: int, config: MosaicGpuConfig) -> int:
    """Shared memory one CTA allocates (Q/O tiles, K/V ring, LSE rows), barriers excluded."""
    tiles = q_buffers(config) + 2 * config.num_stages
    return 2 * block_size * head_dim * tiles + 4 * block_size * q_buffers(config)


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
            f" H={head_dim}, {config.num_stages} stages, {q_buffers(config)} Q tiles), over"
            f" {SMEM_BYTES}"
        )
