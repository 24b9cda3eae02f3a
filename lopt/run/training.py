"""Meta-training a learned optimizer in a run directory: :func:`train`.

A run directory receives ``config.yaml`` (the run's record), ``metrics.jsonl`` and
``metrics.csv`` (one record per log interval and per validation), ``checkpoints/`` (the whole
:class:`~lopt.run.state.RunState`), ``validation/reference.json`` (the initial theta's and a
tuned Adam's validation), and at the end ``optimizer/`` (the best theta by validation,
:func:`lopt.learned.save_optimizer` format), ``optimizer_last/`` (the last theta),
``loss.png`` and ``summary.json`` (:mod:`lopt.run.layout`).

Every process of a multi-process run (:mod:`lopt.distributed`) calls :func:`train` with the
same settings and directory: each advances the particles on its own devices, all write and
restore the checkpoints together, and process 0 alone logs and writes the files.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lopt.checkpoint import Checkpointer
from lopt.loggers import Logger, null_logger
from lopt.provenance import environment
from lopt.run.devices import check_same_run_dir, particle_mesh_for
from lopt.run.layout import CHECKPOINT_DIR
from lopt.run.loop import build_trainer, run_hooks, run_loop, run_progress_bar
from lopt.run.outputs import open_outputs, save_results
from lopt.run.resume import checkpoint_record, initial_state
from lopt.run.settings import RunParts, RunSettings, run_record
from lopt.run.stop import StopRequest
from lopt.run.summary import publish, run_summary, validation_summary
from lopt.run.validation import start_validation

log = logging.getLogger("lopt.train")


def train(
    settings: RunSettings,
    parts: RunParts,
    run_dir: str | os.PathLike,
    *,
    logger: Callable[..., Logger] = null_logger,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) a meta-training run, writing into ``run_dir``.

    In a multi-process run every process calls this with the same settings and directory;
    each runs its own particles, and process 0 alone logs and writes the run's files.

    Args:
        settings: how the run goes.
        parts: what it trains.
        run_dir: the run directory.
        logger: the logger's factory (:mod:`lopt.loggers`), called on process 0 with the
            run's context (``run_dir``, ``run_config``, ``name``, ``resume``).
        on_start: called once the run has passed its checks, before it writes anything.

    Returns:
        The summary (also written to ``run_dir/summary.json``); ``interrupted_by`` names the
        signal that stopped the run early, if one did.

    Raises:
        RunError, CheckpointError: the run cannot start; nothing in ``run_dir`` was changed.
    """
    begin = time.perf_counter()
    measured_on = environment()  # the source's commit as the run starts, before any edit
    run_dir = Path(run_dir).absolute()
    mesh = particle_mesh_for(settings, parts)
    check_same_run_dir(run_dir)
    trainer = build_trainer(settings, parts, mesh)
    checkpoints = Checkpointer(run_dir / CHECKPOINT_DIR, max_to_keep=settings.keep_checkpoints)
    checkpoint_config = checkpoint_record(settings, parts, mesh)
    try:
        state, resumed = initial_state(trainer, checkpoints, settings, mesh)
        start = int(state.meta.step)
        # Nothing is written before this point: a run that cannot start changes nothing.
        if on_start is not None:
            on_start()
        files, run_logger = open_outputs(
            run_dir, settings, run_record(settings), logger, resumed, start
        )
        log.info(
            "%s %s on %s: %s, %d inner steps per outer step; run dir %s",
            f"resuming from step {start}:" if resumed else "meta-training",
            parts.opt.config.get("name"),
            parts.task.name,
            parts.estimator.config.get("name"),
            trainer.inner_steps_per_step,
            run_dir,
        )
        began_validation = time.perf_counter()
        state, validation = start_validation(settings, parts, run_dir, trainer, state, resumed)
        setup_seconds = time.perf_counter() - began_validation
        with StopRequest() as stop, run_progress_bar(settings, state) as bar:
            hooks = run_hooks(
                settings, checkpoints, files, run_logger, checkpoint_config, validation, stop, bar
            )
            state = run_loop(trainer, state, settings, hooks)
        if checkpoints.latest_step() != int(state.meta.step):
            checkpoints.save(int(state.meta.step), state, checkpoint_config)
    finally:
        checkpoints.close()
    files.close()
    optimizer_dir = save_results(state, files.records, settings, parts, run_dir, validation)
    wall_seconds = time.perf_counter() - begin
    summary = run_summary(
        files.records, settings, parts, start if resumed else 0, wall_seconds, measured_on
    )
    summary["interrupted_by"] = stop.signal_name
    if validation is not None:
        validated = [r for r in files.records if math.isfinite(r.get("val_final_loss", math.nan))]
        summary["validation"] = validation_summary(
            state, validation.reference, validated, validation.metric
        )
        # This process's share: the reference levels (tuned, cached or read back) and the
        # validations of the steps it ran.
        ran = [r.get("val_seconds", math.nan) for r in files.records if r["step"] > start]
        seconds = setup_seconds + sum(v for v in ran if math.isfinite(v))
        summary["validation"].update(seconds=seconds, share_of_wall_time=seconds / wall_seconds)
    publish(summary, run_dir, run_logger, optimizer_dir, parts)
    return summary
