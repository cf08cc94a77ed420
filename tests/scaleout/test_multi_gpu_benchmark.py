"""The multi-GPU benchmark on simulated CPU devices: its exchange accounting and its records."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from benchmarks import multi_gpu
from models.sharding import ShardedAttention, make_mesh
from sharedsparse_jax.attention import SharePrefillAttention
from tests.scaleout import common


@pytest.fixture(scope="module")
def mesh2():
    return make_mesh({"data": 1, "model": 2})


def test_collectives_count_loop_trips_and_the_heavier_branch(mesh2):
    def body(carry, _):
        return carry + jax.lax.psum(carry, "model"), None  # 4 float32 = 16 bytes a trip

    def shard(x, flag):
        x, _ = jax.lax.scan(body, x, None, length=3)
        light = lambda x: x  # noqa: E731
        heavy = lambda x: jax.lax.all_gather(x, "model", axis=1, tiled=True)[:, :2]  # noqa: E731
        return jax.lax.cond(flag, heavy, light, x)

    run = jax.shard_map(
        shard, mesh=mesh2, in_specs=(P(None, "model"), P()), out_specs=P(), check_vma=False
    )
    jaxpr = jax.make_jaxpr(run)(jnp.ones((2, 4)), True).jaxpr
    found = multi_gpu.collectives(jaxpr)
    assert [c.primitive.name for c in found] == ["psum"] * 3 + ["all_gather"]
    assert [c.bytes for c in found] == [16, 16, 16, 16]
    assert multi_gpu.time_collectives(found, mesh2, repeats=2) > 0


def test_the_sharing_exchange_grows_with_shared_clusters(mesh2):
    config = common.CONFIG

    def exchange(table):
        inner = SharePrefillAttention(
            common.PLANNER, table, implementation="xla", head_axis="model"
        )
        found = multi_gpu.layer_collectives(
            ShardedAttention(inner, mesh2), config, 2, 256, jnp.float32
        )
        return sum(c.bytes for c in found), {c.primitive.name for c in found}

    without, _ = exchange(None)
    with_table, names = exchange(common.table())
    assert 0 < without < with_table
    assert {"psum", "all_gather"} <= names
    # Below the crossover the layer loop runs dense: nothing to exchange.
    dense = SharePrefillAttention(common.PLANNER, common.table(), head_axis="model")
    assert (
        multi_gpu.layer_collectives(ShardedAttention(dense, mesh2), config, 2, 16, jnp.float32)
        == []
    )


@pytest.mark.slow  # 20-50 s on the 2-core machine: the default suite keeps the two above
def test_dry_run_records_every_mesh(tmp_path):
    out = tmp_path / "multi_gpu.json"
    records = multi_gpu.main(
        ["--dry-run", "--models", "llama8b", "--methods", "dense", "shareprefill",
         "--meshes", "data=1,model=2", "data=1,model=4", "data=2,model=2", "--out", str(out)]
    )  # fmt: skip
    assert out.is_file()
    by_mesh = {}
    for r in records:
        by_mesh.setdefault(r["mesh"], []).append(r)
    # The tiny stand-in has 2 kv heads: model=4 cannot hold whole GQA groups.
    assert all("kv heads" in r["skipped"] for r in by_mesh["data=1,model=4"])
    for mesh in ("data=1,model=2", "data=2,model=2"):
        cells = {r["method"]: r for r in by_mesh[mesh]}
        assert set(cells) == {"dense", "shareprefill"}
        for r in cells.values():
            assert r["same_blocks"] is True
            assert r["max_logit_diff"] < 1e-4
            assert r["time_ms"] > 0 and r["single_gpu_time_ms"] > 0
            data = 2 if mesh.startswith("data=2") else 1
            assert np.isclose(r["speedup"], r["single_gpu_time_ms"] * data / r["time_ms"])
            assert np.isclose(r["scaling_efficiency"], r["speedup"] / r["devices"])
        assert cells["dense"]["exchange_bytes"] == 0 and cells["dense"]["exchange_ms"] == 0
        assert cells["shareprefill"]["exchange_bytes"] > 0
        assert cells["shareprefill"]["exchange_ms"] > 0
    # Tracing alone (no weights, nothing run) gives the same bytes.
    traced = multi_gpu.main(
        ["--dry-run", "--exchange-only", "--models", "llama8b", "--methods", "dense",
         "shareprefill", "--meshes", "data=1,model=2", "data=1,model=4", "data=2,model=2",
         "--out", str(tmp_path / "traced.json")]
    )  # fmt: skip
    ran = {(r["mesh"], r["method"]): r.get("exchange_bytes") for r in records}
    assert {(r["mesh"], r["method"]): r.get("exchange_bytes") for r in traced} == ran
