"""``lopt-eval``: evaluate trained optimizers against tuned baselines (a Hydra app).

    lopt-eval 'optimizers=[runs/mlp/unf]' out_dir=eval/mlp
    lopt-eval task=cnn_digits 'optimizers=[runs/cnn/unf,runs/cnn/nfn]' num_steps=2000
    lopt-eval 'optimizers=[runs/mlp/unf]' task.width=128 num_steps=4000  # wider, longer
    lopt-eval '~baselines.sgdm' ...                                      # Adam only

The task is an option of the ``task`` config group shared with ``lopt-train`` (its keys are
the sizes passed to :func:`lopt.tasks.get_task`). Each entry of ``optimizers`` is a directory
written by :func:`lopt.learned.save_optimizer` or a ``lopt-train`` run directory holding
one. ``out_dir`` receives ``results.json``, ``results.md``, ``curves.png`` and Hydra's
``.hydra/`` (the resolved config), once the optimizers have loaded: a refused evaluation
leaves no ``out_dir``. See :mod:`lopt.evaluation` for the procedure.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig

from lopt.cli import help as cli_help
from lopt.cli import rundir, schema
from lopt.cli.common import RunError, build_task, enable_compilation_cache, to_container
from lopt.evaluation import (
    DEFAULT_GRIDS,
    EvalSettings,
    OptimizerLoadError,
    evaluate,
    load_for_task,
    write_outputs,
)
from lopt.learned.baselines import COSINE_DEFAULTS, SGDM_DEFAULTS

log = logging.getLogger("lopt.eval")

DEFAULTS = EvalSettings()
"""The library's evaluation settings, whose defaults the config's entries take."""


@dataclass
class BaselineSweepConfig:
    """A baseline's learning-rate grid and its fixed hyperparameters."""

    learning_rates: list[float] = MISSING
    hyperparameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class TuningConfig:
    """The baselines' sweeps: ``num_seeds`` runs per rate from ``seed_offset`` on, each of
    ``num_steps`` steps (None: the evaluation's ``num_steps``)."""

    num_seeds: int = DEFAULTS.num_tuning_seeds
    seed_offset: int = DEFAULTS.tuning_seed_offset
    num_steps: int | None = DEFAULTS.tuning_steps


def _default_baselines() -> dict[str, BaselineSweepConfig]:
    return {
        "sgdm": BaselineSweepConfig(
            list(DEFAULT_GRIDS["sgdm"]), {"momentum": SGDM_DEFAULTS["momentum"]}
        ),
        "adam": BaselineSweepConfig(list(DEFAULT_GRIDS["adam"]), {}),
        "adam_cosine": BaselineSweepConfig(
            list(DEFAULT_GRIDS["adam_cosine"]),
            {"warmup_fraction": COSINE_DEFAULTS["warmup_fraction"]},
        ),
    }


@dataclass
class EvalConfig:
    """The ``lopt-eval`` config (``configs/eval.yaml``).

    Attributes:
        task: the ``task`` config group (``_target_`` and the task's sizes).
        tasks: further tasks evaluated in the same call, each a mapping of task options over
            ``task``'s (e.g. ``[{width: 64}, {batch_size: 32}]``); each one's outputs go to
            ``out_dir/<its options>/``, ``task``'s to ``out_dir``.
        optimizers: saved-optimizer or run directories.
        labels: display names, one per optimizer (None: directory names).
        num_seeds: evaluation runs per optimizer.
        num_steps: inner steps per run.
        seed_offset: first evaluation seed.
        tuning: the baselines' sweeps.
        baselines: ``{sgdm|adam|adam_cosine: {learning_rates, hyperparameters}}``; remove
            one with ``~baselines.sgdm``.
        max_grid_extensions: times a grid is extended past the edge its best rate is on.
        tail_fraction: final loss of a run = its mean training loss over this last fraction.
        num_test_batches: held-out batches averaged into the final held-out metrics.
        log_y: log-scale loss axis (None: automatic).
        smoothing: trailing-mean window of plotted curves (0: ``num_steps // 100``).
        out_dir: output directory (also Hydra's run directory).
    """

    task: Any = MISSING
    tasks: list[Any] = field(default_factory=list)
    optimizers: list[str] = field(default_factory=list)
    labels: list[str] | None = None
    num_seeds: int = DEFAULTS.num_seeds
    num_steps: int = DEFAULTS.num_steps
    seed_offset: int = DEFAULTS.seed_offset
    tuning: TuningConfig = field(default_factory=TuningConfig)
    baselines: dict[str, BaselineSweepConfig] = field(default_factory=_default_baselines)
    max_grid_extensions: int = DEFAULTS.max_grid_extensions
    tail_fraction: float = DEFAULTS.tail_fraction
    num_test_batches: int = DEFAULTS.num_test_batches
    log_y: bool | None = None
    smoothing: int = 0
    out_dir: str = "eval"
    compilation_cache: schema.CompilationCacheConfig = field(
        default_factory=schema.CompilationCacheConfig
    )


def register_configs() -> None:
    """Registers :class:`EvalConfig` as ``eval_schema``, the training schemas (the task
    schemas among them) and the ``--help`` resolver; idempotent. Every tool's configs compose
    once it has run."""
    schema.register_configs()
    cli_help.register_help_resolver()
    ConfigStore.instance().store(name="eval_schema", node=EvalConfig)


class EvalConfigError(ValueError):
    """The evaluation's settings are inconsistent; the message says which."""


def settings_from(config: dict) -> EvalSettings:
    """The :class:`~lopt.evaluation.EvalSettings` of a resolved config.

    Raises:
        EvalConfigError: an invalid setting (named in the message).
    """
    baselines = config["baselines"]
    settings = EvalSettings(
        num_seeds=config["num_seeds"],
        num_steps=config["num_steps"],
        seed_offset=config["seed_offset"],
        num_tuning_seeds=config["tuning"]["num_seeds"],
        tuning_seed_offset=config["tuning"]["seed_offset"],
        tuning_steps=config["tuning"]["num_steps"],
        baselines={name: tuple(b["learning_rates"]) for name, b in baselines.items()},
        baseline_hyperparameters={
            name: dict(b["hyperparameters"]) for name, b in baselines.items()
        },
        tail_fraction=config["tail_fraction"],
        num_test_batches=config["num_test_batches"],
        max_grid_extensions=config["max_grid_extensions"],
    )
    try:
        settings.check()
    except ValueError as err:
        raise EvalConfigError(str(err)) from err
    return settings


def run(cfg: DictConfig, out_dir: str | Path) -> dict[str, Path]:
    """Runs the evaluation ``cfg`` describes and writes its outputs into ``out_dir``.

    Returns:
        The files written for ``task`` (see :func:`lopt.evaluation.write_outputs`); those of
        the further ``tasks`` go to their own directories under ``out_dir``.

    Raises:
        RunError: a task cannot be built.
        OptimizerLoadError: an optimizer is missing, unreadable or does not fit the task.
        EvalConfigError: inconsistent settings.
    """
    unknown = schema.unknown_keys(cfg)
    if unknown:
        raise EvalConfigError(
            f"unknown config keys {unknown}: lopt.cli.eval.EvalConfig and the task schemas "
            "have no such options; `lopt-eval --cfg job` lists the known ones"
        )
    config = to_container(cfg)
    settings = settings_from(config)
    paths, labels = config["optimizers"], config["labels"]
    if labels is not None and len(labels) != len(paths):
        raise EvalConfigError(
            f"labels has {len(labels)} entries but optimizers has {len(paths)}; give one "
            "label per optimizer or none"
        )
    if not paths and not settings.baselines:
        raise EvalConfigError("nothing to evaluate: optimizers and baselines are both empty")
    if settings.num_seeds < 2:
        log.warning(
            "num_seeds=%d: a standard error needs two seeds or more; they are shown as '—' and "
            "stored as null, and the paired tests have no p-value",
            settings.num_seeds,
        )
    # Every task is built and every optimizer loaded before anything is written.
    evaluations = []
    for directory, options in evaluated_tasks(config, Path(out_dir)):
        task = build_task(options)
        log.info("task %s %s", task.name, dict(task.config))
        trained = [
            load_for_task(path, task, None if labels is None else labels[index])
            for index, path in enumerate(paths)
        ]
        evaluations.append((directory, task, trained))
    rundir.accept(out_dir, cfg)
    written: dict[str, Path] = {}
    for directory, task, trained in evaluations:
        result = evaluate(task, trained, settings, log=log.info)
        outputs = write_outputs(
            result, directory, log_y=config["log_y"], smoothing=config["smoothing"]
        )
        log.info("results on %s:\n%s", directory, outputs["markdown"].read_text())
        for kind, path in outputs.items():
            log.info("%s: %s", kind, path)
        written = written or outputs
    return written


def evaluated_tasks(config: dict, out_dir: Path) -> list[tuple[Path, dict]]:
    """``(output directory, task config)`` of ``task`` and of each entry of ``tasks``.

    Raises:
        EvalConfigError: an entry of ``tasks`` that is not a non-empty mapping, or two
            entries with the same options.
    """
    found = [(out_dir, config["task"])]
    for index, entry in enumerate(config.get("tasks") or ()):
        if not isinstance(entry, dict) or not entry:
            raise EvalConfigError(
                f"tasks[{index}] must be a mapping of task options (e.g. {{width: 64}}), got "
                f"{entry!r}"
            )
        name = ",".join(f"{key}={value}" for key, value in entry.items())
        name = "".join(c if c.isalnum() or c in "=,._-" else "_" for c in name)
        if any(directory.name == name for directory, _ in found[1:]):
            raise EvalConfigError(f"tasks lists {entry} twice")
        found.append((out_dir / name, {**config["task"], **entry}))
    return found


def main() -> None:
    """Entry point of ``lopt-eval``: registers the configs, then Hydra composes and runs."""
    register_configs()
    evaluate_from_config()


@hydra.main(version_base="1.3", config_path="pkg://lopt.configs", config_name="eval")
def evaluate_from_config(cfg: DictConfig) -> None:
    """The evaluation of the composed config (Hydra's task function)."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    logging.getLogger("jax").setLevel(logging.WARNING)  # backend-probing noise
    enable_compilation_cache(cfg.compilation_cache)
    try:
        with rundir.run_directory(out_dir, cfg):
            run(cfg, out_dir)
    except (RunError, OptimizerLoadError, EvalConfigError) as err:
        print(f"lopt-eval: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
