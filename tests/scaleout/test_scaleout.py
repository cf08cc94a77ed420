"""Scale-out on CPU: simulated devices and two local processes give the single-device results.

The device count is fixed when JAX starts, so the sharded runs are subprocesses:
`meshes_check` (8 simulated devices, meshes 1x8, 2x4 and 8x1) and two `processes_check`
processes of 4 devices each joined by jax.distributed. Bad meshes are refused in-process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh

from models import load_checkpoint, prefill
from models.distributed import DistributedSpec, from_environment
from models.sharding import check_mesh, make_mesh, parse_mesh_shape
from tests.scaleout import common

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    return common.save(tmp_path_factory.mktemp("scaleout") / "tiny")


def _run(module: str, *args: str, devices: int, timeout: int = 900) -> subprocess.Popen:
    env = os.environ | {
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_meshes_equal_one_device(checkpoint_dir):
    process = _run("tests.scaleout.meshes_check", str(checkpoint_dir), devices=8)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-4000:]
    for mesh in ("data=1,model=8", "data=2,model=4", "data=8,model=1"):
        assert f"mesh {mesh}: ok" in output


def test_two_processes_equal_one_device(checkpoint_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    out = tmp_path / "two_processes.npz"
    processes = [
        _run(
            "tests.scaleout.processes_check", str(checkpoint_dir), str(out), port, str(i), devices=4
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]
    got = np.load(out)
    single = prefill(
        load_checkpoint(checkpoint_dir).model, common.prompts(), attention=common.attention()
    )
    np.testing.assert_allclose(got["logits"], np.asarray(single.logits), rtol=0, atol=2e-5)
    for name, value in single.stats.items():
        if name.startswith(("num_", "density", "share_reason")):
            np.testing.assert_array_equal(got[f"stats_{name}"], np.asarray(value), err_msg=name)
    assert got["stats_num_shared"].sum() > 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data=2,model=4", None),
        ("model=8", None),
        ("data=2,data=4", "each once"),
        ("pipeline=2", "axis=size pairs over"),
        ("model=0", "model must be >= 1"),
        ("model=x", "axis=size pairs over"),
    ],
)
def test_parse_mesh_shape(text, message):
    if message is None:
        shape = parse_mesh_shape(text)
        assert set(shape) == {"data", "model"} and all(v >= 1 for v in shape.values())
    else:
        with pytest.raises(ValueError, match=message):
            parse_mesh_shape(text)


@pytest.mark.parametrize(
    ("model_axis", "overrides", "message"),
    [
        (16, {}, "larger than the 8 kv heads"),
        (3, {}, "8 kv heads do not divide by the model axis 3"),
        (4, {"num_heads": 24, "num_kv_heads": 8, "intermediate_size": 90}, "90 MLP hidden units"),
    ],
)
def test_bad_meshes_are_refused(model_axis, overrides, message):
    import dataclasses

    config = dataclasses.replace(common.CONFIG, **overrides)
    mesh = AbstractMesh((1, model_axis), ("data", "model"))
    with pytest.raises(ValueError, match=message):
        check_mesh(config, mesh)


def test_mesh_needs_the_device_count():
    count = len(jax.devices())
    with pytest.raises(ValueError, match=f"needs {2 * count} devices, there are {count}"):
        make_mesh({"data": 2, "model": count})


def test_distributed_spec_from_flags_and_environment():
    environ = {"SHAREDSPARSE_COORDINATOR": "host:1234", "SHAREDSPARSE_NUM_PROCESSES": "4"}
    spec = from_environment(environ, process_id=3)
    assert spec == DistributedSpec(coordinator_address="host:1234", num_processes=4, process_id=3)
    assert spec.is_multi_process and not from_environment({}).is_multi_process
    with pytest.raises(ValueError, match="together"):
        from_environment(environ)  # no process id anywhere
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        from_environment(environ, process_id=4)
    with pytest.raises(ValueError, match="must be an integer"):
        from_environment({"SHAREDSPARSE_NUM_PROCESSES": "two"})


def test_pod_job_on_simulated_devices(tmp_path):
    """The pod job on the test session's 4 CPU devices as a 2 x 2 mesh, one process."""
    from benchmarks import pod
    from tests.integration import helpers

    checkpoint = helpers.save_tiny_checkpoint(tmp_path / "tiny", max_position_embeddings=512)
    out = tmp_path / "pod.json"
    records = pod.main(
        ["--model", str(checkpoint), "--mesh", "data=2,model=2", "--lengths", "256",
         "--block-size", "32", "--runs", "1", "--windows", "2",
         "--methods", "dense", "shareprefill", "streaming", "--out", str(out)]
    )  # fmt: skip
    assert [r["method"] for r in records] == ["dense", "shareprefill", "streaming"]
    dense = records[0]
    assert dense["delta_nll"] == 0 and dense["speedup"] == 1 and dense["density"] == 1
    for record in records:
        assert record["mesh"] == "data=2,model=2" and record["device_count"] == 4
        assert record["time_ms"] > 0 and np.isfinite(record["delta_nll"])
    assert records[1]["density"] < 1  # SharePrefill plans 32-token blocks sparsely
    saved = json.loads(out.read_text())
    assert saved["records"] == records
