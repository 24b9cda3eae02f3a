"""The run's outer loop: its meta-trainer, the hooks that validate, log, checkpoint, show
progress and stop, and the loop itself (:func:`lopt.meta.outer_loop`)."""

from __future__ import annotations

import math
import time
from typing import Any

from jax.sharding import Mesh
from tqdm.auto import tqdm

from lopt.checkpoint import Checkpointer
from lopt.distributed import any_process, is_main_process, to_host
from lopt.loggers import Logger, MetricsFiles, progress_bar
from lopt.meta import LoopHooks, MetaTrainer, interval_means, make_meta_trainer, outer_loop
from lopt.run.settings import RunParts, RunSettings
from lopt.run.state import RunState, keep_best
from lopt.run.stop import StopRequest
from lopt.run.validation import VALIDATION_KEYS, Validation, validation_record


def build_trainer(settings: RunSettings, parts: RunParts, mesh: Mesh | None) -> MetaTrainer:
    """The run's meta-trainer, its particle groups split over ``mesh`` (None: one device)."""
    return make_meta_trainer(
        (parts.task, *parts.family) if parts.family else parts.task,
        parts.opt,
        parts.estimator,
        parts.outer_opt,
        schedule=parts.schedule,
        objective=parts.objective,
        mesh=mesh,
        particle_axis=None if mesh is None else settings.mesh_axis,
    )


def run_progress_bar(settings: RunSettings, state: RunState) -> tqdm:
    """The run's progress bar over outer steps, starting at ``state``'s (on stderr, when it
    is a terminal; process 0 alone)."""
    return progress_bar(
        enabled=settings.progress and is_main_process(),
        total=settings.steps,
        initial=int(state.meta.step),
        unit="step",
        desc=settings.name,
        dynamic_ncols=True,
    )


def run_hooks(
    settings: RunSettings,
    checkpoints: Checkpointer,
    files: MetricsFiles,
    logger: Logger,
    checkpoint_record: dict[str, Any],
    validation: Validation | None,
    stop: StopRequest,
    bar: tqdm,
) -> LoopHooks:
    """The outer loop's hooks of a run.

    Args:
        settings: the run's settings.
        checkpoints: where a checkpoint goes every ``settings.checkpoint_every`` steps.
        files: the metrics files every record goes to.
        logger: the logger every record goes to.
        checkpoint_record: what every checkpoint records besides its state.
        validation: the run's validation, which keeps the best theta (None: off).
        stop: ends the loop after the current step.
        bar: shows progress.

    Returns:
        The hooks.
    """
    every = settings.checkpoint_every
    postfix: dict[str, str] = {}

    def validate(done: int, run: RunState) -> tuple[RunState, dict[str, float]]:
        began = time.perf_counter()
        scores = validation.validate(to_host(run.meta.theta))
        fields = validation_record(scores, validation.reference, validation.metric)
        fields["val_seconds"] = time.perf_counter() - began
        postfix.update(
            val_vs_adam=f"{fields['val_vs_adam']:.3g}",
            val_vs_theta0=f"{fields['val_vs_theta0']:.3g}",
        )
        return keep_best(run, scores, done, validation.metric), fields

    def on_log(done: int, record: dict[str, float]) -> None:
        files.write(record)
        logger.log_metrics(done, record)
        rate = record["inner_steps_per_sec"]
        postfix.update(
            meta_loss=f"{record['meta_loss']:.4f}",
            inner_steps_s=f"{rate:.0f}" if math.isfinite(rate) else "-",
        )
        bar.set_postfix(postfix)

    def after_step(done: int, run: RunState) -> None:
        if every and done % every == 0:
            checkpoints.save(done, run, checkpoint_record)

    return LoopHooks(
        # Every process stops after the same step, whichever of them got the signal.
        stop_requested=lambda: any_process(stop.requested),
        on_step=lambda done: bar.update(1),
        validate=None if validation is None else validate,
        validate_every=0 if validation is None else validation.every,
        validation_keys=VALIDATION_KEYS,
        on_log=on_log,
        after_step=after_step,
    )


def run_loop(
    trainer: MetaTrainer, state: RunState, settings: RunSettings, hooks: LoopHooks
) -> RunState:
    """Meta-trains from ``state`` to ``settings.steps`` in :func:`lopt.meta.outer_loop`.

    Args:
        trainer: the run's meta-trainer.
        state: the state to start from.
        settings: the run's settings (``steps``, ``log_every``).
        hooks: the loop's hooks (:func:`run_hooks`).

    Returns:
        The last state (before ``settings.steps`` when a stop was requested).
    """
    steps = settings.steps

    def step(run: RunState) -> tuple[RunState, dict]:
        meta, metrics = trainer.step(run.meta)
        return run._replace(meta=meta), metrics

    state, _ = outer_loop(
        step,
        state,
        int(state.meta.step),
        steps,
        inner_steps_per_step=trainer.inner_steps_per_step,
        log_due=lambda done: done % settings.log_every == 0 or done == steps,
        reducer=interval_means(),
        hooks=hooks,
    )
    return state
