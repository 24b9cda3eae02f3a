"""Starting a run, or resuming it from its latest checkpoint, with the checks that a resumed
run continues the same trajectory: the same record (but for :data:`RUN_CONTROL_KEYS`) and
the same device topology."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import Mesh

from lopt.checkpoint import Checkpointer
from lopt.meta import MetaTrainer
from lopt.persistence import config_differences
from lopt.run.errors import RunError
from lopt.run.settings import RunParts, RunSettings, run_record
from lopt.run.state import RunState, fresh_run_state

RUN_CONTROL_KEYS = (
    "name",
    "devices",  # checked on resume by the mesh it gives (check_same_topology)
    "mesh_axis",
    "distributed",  # its process count is checked on resume with the devices
    "steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "resume",
    "progress",
    "logger",
    "compilation_cache",
    "reference_cache",
)
"""Top-level keys of a record a resumed run may change: they do not affect the trajectory."""

EMPTY = (None, [], {})
"""Values of a setting that leave a run as it was without the setting."""

SINGLE_DEVICE = {"devices": 1, "processes": 1}
"""The topology of checkpoints that record none (written before runs could use a mesh)."""


def topology(mesh: Mesh | None) -> dict[str, int]:
    """The devices and processes a population split over ``mesh`` uses.

    Args:
        mesh: the particle mesh (None: one device).

    Returns:
        ``{"devices": ..., "processes": ...}``.
    """
    if mesh is None:
        return dict(SINGLE_DEVICE)
    processes = {device.process_index for device in mesh.devices.flat}
    return {"devices": int(mesh.devices.size), "processes": len(processes)}


def without_new_empty(saved: Any, current: Any) -> Any:
    """``current`` without the keys (at any depth) that ``saved`` lacks and that hold an
    :data:`EMPTY` value."""
    if not isinstance(saved, Mapping) or not isinstance(current, Mapping):
        return current
    return {
        key: without_new_empty(saved[key], value) if key in saved else value
        for key, value in current.items()
        if key in saved or value not in EMPTY
    }


def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuses to resume with a record that describes another trajectory.

    Args:
        saved: the checkpoint's record.
        current: this run's record.

    A key the checkpoint's record lacks is no difference while this run leaves it empty
    (``None``, ``[]`` or ``{}``): a setting added to the configs after the checkpoint was
    written, left at its default, which changes nothing (``task_family: []``).

    Raises:
        RunError: the records differ in a key other than :data:`RUN_CONTROL_KEYS`.
    """
    strip = lambda c: {k: v for k, v in c.items() if k not in RUN_CONTROL_KEYS}
    differences = config_differences(strip(saved), strip(without_new_empty(saved, current)))
    if differences:
        listed = "\n  ".join(differences)
        raise RunError(
            "cannot resume: the checkpoint was written with a different configuration "
            f"(checkpoint -> now):\n  {listed}\nResume with the same settings (only "
            f"{', '.join(RUN_CONTROL_KEYS)} may change) or start a new run directory."
        )


def check_same_topology(saved: Mapping[str, int], current: Mapping[str, int]) -> None:
    """Refuses to resume on another number of devices or processes.

    The particles' reductions run in another order over another mesh, so such a resume
    could not continue the run bit for bit.

    Args:
        saved: the checkpoint's :func:`topology`.
        current: this run's.

    Raises:
        RunError: they differ.
    """
    if saved != current:
        raise RunError(
            f"cannot resume: the checkpoint was written with its population split over "
            f"{saved['devices']} device(s) in {saved['processes']} process(es), this run has "
            f"{current['devices']} in {current['processes']}; a run continues bit for bit "
            "only on the same topology: set devices= (and the processes) as when it started"
        )


def checkpoint_record(settings: RunSettings, parts: RunParts, mesh: Mesh | None) -> dict:
    """What every checkpoint of the run records besides its state.

    Args:
        settings: the run's settings.
        parts: what it trains.
        mesh: the particle mesh (None: one device).

    Returns:
        ``{"run": record, "optimizer": config, "task": name, "topology": ...}``.
    """
    return {
        "run": run_record(settings),
        "optimizer": dict(parts.opt.config),
        "task": parts.task.name,
        "topology": topology(mesh),
    }


def initial_state(
    trainer: MetaTrainer,
    checkpoints: Checkpointer,
    settings: RunSettings,
    mesh: Mesh | None = None,
) -> tuple[RunState, bool]:
    """A fresh state, or the latest checkpoint's when ``settings.resume``.

    Args:
        trainer: the run's meta-trainer.
        checkpoints: the run's checkpoints.
        settings: the run's settings.
        mesh: the particle mesh (None: one device).

    Returns:
        The state and whether it was restored.

    Raises:
        RunError: resume without a checkpoint, a fresh start over existing checkpoints, or
            a checkpoint written with another record or on another ``mesh``.
        CheckpointError: a corrupt checkpoint or one that does not fit the run.
    """
    key = jax.random.PRNGKey(settings.seed)
    latest = checkpoints.latest_step()
    if not settings.resume:
        if latest is not None:
            raise RunError(
                f"{checkpoints.directory} already holds checkpoints (latest step {latest}); "
                "pass resume=true to continue that run, or choose a new run directory "
                "(hydra.run.dir=...)"
            )
        return fresh_run_state(trainer.init(key)), False
    if latest is None:
        raise RunError(
            f"resume=true but there is no checkpoint in {checkpoints.directory}; point "
            "hydra.run.dir at the directory of the run to continue, or drop resume=true"
        )
    saved = checkpoints.metadata(latest).get("config") or {}
    check_compatible(saved.get("run", {}), run_record(settings))
    check_same_topology(saved.get("topology", SINGLE_DEVICE), topology(mesh))
    like = jax.eval_shape(lambda k: fresh_run_state(trainer.init(k)), key)
    state = checkpoints.restore(latest, like=like)
    return state._replace(meta=trainer.place(state.meta)), True
