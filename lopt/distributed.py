"""Meta-training over many devices and many processes, through JAX's own runtime.

JAX runs one program per process (multi-controller): every process executes the same outer
loop, :func:`jax.distributed.initialize` joins them, and one global :class:`~jax.sharding.Mesh`
spans the devices of all of them. The meta-trainer shards its particles over one mesh axis
(``make_meta_trainer(..., mesh=...)``), so each process advances the particles on its own
devices, and θ, the outer optimizer's state and the reductions over particles are replicated.

This module holds what the command-line tools need around that:

* :func:`settings_from` and :func:`initialize`: join the processes from explicit settings, from
  the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), or by
  JAX's own detection of SLURM and TPU pods;
* :func:`particle_mesh`: the one-axis global mesh of ``devices`` devices (a count or ``"all"``);
* :func:`check_population_divides`: the clear error, before any work, for a population that
  does not split evenly over the mesh;
* :func:`is_main_process` and :func:`to_host`: process 0 alone writes files and logs; any
  process can read a sharded or replicated array back as numpy;
* :func:`place`: the inverse, host values onto a (global) sharding, as the restore of a
  checkpoint needs;
* :func:`any_process`, :func:`check_agree` and :func:`barrier`: the few decisions the
  processes must take together (stop after this step, run in the same directory, a file is
  written before anyone reads it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

PyTree = Any

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
_CLUSTER_MARKERS = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


class DistributedSettings(NamedTuple):
    """How this process joins a multi-process run.

    Attributes:
        coordinator_address: ``host:port`` of process 0's coordination service; None lets
            JAX detect it (SLURM, TPU pods).
        num_processes: the number of processes; None: detected.
        process_id: this process's index in ``[0, num_processes)``; None: detected.
    """

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None


def settings_from(
    config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> DistributedSettings | None:
    """The multi-process settings of ``config``, completed from the environment.

    Args:
        config: ``{"enabled": "auto" | True | False, "coordinator_address", "num_processes",
            "process_id"}``; a None entry is read from ``JAX_COORDINATOR_ADDRESS``,
            ``JAX_NUM_PROCESSES`` or ``JAX_PROCESS_ID``.
        environ: the environment (default ``os.environ``).

    Returns:
        The settings, or None for a single-process run: ``enabled`` false, or ``"auto"``
        with neither an address nor a process count anywhere and no SLURM or TPU-pod
        environment of more than one task.

    Raises:
        ValueError: an unknown ``enabled`` value, a process count below 1, or a process id
            outside ``[0, num_processes)``.
    """
    environ = os.environ if environ is None else environ
    enabled = config.get("enabled", "auto")
    if enabled not in ("auto", True, False):
        raise ValueError(f"distributed.enabled must be auto, true or false, not {enabled!r}")
    if enabled is False:
        return None
    address = config.get("coordinator_address") or environ.get(ENV_COORDINATOR)
    num_processes = _int_or_none("num_processes", config, environ, ENV_NUM_PROCESSES)
    process_id = _int_or_none("process_id", config, environ, ENV_PROCESS_ID)
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"distributed.num_processes must be at least 1, not {num_processes}")
    if None not in (num_processes, process_id) and not 0 <= process_id < num_processes:
        raise ValueError(
            f"distributed.process_id {process_id} is outside [0, {num_processes}) (num_processes)"
        )
    unset = address is None and num_processes is None
    if enabled == "auto" and unset and not _in_multi_task_cluster(environ):
        return None
    if num_processes == 1:
        return None
    return DistributedSettings(address, num_processes, process_id)


def _int_or_none(
    key: str, config: Mapping[str, Any], environ: Mapping[str, str], env_name: str
) -> int | None:
    value = config.get(key)
    if value is None:
        value = environ.get(env_name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"distributed.{key} (or ${env_name}) must be an integer, not {value!r}"
        ) from None


def _in_multi_task_cluster(environ: Mapping[str, str]) -> bool:
    if "SLURM_JOB_ID" in environ:
        return int(environ.get("SLURM_NTASKS", environ.get("SLURM_NPROCS", "1"))) > 1
    return any(marker in environ for marker in _CLUSTER_MARKERS[1:])


def initialize(settings: DistributedSettings | None) -> None:
    """Joins this process to the others (:func:`jax.distributed.initialize`); on CPU, the
    cross-process collectives are gloo's. Nothing for None or if already joined."""
    if settings is None or jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=settings.coordinator_address,
        num_processes=settings.num_processes,
        process_id=settings.process_id,
    )


def particle_mesh(devices: int | str, axis: str) -> Mesh | None:
    """The global mesh the particles are split over, or None for one device.

    Args:
        devices: how many of the global devices (all processes') to use, or ``"all"``.
        axis: the mesh axis name.

    Returns:
        A one-axis mesh over the first ``devices`` global devices; None when that is one
        device of a single-process run (the plain, unsharded path).

    Raises:
        ValueError: ``devices`` is not a positive count or ``"all"``, exceeds the devices
            there are, or leaves some process without a device.
    """
    available = jax.devices()
    if devices == "all":
        count = len(available)
    elif isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        count = devices
    else:
        raise ValueError(f"devices must be a positive count or 'all', not {devices!r}")
    if count > len(available):
        raise ValueError(
            f"devices={count} but there are {len(available)} ({jax.process_count()} "
            f"process(es), {jax.local_device_count()} local device(s) each)"
        )
    chosen = available[:count]
    idle = set(range(jax.process_count())) - {d.process_index for d in chosen}
    if idle:
        raise ValueError(
            f"devices={count} leaves process(es) {sorted(idle)} without a device; "
            f"use a multiple of the {jax.local_device_count()} local device(s) or 'all'"
        )
    if count == 1 and jax.process_count() == 1:
        return None
    return Mesh(np.asarray(chosen), (axis,))


def check_population_divides(num_groups: int, mesh: Mesh | None, axis: str, what: str) -> None:
    """Raises a clear error unless ``num_groups`` particle groups split evenly over ``axis``.

    Args:
        num_groups: the estimator's leading particle axis (PES: antithetic pairs).
        mesh: the mesh, or None (always fine).
        axis: the mesh axis particles are split over.
        what: how the user set that count, for the message (e.g. ``"population=12 (6 pairs)"``).
    """
    if mesh is None:
        return
    size = mesh.shape[axis]
    if num_groups % size:
        raise ValueError(
            f"{what} does not split over {size} devices: each device runs the same number "
            f"of particle groups, so their number must be a multiple of {size}"
        )


def is_main_process() -> bool:
    """Whether this is process 0, which alone logs and writes the run's files."""
    return jax.process_index() == 0


def to_host(tree: PyTree) -> PyTree:
    """Numpy copies of ``tree``'s leaves, also of arrays that span other processes' devices.

    Replicated arrays are read from a local copy; sharded ones are gathered from all
    processes (a collective: every process must call this at the same point).
    """

    def fetch(leaf: Any) -> Any:
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            return jax.device_get(leaf)
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(fetch, tree)


def _is_typed_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def place(tree: PyTree, shardings: PyTree) -> PyTree:
    """``tree``'s values as arrays with ``shardings``, which may span other processes' devices.

    Every process passes the same (whole) values; each keeps the shards of its own devices.
    Typed PRNG keys are placed as their key data and re-wrapped.

    Args:
        tree: numpy or JAX arrays (e.g. a restored checkpoint).
        shardings: a matching pytree of :class:`~jax.sharding.Sharding`.
    """

    def put(leaf: Any, sharding: Any) -> Any:
        if _is_typed_key(leaf):
            impl = jax.random.key_impl(leaf)
            data = jax.device_put(np.asarray(jax.random.key_data(leaf)), sharding)
            return jax.random.wrap_key_data(data, impl=impl)
        return jax.device_put(np.asarray(leaf), sharding)

    return jax.tree.map(put, tree, shardings)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (a collective: every process must call it at
    the same point; one process: ``flag`` itself)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.bool_))))


def check_agree(value: str, what: str) -> None:
    """Raises ValueError on every process unless all processes pass the same ``value``
    (a collective; nothing to check for one process).

    Args:
        value: this process's value (compared by its SHA-256).
        what: what the value is, for the message (e.g. ``"the run directory"``).
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = np.frombuffer(hashlib.sha256(value.encode()).digest()[:8], np.uint32)
    every = np.asarray(multihost_utils.process_allgather(digest))
    differ = sorted({int(i) for i in np.nonzero((every != every[0]).any(axis=1))[0]})
    if differ:
        raise ValueError(
            f"the processes disagree on {what}: process(es) {differ} have another than "
            f"process 0; this process has {value!r}"
        )


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier ``name`` (nothing for one process)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
