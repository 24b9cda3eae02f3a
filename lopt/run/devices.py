"""The devices and processes of a run: the mesh its particle groups are split over, and the
check that every process writes into the same run directory."""

from __future__ import annotations

from pathlib import Path

from jax.sharding import Mesh

from lopt.distributed import check_agree, check_population_divides, particle_mesh
from lopt.run.errors import RunError
from lopt.run.settings import RunParts, RunSettings


def particle_mesh_for(settings: RunSettings, parts: RunParts) -> Mesh | None:
    """The mesh the estimator's particle groups are split over.

    Args:
        settings: the run's settings (``devices``, ``mesh_axis``).
        parts: what it trains (the estimator's groups).

    Returns:
        The mesh of ``settings.devices`` devices, or None for one device.

    Raises:
        RunError: more devices than there are, an estimator without per-particle state on
            several devices, or a population that does not split evenly over them.
    """
    try:
        mesh = particle_mesh(settings.devices, settings.mesh_axis)
    except ValueError as err:
        raise RunError(str(err)) from None
    if mesh is None:
        return None
    config = parts.estimator.config
    pairs = "num_pairs" in config
    groups = config.get("num_pairs") or config.get("num_particles")
    if not parts.estimator.particle_fields or not groups:
        raise RunError(
            f"estimator {config.get('name')} keeps no per-particle state to "
            f"split over {mesh.devices.size} devices; use devices=1 with it"
        )
    population = 2 * groups if pairs else groups
    what = f"population={population}" + (f" ({groups} pairs)" if pairs else "")
    try:
        check_population_divides(groups, mesh, settings.mesh_axis, what)
    except ValueError as err:
        raise RunError(str(err)) from None
    return mesh


def check_same_run_dir(run_dir: Path) -> None:
    """Refuses a multi-process run whose processes would write into different directories.

    Args:
        run_dir: this process's run directory.

    Raises:
        RunError: another process has another one.
    """
    try:
        check_agree(str(run_dir), "the run directory")
    except ValueError as err:
        raise RunError(
            f"{err}; give every process the same hydra.run.dir=..., on a filesystem they share"
        ) from None
