"""Several processes, one computation: `jax.distributed` behind one entry point.

A process per host (TPU pod workers, GPU hosts) or several local processes (tests on CPU) join
one JAX runtime; meshes then span every process's devices. On a TPU pod nothing needs to be
given (JAX finds the coordinator itself); elsewhere the coordinator address, the process count
and this process's id come from the command line or the environment (`from_environment`).
Scripts call `initialize` once, before anything else touches a device; library code never does.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping

import jax

ENVIRONMENT = {
    "coordinator_address": "SHAREDSPARSE_COORDINATOR",
    "num_processes": "SHAREDSPARSE_NUM_PROCESSES",
    "process_id": "SHAREDSPARSE_PROCESS_ID",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedSpec:
    """How this process joins the others (all None: one process, or a TPU pod's auto-detection).

    Attributes:
      coordinator_address: host:port of process 0's coordinator.
      num_processes: how many processes take part.
      process_id: this process's index in [0, num_processes).
      auto: let JAX detect the cluster (TPU pods, SLURM, ...), ignoring the fields above.
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False

    def __post_init__(self):
        given = [self.coordinator_address, self.num_processes, self.process_id]
        if not self.auto and any(x is not None for x in given) and None in given:
            raise ValueError(
                "a multi-process run needs the coordinator address, the process count and this"
                f" process's id together; got {given}"
            )
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {self.num_processes}")
        if self.process_id is not None and not 0 <= self.process_id < (self.num_processes or 0):
            raise ValueError(f"process_id {self.process_id} is outside [0, {self.num_processes})")

    @property
    def is_multi_process(self) -> bool:
        return self.auto or (self.num_processes or 1) > 1


def from_environment(
    environ: Mapping[str, str], *, auto: bool = False, **given: str | int | None
) -> DistributedSpec:
    """A spec from explicit values (e.g. flags), each falling back to its environment variable.

    Args:
      environ: the environment (os.environ).
      auto: let JAX detect the cluster.
      given: coordinator_address, num_processes, process_id (None: from `ENVIRONMENT`).
    """
    values = {}
    for field, variable in ENVIRONMENT.items():
        value = given.get(field)
        if value is None:
            value = environ.get(variable)
        if value is not None and field != "coordinator_address":
            try:
                value = int(value)
            except ValueError as error:
                raise ValueError(
                    f"{field} (or ${variable}) must be an integer, got {value!r}"
                ) from error
        values[field] = value
    return DistributedSpec(auto=auto, **values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options of `from_environment` and of a mesh shape."""
    group = parser.add_argument_group("devices and processes")
    group.add_argument(
        "--mesh",
        default=None,
        help="shard the model over a (data, model) mesh of every process's devices, e.g."
        " 'data=1,model=8' (default: one device)",
    )
    group.add_argument(
        "--coordinator",
        dest="coordinator_address",
        help=f"multi-process: host:port of process 0 (or ${ENVIRONMENT['coordinator_address']})",
    )
    group.add_argument(
        "--num-processes",
        type=int,
        help=f"multi-process: how many processes (or ${ENVIRONMENT['num_processes']})",
    )
    group.add_argument(
        "--process-id",
        type=int,
        help=f"multi-process: this process's index (or ${ENVIRONMENT['process_id']})",
    )
    group.add_argument(
        "--auto-distributed",
        action="store_true",
        help="multi-process: let JAX find the cluster itself (TPU pod workers)",
    )


def from_arguments(args: argparse.Namespace, environ: Mapping[str, str]) -> DistributedSpec:
    """The spec of the options `add_arguments` defined (each falling back to its variable)."""
    return from_environment(
        environ,
        auto=args.auto_distributed,
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )


def initialize(spec: DistributedSpec) -> None:
    """Joins the other processes (nothing to do for a single process).

    The CPU backend's cross-process collectives go through gloo (the setting touches nothing
    on GPU or TPU). Call once per process, before any device is used.
    """
    if not spec.is_multi_process:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if spec.auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(
            coordinator_address=spec.coordinator_address,
            num_processes=spec.num_processes,
            process_id=spec.process_id,
        )
