"""One process of a two-process sharded prefill on CPU, joined through jax.distributed.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests.scaleout.processes_check \\
        CHECKPOINT OUT.npz PORT PROCESS_ID

Each process brings 4 devices; the mesh data=2, model=4 spans both processes. Every process
restores only its shards of the checkpoint and runs SharePrefill prefill; process 0 writes the
logits and the planner's stats, gathered from both processes, to OUT.npz.
"""

from __future__ import annotations

import sys

import numpy as np
from jax.experimental import multihost_utils

from models import distributed, load_checkpoint, prefill
from models.sharding import ShardedAttention, make_mesh
from tests.scaleout import common


def main(directory: str, out: str, port: str, process_id: str) -> None:
    spec = distributed.DistributedSpec(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=int(process_id)
    )
    distributed.initialize(spec)
    import jax

    assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
    mesh = make_mesh({"data": 2, "model": 4})
    model = load_checkpoint(directory, mesh=mesh).model
    result = prefill(
        model, common.prompts(), attention=ShardedAttention(common.attention("model"), mesh)
    )
    arrays = {"logits": result.logits, **{f"stats_{k}": v for k, v in result.stats.items()}}
    gathered = {
        k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in arrays.items()
    }
    if jax.process_index() == 0:
        np.savez(out, **gathered)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
