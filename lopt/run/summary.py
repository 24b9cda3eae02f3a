"""What a run found: its summary (``summary.json``), what its validation found, and the
closing report in the log."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lopt.distributed import is_main_process
from lopt.evaluation.validation import Reference
from lopt.loggers import Logger
from lopt.persistence import write_json
from lopt.run.layout import OPTIMIZER_DIR, SUMMARY_FILE
from lopt.run.settings import RunParts, RunSettings
from lopt.run.state import RunState

log = logging.getLogger("lopt.train")


def run_summary(
    records: Sequence[dict[str, Any]],
    settings: RunSettings,
    parts: RunParts,
    start: int,
    seconds: float,
    measured_on: dict[str, Any],
) -> dict[str, Any]:
    """The summary of a run.

    Args:
        records: the run's metrics records.
        settings: its settings.
        parts: what it trained.
        start: the step it resumed from (0: a new run).
        seconds: its wall time.
        measured_on: the environment it ran in (:func:`lopt.provenance.environment`).

    Returns:
        The summary's entries (the validation's are added by the caller).
    """
    finite = lambda key: [r[key] for r in records if math.isfinite(r.get(key, math.nan))]
    losses, rates = finite("meta_loss"), finite("inner_steps_per_sec")
    return {
        "name": settings.name,
        "task": parts.task.name,
        "optimizer": parts.opt.config.get("name"),
        "estimator": parts.estimator.config.get("name"),
        "seed": settings.seed,
        "steps": records[-1]["step"] if records else start,
        "resumed_from_step": start or None,
        "initial_meta_loss": losses[0] if losses else None,
        "final_meta_loss": losses[-1] if losses else None,
        "best_meta_loss": min(losses) if losses else None,
        "num_nonfinite": int(sum(r.get("num_nonfinite", 0) for r in records)),
        "num_skipped": int(sum(r.get("skipped", 0) for r in records)),
        "inner_steps_per_sec": statistics.median(rates) if rates else None,
        "wall_time_sec": round(seconds, 2),
        "optimizer_dir": OPTIMIZER_DIR,  # relative to the run directory, like every path here
        "environment": measured_on,
    }


def validation_summary(
    state: RunState, reference: Reference, records: Sequence[dict[str, Any]], metric: str
) -> dict[str, Any]:
    """What the run's validation found.

    Args:
        state: the run's last state.
        reference: the validation's reference levels.
        records: the run's validated metrics records.
        metric: what selected the best theta.

    Returns:
        The best theta's step, its score on ``metric`` and its other measures, its ratios
        to the initial theta and the reference Adam, the last theta's scores, and a one-line
        verdict (non-finite values as None).
    """
    best_score = float(state.best_score)
    improved = int(state.best_step) > 0
    ratios = reference.ratios(best_score, metric)
    adam = reference.adam.summary()
    theta0 = reference.theta0.summary()
    best = next((r for r in records if r["step"] == int(state.best_step)), None)
    if best is None:
        best = {f"val_{k}": v for k, v in theta0.items()}
    last = records[-1] if records else None
    if not improved:
        verdict = (
            "validation never improved on the initial theta: optimizer/ holds theta0, "
            "meta-training did not help"
        )
    else:
        verdict = (
            f"best theta at step {int(state.best_step)}: validation {metric} "
            f"{ratios['val_vs_theta0']:.3g}x theta0's and {ratios['val_vs_adam']:.3g}x "
            f"tuned Adam's on {len(reference.adam.final_loss)} validation seeds (whether that "
            "holds beyond the noise is for lopt-eval's held-out seeds and paired tests to say)"
        )
    finite = lambda v: v if v is None or math.isfinite(v) else None
    summary = {
        "metric": metric,
        "best_step": int(state.best_step),
        "best_score": best_score,
        "best_final_loss_gmean": best["val_final_loss_gmean"],
        "best_valid_loss": best["val_valid_loss"],
        "best_vs_theta0": ratios["val_vs_theta0"],
        "best_vs_adam": ratios["val_vs_adam"],
        "improved_on_theta0": improved,
        "theta0_final_loss_gmean": theta0["final_loss_gmean"],
        "theta0_valid_loss": theta0["valid_loss"],
        "adam_final_loss_gmean": adam["final_loss_gmean"],
        "adam_valid_loss": adam["valid_loss"],
        "adam_learning_rate": reference.adam_learning_rate,
        "last_final_loss_gmean": None if last is None else last["val_final_loss_gmean"],
        "last_valid_loss": None if last is None else last["val_valid_loss"],
        "verdict": verdict,
    }
    return {k: finite(v) if isinstance(v, float) else v for k, v in summary.items()}


def publish(
    summary: dict[str, Any], run_dir: Path, logger: Logger, optimizer_dir: Path, parts: RunParts
) -> None:
    """Writes ``summary.json`` (process 0 alone), hands the optimizer and the summary to the
    logger, and logs the summary and the run's health.

    Args:
        summary: the run's summary.
        run_dir: the run directory.
        logger: the run's logger.
        optimizer_dir: the saved optimizer's directory.
        parts: what the run trained.
    """
    if is_main_process():
        write_json(run_dir / SUMMARY_FILE, summary)
    logger.log_optimizer(optimizer_dir)
    logger.finish(summary)
    shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in summary.items()}
    shown["optimizer_dir"] = run_dir / OPTIMIZER_DIR
    shown.pop("validation", None)
    shown.pop("environment", None)
    log.info("summary:\n%s", "\n".join(f"  {k:20s} {v}" for k, v in shown.items()))
    report_health(summary, parts)


def report_health(summary: dict[str, Any], parts: RunParts) -> None:
    """Says plainly, at the end, whether the run learned and whether particles diverged."""
    diverged = summary["num_nonfinite"]
    if diverged:
        bound = parts.objective.max_loss
        log.warning(
            "%d particle groups diverged (non-finite loss%s) and were reset; if this is "
            "frequent the learned optimizer's steps are too large for the task",
            diverged,
            "" if bound is None else f", or loss above {bound:.3g}",
        )
    if "validation" in summary:
        verdict = summary["validation"]["verdict"]
        (log.info if summary["validation"]["improved_on_theta0"] else log.warning)(
            "validation: %s", verdict
        )
        log.info(
            "validation took %.0f s, %.1f%% of the run's wall time (validation.every sets "
            "how often it runs)",
            summary["validation"]["seconds"],
            100 * summary["validation"]["share_of_wall_time"],
        )
