"""The battery, run for every implementation that can run on a CPU."""

import dataclasses
import multiprocessing
import os
import queue
import time

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import mosaic_gpu_check
from pallas_kernels.block_sparse_attention import (
    MASK_VALUE,
    BlockGeometry,
    layout_from_mask,
    mosaic_gpu,
    mosaic_gpu_config,
)
from pallas_kernels.block_sparse_attention.block_map import block_map_from_block_lse
from tests.kernels.battery import (
    CASES,
    TINY_CASES,
    TOLERANCES,
    Battery,
    Case,
    as_np,
    make_inputs,
    random_block_mask,
)
from tests.oracle import numpy_attention


class TestReference(Battery):
    implementation = "reference"


class TestXla(Battery):
    implementation = "xla"


class TestTritonInterpret(Battery):
    implementation = "triton"


@pytest.mark.tpu_interpret
class TestMosaicTpuInterpret(Battery):
    implementation = "mosaic_tpu"
    cases = map_cases = TINY_CASES
    smoke_cases = TINY_CASES[:1]


def _in_16_bits(cases):
    """The battery's cases with float32 inputs switched to bf16 / f16 (mosaic_gpu has no f32)."""
    dtypes = (jnp.bfloat16, jnp.float16)
    return tuple(
        dataclasses.replace(c, dtype=dtypes[i % 2]) if c.dtype == jnp.float32 else c
        for i, c in enumerate(cases)
    )


def _smaller(case):
    """One batch element and half the heads (same group size): interpret mode is slow."""
    heads = (case.num_heads // 2, case.num_kv_heads // 2) if case.num_kv_heads % 2 == 0 else None
    num_heads, num_kv_heads = heads or (case.num_heads, case.num_kv_heads)
    return dataclasses.replace(case, batch=1, num_heads=num_heads, num_kv_heads=num_kv_heads)


MOSAIC_GPU_CASES = _in_16_bits(CASES)


@pytest.mark.slow
class TestMosaicGpuInterpret(Battery):
    """Mosaic GPU interpret mode (simulated warpgroups, TMA, barriers and wgmma on the CPU)."""

    implementation = "mosaic_gpu"
    cases = tuple(map(_smaller, MOSAIC_GPU_CASES))
    map_cases = tuple(map(_smaller, _in_16_bits(Battery.map_cases)))
    smoke_cases = cases[:1]


ITEMS_CASES = tuple(
    _smaller(c)
    for c in MOSAIC_GPU_CASES
    if c.name in {"base", "ragged_T", "diagonal_only", "mixed_densities"}
)


def _mosaic_gpu_launch(case, mask, config, on_gpu, inputs, with_block_lse=False):
    """(BackendResult, layout, geometry) of the kernel launched with `config` on `inputs`."""
    layout = layout_from_mask(jnp.asarray(mask), block_size=case.block_size)
    geometry = BlockGeometry(
        num_queries=case.num_queries, num_keys=case.num_keys, block_size=case.block_size
    )
    result = mosaic_gpu.attention(
        *inputs,
        layout,
        sm_scale=case.head_dim**-0.5,
        causal=True,
        geometry=geometry,
        with_block_lse=with_block_lse,
        interpret=not on_gpu,
        config=config,
    )
    return result, layout, geometry


def _mosaic_gpu_items(case, mask, config, on_gpu, rng, oracle_mask=None):
    """(out, lse) of the kernel launched with `config` on the case's inputs and mask, and the
    float64 oracle's (out, lse) for `oracle_mask` (default: the same mask)."""
    q, k, v = make_inputs(rng, case)
    result, _, _ = _mosaic_gpu_launch(case, mask, config, on_gpu, (q, k, v))
    want_out, want_lse, _ = numpy_attention.attention(
        as_np(q), as_np(k), as_np(v), mask if oracle_mask is None else oracle_mask, case.block_size
    )
    return as_np(result.out), np.asarray(result.lse, np.float64), want_out, want_lse


ON_GPU = pytest.mark.parametrize(
    "on_gpu", [False, pytest.param(True, marks=pytest.mark.gpu)], ids=["interpret", "gpu"]
)


LAUNCHES = {
    "one_item_per_cta": mosaic_gpu.MosaicGpuConfig(),
    "three_ctas": mosaic_gpu.MosaicGpuConfig(q_tiles=3, num_programs=3),
    "three_ctas_two_q_tiles": mosaic_gpu.MosaicGpuConfig(q_tiles=2, num_programs=3),
    "one_cta": mosaic_gpu.MosaicGpuConfig(q_tiles=3, num_programs=1),
    "more_ctas_than_items": mosaic_gpu.MosaicGpuConfig(q_tiles=3, num_programs=10_000),
}


@ON_GPU
@pytest.mark.parametrize("items_case", ITEMS_CASES, ids=[c.name for c in ITEMS_CASES])
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_mosaic_gpu_launches(items_case, launch, on_gpu, rng):
    """Persistent CTAs claiming work items: the K/V ring, its barriers, the Q/O tiles and the
    published items carry over from item to item (the next item's first QK^T runs under this
    one's normalize), rows of one block (fewer than the stages) among full ones, one CTA for
    everything, CTAs that claim nothing; and one item per CTA."""
    mask = random_block_mask(rng, items_case)
    out, lse, want_out, want_lse = _mosaic_gpu_items(
        items_case, mask, LAUNCHES[launch], on_gpu, rng
    )
    tol = TOLERANCES[items_case.dtype]
    np.testing.assert_allclose(out, want_out, atol=tol["out"], rtol=0)
    np.testing.assert_allclose(lse, want_lse, atol=tol["lse"], rtol=0)


@ON_GPU
@pytest.mark.parametrize("launch", ["one_item_per_cta", "three_ctas", "three_ctas_two_q_tiles"])
def test_mosaic_gpu_empty_rows(launch, on_gpu, rng):
    """Rows that list no block (first, last and runs of consecutive items among them) write
    zeros and an LSE of MASK_VALUE, and leave the rows around them exact."""
    case = ITEMS_CASES[0]
    mask = random_block_mask(rng, case)
    empty = rng.random(mask.shape[:3]) < 0.4
    empty[..., 0] = empty[..., -1] = True
    # The oracle runs on the full mask: its rows are independent, and an empty row has no
    # softmax to restate.
    out, lse, want_out, want_lse = _mosaic_gpu_items(
        case, mask & ~empty[..., None], LAUNCHES[launch], on_gpu, rng, oracle_mask=mask
    )
    rows = numpy_attention.block_index_of_query(case.num_queries, case.num_keys, case.block_size)
    empty_queries = empty[:, :, rows]  # [B, N, T]
    tol = TOLERANCES[case.dtype]
    out_by_query, want_by_query = (np.moveaxis(x, 2, 1) for x in (out, want_out))  # [B, N, T, H]
    np.testing.assert_array_equal(out_by_query[empty_queries], 0.0)
    np.testing.assert_array_equal(lse[empty_queries], np.float32(MASK_VALUE))
    kept = ~empty_queries
    np.testing.assert_allclose(out_by_query[kept], want_by_query[kept], atol=tol["out"], rtol=0)
    np.testing.assert_allclose(lse[kept], want_lse[kept], atol=tol["lse"], rtol=0)


# Rows of 64 (one compute warpgroup) and of 128 (two, each recording its half of the rows),
# both with a padded last query block.
BLOCK_MAP_CASES = (
    ITEMS_CASES[1],
    Case(
        "ragged_block_128",
        batch=1,
        num_queries=300,
        num_keys=300,
        num_heads=3,
        num_kv_heads=1,
        block_size=128,
        dtype=jnp.bfloat16,
    ),
)


@ON_GPU
@pytest.mark.parametrize("block_map_case", BLOCK_MAP_CASES, ids=str)
@pytest.mark.parametrize("launch", ["one_item_per_cta", "three_ctas_two_q_tiles"])
def test_mosaic_gpu_records_block_maps(block_map_case, launch, on_gpu, rng):
    """The recording launch (the selected heads' in block_sparse_attention_with_block_map):
    each listed block's row LSEs finish into maps equal to the oracle's, one block step at a
    time through persistent CTAs, and out and LSE stay exact."""
    case = block_map_case
    q, k, v = make_inputs(rng, case)
    mask = random_block_mask(rng, case)
    result, layout, geometry = _mosaic_gpu_launch(
        case, mask, LAUNCHES[launch], on_gpu, (q, k, v), with_block_lse=True
    )
    maps = np.asarray(
        block_map_from_block_lse(result.block_lse, result.lse, layout, geometry),
        np.float64,
    )
    want_out, want_lse, probs = numpy_attention.attention(
        as_np(q), as_np(k), as_np(v), mask, case.block_size
    )
    want_map = numpy_attention.block_map(probs, case.num_keys, case.block_size)
    tol = TOLERANCES[case.dtype]
    np.testing.assert_allclose(as_np(result.out), want_out, atol=tol["out"], rtol=0)
    np.testing.assert_allclose(
        np.asarray(result.lse, np.float64), want_lse, atol=tol["lse"], rtol=0
    )
    np.testing.assert_allclose(maps, want_map, atol=tol["block_map"], rtol=1e-4)
    assert (maps[~mask] == 0).all(), "unlisted blocks must be zero"


# Three heads of six query blocks, the rows of one of them listing no block (as the selected
# heads' rows in the main launch of `block_sparse_attention_with_block_map`): at block size 128
# two compute warpgroups ping-pong, and the launch order runs one head's items after another's.
EMPTY_HEAD_CASE = Case(
    "empty_head",
    batch=1,
    num_queries=768,
    num_keys=768,
    num_heads=3,
    num_kv_heads=1,
    block_size=128,
    dtype=jnp.bfloat16,
)


def _empty_head(launch, head, on_gpu, results):
    """Child process of test_mosaic_gpu_empty_head."""
    # On the GPU the parent's backend may hold most of the memory already.
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    rng = np.random.default_rng(0)
    mask = random_block_mask(rng, EMPTY_HEAD_CASE)
    listed = mask.copy()
    listed[:, head] = False
    out, lse, want_out, want_lse = _mosaic_gpu_items(
        EMPTY_HEAD_CASE, listed, LAUNCHES[launch], on_gpu, rng, oracle_mask=mask
    )
    results.put((out, lse, want_out, want_lse))


TIMEOUT_S = 180  # about 10 s in interpret mode


@ON_GPU
@pytest.mark.parametrize("head", [0, 1], ids=["first_head", "middle_head"])
@pytest.mark.parametrize("launch", ["three_ctas_two_q_tiles", "one_cta"])
def test_mosaic_gpu_empty_head(launch, head, on_gpu):
    """A run of items without blocks, at the start of a CTA's items or between items with
    blocks, is passed and the rows around it are exact. "one_cta" runs all 18 items in one CTA.
    A second warpgroup kept one schedule phase behind through such a run would wait for an
    arrival the first cannot reach, and the launch would deadlock. A child process runs the
    launch, so that a deadlock fails the test instead of hanging the suite."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_empty_head, args=(launch, head, on_gpu, results))
    child.start()
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while True:
            try:
                out, lse, want_out, want_lse = results.get(timeout=1)
                break
            except queue.Empty:
                if not child.is_alive():
                    pytest.fail(f"the child process exited ({child.exitcode}) without a result")
                if time.monotonic() > deadline:
                    pytest.fail(f"the {launch} launch did not finish in {TIMEOUT_S} s (deadlock)")
    finally:
        child.kill()
        child.join()
    tol = TOLERANCES[EMPTY_HEAD_CASE.dtype]
    others = [h for h in range(EMPTY_HEAD_CASE.num_heads) if h != head]
    np.testing.assert_array_equal(out[:, :, head], 0.0)
    np.testing.assert_array_equal(lse[:, head], np.float32(MASK_VALUE))
    np.testing.assert_allclose(out[:, :, others], want_out[:, :, others], atol=tol["out"], rtol=0)
    np.testing.assert_allclose(lse[:, others], want_lse[:, others], atol=tol["lse"], rtol=0)


def _head_dim_64(name, **fields):
    return Case(name, batch=1, head_dim=64, block_size=128, dtype=jnp.bfloat16, **fields)


# The GQA groups and head dim of SmolLM2 (9 query heads over 3 kv heads) and Qwen2.5-Coder
# (14 over 2) at the benchmarks' block of 128, ragged rows of up to two blocks (fewer than the
# stages: the K/V ring wraps across items), slow in interpret mode; and in the default suite a
# group of 3 whose 300 queries end 900 keys, full causal rows of 6 to 8 blocks (more than any
# ring holds).
HEAD_DIM_64_CASES = (
    pytest.param(
        _head_dim_64("smollm2_9_3", num_queries=200, num_keys=200, num_heads=9, num_kv_heads=3),
        marks=pytest.mark.slow,
        id="smollm2_9_3",
    ),
    pytest.param(
        _head_dim_64(
            "qwen_coder_14_2", num_queries=200, num_keys=200, num_heads=14, num_kv_heads=2
        ),
        marks=pytest.mark.slow,
        id="qwen_coder_14_2",
    ),
    pytest.param(
        _head_dim_64(
            "gqa3_long_rows",
            num_queries=300,
            num_keys=900,
            num_heads=3,
            num_kv_heads=1,
            pattern="full",
        ),
        id="gqa3_long_rows",
    ),
)


@ON_GPU
@pytest.mark.parametrize("shape_case", HEAD_DIM_64_CASES)
@pytest.mark.parametrize("launch", mosaic_gpu_check.HEAD_DIM_64_CONFIGS)
def test_mosaic_gpu_head_dim_64_launches(shape_case, launch, on_gpu, rng):
    """Every launch the head-dim-64 sweep times (benchmarks/mosaic_gpu_check.py) against the
    float64 oracle."""
    config = dict(mosaic_gpu_check.SWEEP_CONFIGS)[launch]
    mask = random_block_mask(rng, shape_case)
    out, lse, want_out, want_lse = _mosaic_gpu_items(shape_case, mask, config, on_gpu, rng)
    tol = TOLERANCES[shape_case.dtype]
    np.testing.assert_allclose(out, want_out, atol=tol["out"], rtol=0)
    np.testing.assert_allclose(lse, want_lse, atol=tol["lse"], rtol=0)


def test_mosaic_gpu_default_is_persistent_where_two_q_tiles_fit():
    launch = mosaic_gpu_config.MosaicGpuConfig
    default = mosaic_gpu_config.default_config
    assert default(128, 128) == launch(num_stages=2, q_tiles=2)
    assert default(64, 64) == launch(num_stages=3, q_tiles=2)
    # Head dim 64 at bs 128 (the real models): one item per CTA up to 8K tokens, then four
    # stages beside two Q tiles, as measured on the H100.
    assert default(64, 128, 64) == launch()
    assert default(64, 128, 65) == default(64, 128) == launch(num_stages=4, q_tiles=2)
    # bs 256 x H 128: one 64 KB Q tile and one K/V stage are all that fit.
    assert default(128, 256) == launch(num_stages=1)
    for head_dim, bs in [(64, 64), (64, 128), (128, 128), (256, 128), (128, 256), (64, 256)]:
        needed = mosaic_gpu_config.smem_bytes(head_dim, bs, default(head_dim, bs))
        assert needed <= mosaic_gpu_config.SMEM_BYTES


def test_mosaic_gpu_launch_programs():
    launch = mosaic_gpu_config.MosaicGpuConfig
    assert launch().programs(1000) == 1000  # one item per CTA
    assert launch(q_tiles=3, num_programs=7).programs(1000) == 7
    assert launch(q_tiles=3, num_programs=7).programs(5) == 5
    assert launch(q_tiles=2).programs(10_000) == mosaic_gpu_config.device_sms()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"q_tiles": 4}, "q_tiles"),
        ({"num_programs": 0}, "num_programs"),
        ({"num_stages": 0}, "num_stages"),
    ],
)
def test_mosaic_gpu_config_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        mosaic_gpu_config.MosaicGpuConfig(**options)


@pytest.mark.gpu
class TestMosaicGpu(Battery):
    """The battery compiled for a real Hopper GPU (SHAREDSPARSE_TEST_PLATFORM=gpu)."""

    implementation = "mosaic_gpu"
    interpret = False
    cases = MOSAIC_GPU_CASES
    map_cases = _in_16_bits(Battery.map_cases)
    smoke_cases = _in_16_bits(Battery.smoke_cases)


@pytest.mark.gpu
class TestTritonGpu(Battery):
    """The same battery compiled for a real GPU (SHAREDSPARSE_TEST_PLATFORM=gpu)."""

    implementation = "triton"
    interpret = False
