"""Runs across processes and hosts, on JAX's own multi-process runtime (`jax.distributed`).

Every process runs the same program. The particle axis of a sampler that shards (`pis`,
`dds`, `dis`: their `devices` option) is split over one global mesh of every process's
devices, the gradient is reduced by the compiler's collectives, and the results are
gathered so that every process holds the whole run; only process 0 writes files.
"""

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jaxtyping import PyTree

from ._errors import SdekitError


class DistributedError(SdekitError):
    """Joining a multi-process run failed: the coordinator, process count or id is wrong."""


def initialize_distributed(
    coordinator: str | None = None,
    processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout: int = 100,
) -> None:
    """Join a multi-process run: `jax.distributed.initialize`, before any JAX computation.

    `coordinator` (`HOST:PORT` of process 0), `processes` and `process_id` (0, 1, ...,
    `processes - 1`) are given together, or all omitted to read them from the environment
    variables `SDEKIT_COORDINATOR`, `SDEKIT_PROCESSES` and `SDEKIT_PROCESS_ID` (those
    `sdekit sample` reads) or, without them, to detect them from the cluster (SLURM,
    Open MPI, Cloud TPU). On CPU the collectives are JAX's gloo
    implementation. A process that stops sending heartbeats for `heartbeat_timeout`
    seconds (killed, lost) ends every other process with JAX's error "another task died".
    Calling it again in an initialised process does nothing.
    """
    if coordinator is None and processes is None and process_id is None:
        coordinator, processes, process_id = _from_environment()
    given = [v is not None for v in (coordinator, processes, process_id)]
    if any(given) and not all(given):
        raise DistributedError(
            "give the coordinator (HOST:PORT), the number of processes and this process's id "
            f"together, or none of them to detect them from the cluster; got coordinator="
            f"{coordinator!r}, processes={processes!r}, process_id={process_id!r}")
    if all(given) and not (isinstance(processes, int) and 0 <= process_id < processes):
        raise DistributedError(
            f"process_id must be from 0 to processes - 1, got {process_id!r} of {processes!r}")
    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, processes, process_id,
                                   heartbeat_timeout_seconds=heartbeat_timeout)
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"could not join the multi-process run: {e}") from None


def _from_environment() -> tuple[str | None, int | None, int | None]:
    env = os.environ
    try:
        return (env.get("SDEKIT_COORDINATOR"),
                *(None if env.get(k) is None else int(env[k])
                  for k in ("SDEKIT_PROCESSES", "SDEKIT_PROCESS_ID")))
    except ValueError:
        raise DistributedError(
            f"SDEKIT_PROCESSES and SDEKIT_PROCESS_ID must be integers, got "
            f"{env.get('SDEKIT_PROCESSES')!r} and {env.get('SDEKIT_PROCESS_ID')!r}") from None


def is_writer() -> bool:
    """Whether this process writes the run's files: process 0 (the only one without
    `jax.distributed`)."""
    return jax.process_index() == 0


def process_0s(flag: bool) -> bool:
    """Process 0's `flag`, in every process: a decision all processes must share (one
    that starts a collective computation, or skips it). `flag` itself in one process."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.bool_(flag)))


def gather(tree: PyTree) -> PyTree:
    """Every array of `tree` whole on this process: an array sharded across processes is
    gathered into a NumPy array (`process_allgather`); the rest is returned as it is."""

    def whole(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return leaf

    return jax.tree.map(whole, tree)


def replicate(tree: PyTree) -> PyTree:
    """In a multi-process run, `tree`'s arrays placed on every device of every process,
    replicated: where a training step's outputs live, so that its inputs match them and it
    compiles once. Unchanged in a single process."""
    if jax.process_count() == 1:
        return tree
    replicated = jax.sharding.NamedSharding(_mesh(jax.device_count()), jax.sharding.PartitionSpec())

    def place(a):
        if not isinstance(a, jax.Array):
            return a
        value = np.asarray(a)  # every process holds the same (NaNs included: no check)
        return jax.make_array_from_callback(value.shape, replicated, lambda index: value[index])

    return jax.tree.map(place, tree)


def particle_sharding(n: int, devices: int | None = None) -> jax.sharding.NamedSharding | None:
    """The sharding of a particle axis of length `n` over a 1-D mesh `("particles",)` of the
    first `devices` of `jax.devices()` (every process's devices under `jax.distributed`),
    the other axes replicated; `None` for no sharding.

    `devices=None` means every device of every process in a multi-process run when `n` is
    a multiple of their number (else each process computes all `n`, the same values), and
    no sharding in a single process. An explicit `devices` must divide `n`.
    """
    if devices is None:
        if jax.process_count() == 1 or n % jax.device_count():
            return None
        devices = jax.device_count()
    if isinstance(devices, bool) or not (isinstance(devices, int) and 1 <= devices <= jax.device_count()):
        raise ValueError(f"devices must be an integer from 1 to {jax.device_count()} (the devices "
                         f"of jax.devices()), got {devices!r}")
    if n % devices:
        raise ValueError(f"the number of particles ({n}) must be a multiple of devices={devices}")
    return jax.sharding.NamedSharding(_mesh(devices), jax.sharding.PartitionSpec("particles"))


def _mesh(devices: int) -> jax.sharding.Mesh:
    """The 1-D mesh `("particles",)` of the first `devices` of `jax.devices()`."""
    return jax.sharding.Mesh(np.asarray(jax.devices()[:devices]), ("particles",))
