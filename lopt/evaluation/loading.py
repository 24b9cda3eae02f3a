"""Finds and loads trained optimizers for a task: a saved-optimizer directory or a run.

A *saved optimizer* is a directory with ``config.json`` and ``theta.msgpack`` written by
:func:`lopt.learned.save_optimizer`. A *run directory* (of meta-training) holds one such
directory somewhere below it; :func:`find_saved_optimizer` accepts either. When the saved
optimizer's parent holds the run's resolved ``config.yaml`` (as ``lopt-train`` writes it),
its task, horizon and seed are read too (:func:`read_meta_training`), so that a report can
say whether the evaluation task is wider or longer than the meta-training one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
from omegaconf import OmegaConf

from lopt.learned import (
    LEARNED,
    LearnedOptimizer,
    SavedOptimizerError,
    check_theta,
    load_learned_optimizer,
    read_config,
)
from lopt.learned.serialization import CONFIG_FILE, THETA_FILE

PyTree = Any


class OptimizerLoadError(ValueError):
    """A trained optimizer cannot be found, read, or used on the evaluation task."""


class LoadedOptimizer(NamedTuple):
    """A trained optimizer ready to run on a task.

    Attributes:
        label: name used in plots and tables.
        source: the path the user gave.
        directory: the saved-optimizer directory found there.
        opt: the optimizer, built for the task's spec.
        theta: its meta-parameters.
        config: its saved config (``{"name": ..., **hyperparameters}``).
        meta_training: what it was meta-trained on, if known (:func:`read_meta_training`).
    """

    label: str
    source: str
    directory: str
    opt: LearnedOptimizer
    theta: PyTree
    config: dict
    meta_training: dict | None = None


RUN_CONFIG_FILE = "config.yaml"


def read_meta_training(directory: str | os.PathLike) -> dict | None:
    """The meta-training setup of the run a saved optimizer belongs to, if recorded.

    Reads ``config.yaml`` of the saved directory's parent (the run directory).

    Returns:
        ``{"run_dir", "name" (the run's name), "task" (name and sizes), "family" (the task
        options of its task family's further members, if any), "horizon" (longest inner
        episode), "seed"}``, or None when there is no readable run config.
    """
    path = Path(directory).resolve().parent / RUN_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception:  # unreadable or not YAML: the report then omits the setup
        return None
    if not isinstance(config, dict) or not isinstance(config.get("task"), dict):
        return None
    task = dict(config["task"])
    target = str(task.pop("_target_", ""))
    schedule = config.get("schedule") if isinstance(config.get("schedule"), dict) else {}
    return {
        "run_dir": str(path.parent),
        "name": config.get("name"),
        "task": {"name": target.rsplit(".", 1)[-1] or None, "config": task},
        "family": [dict(m) for m in config.get("task_family") or () if isinstance(m, dict)],
        "horizon": schedule.get("max_length"),
        "seed": config.get("seed"),
    }


RUN_OPTIMIZER_DIR = "optimizer"
"""Where a ``lopt-train`` run directory keeps the optimizer it chose."""


def is_saved_optimizer(path: Path) -> bool:
    """Whether ``path`` holds both files of a saved optimizer."""
    return (path / CONFIG_FILE).is_file() and (path / THETA_FILE).is_file()


def find_saved_optimizer(path: str | os.PathLike) -> Path:
    """The saved-optimizer directory at ``path``: itself, a ``lopt-train`` run directory's
    ``optimizer/`` (the run's chosen theta, next to ``optimizer_last/``), or the one directory
    below it.

    Hidden directories (``.hydra``, ``.git``) are not searched.

    Raises:
        OptimizerLoadError: ``path`` does not exist, holds no saved optimizer, or holds
            several (the message lists them; pass one of them).
    """
    root = Path(path)
    if not root.exists():
        raise OptimizerLoadError(f"optimizer path {str(root)!r} does not exist")
    if not root.is_dir():
        raise OptimizerLoadError(
            f"optimizer path {str(root)!r} is a file; pass a saved-optimizer directory "
            f"(with {CONFIG_FILE} and {THETA_FILE}) or a run directory containing one"
        )
    if is_saved_optimizer(root):
        return root
    if is_saved_optimizer(root / RUN_OPTIMIZER_DIR):
        return root / RUN_OPTIMIZER_DIR
    found = []
    for directory, subdirs, _ in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        if is_saved_optimizer(Path(directory)):
            found.append(Path(directory))
    if not found:
        raise OptimizerLoadError(
            f"no saved optimizer in {str(root)!r}: expected a directory with {CONFIG_FILE} and "
            f"{THETA_FILE} (written by lopt.learned.save_optimizer) at or below it"
        )
    if len(found) > 1:
        listing = ", ".join(repr(str(p)) for p in found)
        raise OptimizerLoadError(
            f"{str(root)!r} holds {len(found)} saved optimizers ({listing}); pass one of them"
        )
    return found[0]


def default_label(
    source: str | os.PathLike, directory: Path, backbone: str, meta_training: dict | None
) -> str:
    """A label for plots and tables: ``<run name> <backbone>`` for an optimizer saved by
    ``lopt-train`` (whose run directories are named by date and time), else the directory
    name given (or the saved directory's) with the backbone."""
    if meta_training and meta_training.get("name"):
        return f"{meta_training['name']} {backbone}"
    source_path = Path(source)
    name = source_path.resolve().name if source_path.resolve() != directory.resolve() else ""
    name = name or directory.resolve().name
    return name if backbone in name else f"{name} {backbone}"


def load_for_task(path: str | os.PathLike, task: Any, label: str | None = None) -> LoadedOptimizer:
    """Loads the trained optimizer at ``path`` (saved or run directory) for ``task``.

    Args:
        path: saved-optimizer directory or a run directory holding one.
        task: the evaluation task (its ``spec`` and parameter shapes are checked).
        label: display name (default: see :func:`default_label`).

    Raises:
        OptimizerLoadError: the optimizer is missing or unreadable, or its meta-parameters
            do not fit the task's weight space (e.g. trained on another architecture).
    """
    directory = find_saved_optimizer(path)
    try:
        config = read_config(directory)
    except (FileNotFoundError, SavedOptimizerError) as err:
        raise OptimizerLoadError(f"cannot read optimizer {str(path)!r}: {err}") from err
    example = jax.eval_shape(task.init, jax.random.key(0))
    extra = {"example_params": example} if config["name"] in LEARNED else {}
    mismatch = (
        f"the {config['name']!r} optimizer at {str(directory)!r} does not fit task "
        f"{task.name!r} ({dict(task.config)})"
    )
    try:
        opt, theta = load_learned_optimizer(directory, task.spec, **extra)
    except FileNotFoundError as err:
        raise OptimizerLoadError(f"cannot read optimizer {str(path)!r}: {err}") from err
    except ValueError as err:  # SavedOptimizerError included
        raise OptimizerLoadError(
            f"{mismatch}: {err} (was it meta-trained on another architecture?)"
        ) from err
    try:
        check_theta(opt, theta, example)
    except ValueError as err:
        raise OptimizerLoadError(f"{mismatch}: {err}") from err
    meta_training = read_meta_training(directory)
    return LoadedOptimizer(
        label=label or default_label(path, directory, config["name"], meta_training),
        source=str(path),
        directory=str(directory),
        opt=opt,
        theta=theta,
        config=config,
        meta_training=meta_training,
    )
