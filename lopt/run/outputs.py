"""The files a run writes into its directory besides checkpoints and the summary: its record,
metrics and logger as it starts, and its optimizers and loss plot as it ends. Process 0 of a
multi-process run alone writes them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lopt.distributed import is_main_process, to_host
from lopt.learned import save_optimizer
from lopt.loggers import Logger, MetricsFiles, null_logger
from lopt.persistence import write_text
from lopt.run.layout import CONFIG_FILE, LAST_OPTIMIZER_DIR, OPTIMIZER_DIR, PLOT_FILE
from lopt.run.plot import plot_losses
from lopt.run.settings import RunParts, RunSettings
from lopt.run.state import RunState
from lopt.run.validation import Validation


def record_yaml(record: Mapping[str, Any]) -> str:
    """A run's record as the YAML of :data:`~lopt.run.layout.CONFIG_FILE`."""
    return OmegaConf.to_yaml(OmegaConf.create(dict(record)))


def open_outputs(
    run_dir: Path,
    settings: RunSettings,
    record: Mapping[str, Any],
    make_logger: Callable[..., Logger],
    resumed: bool,
    start: int,
) -> tuple[MetricsFiles, Logger]:
    """The run's record file, metrics files and logger.

    Args:
        run_dir: the run directory.
        settings: the run's settings.
        record: the run's record.
        make_logger: the logger's factory, called with the run's context (``run_dir``,
            ``run_config``, ``name``, ``resume``).
        resumed: whether the run resumed.
        start: the step it starts at.

    Returns:
        The metrics files and the logger; on processes other than the first, an in-memory
        record of the metrics and no logger, and nothing is written.
    """
    if not is_main_process():
        return MetricsFiles(run_dir, write=False), null_logger()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / CONFIG_FILE, record_yaml(record))
    logger = make_logger(
        run_dir=run_dir, run_config=dict(record), name=settings.name, resume=resumed
    )
    return MetricsFiles(run_dir, resume_step=start if resumed else None), logger


def save_results(
    state: RunState,
    records: Sequence[dict[str, Any]],
    settings: RunSettings,
    parts: RunParts,
    run_dir: Path,
    validation: Validation | None,
) -> Path:
    """Writes the optimizers and the loss plot (process 0 alone).

    The best theta by validation goes to ``optimizer/`` and the last to ``optimizer_last/``;
    without validation the last goes to ``optimizer/``.

    Args:
        state: the run's last state.
        records: its metrics records.
        settings: its settings.
        parts: what it trained.
        run_dir: the run directory.
        validation: its validation (None: off).

    Returns:
        The ``optimizer/`` directory.
    """
    last_theta = to_host(state.meta.theta)
    best_theta = last_theta if validation is None else to_host(state.best_theta)
    optimizer_dir = run_dir / OPTIMIZER_DIR
    if not is_main_process():
        return optimizer_dir
    save_optimizer(optimizer_dir, parts.opt, best_theta)
    if validation is not None:
        save_optimizer(run_dir / LAST_OPTIMIZER_DIR, parts.opt, last_theta)
    if records:
        plot_losses(
            records,
            run_dir / PLOT_FILE,
            f"{settings.name}: {parts.opt.config.get('name')} on {parts.task.name}",
            None if validation is None else validation.reference,
        )
    return optimizer_dir
