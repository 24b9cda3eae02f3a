"""Turns an :class:`~lopt.evaluation.evaluate.EvalResult` into JSON, Markdown and a figure.

Files written by :func:`write_outputs`:

* ``results.json``: settings, seeds, sweeps (every rate's per-seed final losses), and per
  optimizer its per-seed curves, mean and standard-error curves, final loss, held-out
  metrics, steps to tuned Adam's final loss, and timings. Non-finite numbers are ``null``.
* ``results.md``: the summary table and the sweeps.
* ``curves.png``: training loss (mean ± standard error over seeds) per optimizer, like
  Figure 2 of the UNF paper.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from lopt.evaluation import stats
from lopt.evaluation.evaluate import (
    TARGET_BASELINE,
    EvalResult,
    OptimizerResult,
    generalization,
    target_loss,
)
from lopt.evaluation.sweep import SweepResult

JSON_FILE = "results.json"
MARKDOWN_FILE = "results.md"
FIGURE_FILE = "curves.png"

HELD_OUT_METRICS = ("accuracy", "perplexity")
"""Held-out metrics shown next to the held-out loss, whichever the task reports."""


def _number(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _numbers(values: np.ndarray) -> list:
    return [_numbers(v) if np.ndim(v) else _number(v) for v in np.asarray(values, np.float64)]


def _summary(values: np.ndarray) -> dict:
    summary = stats.summarize(values)
    return {
        "per_seed": _numbers(values),
        "mean": _number(summary.mean),
        "se": _number(summary.se),
        "num_nonfinite": summary.num_nonfinite,
    }


def _optimizer_summary(
    result: EvalResult, optimizer: OptimizerResult, target: float | None
) -> dict:
    """One optimizer's entry of :func:`summarize_result`: its ``(S, T)`` curves, their
    mean and standard error over the seeds, and the measures derived from them."""
    tail = result.settings.tail
    curves = optimizer.trajectory.train_loss
    mean_curve = stats.finite_mean(curves, axis=0)
    return {
        "kind": optimizer.kind,
        "config": optimizer.config,
        "source": optimizer.source,
        "meta_training": optimizer.meta_training,
        "generalization": generalization(result, optimizer.meta_training),
        "final_train_loss": _summary(stats.final_loss(curves, tail)),
        "held_out": {
            name: _summary(values) for name, values in optimizer.trajectory.test_metrics.items()
        },
        "steps_to_target": (
            None if target is None else stats.steps_to_reach(mean_curve, target, tail)
        ),
        "seconds_per_step": optimizer.trajectory.seconds_per_step,
        "compile_seconds": optimizer.trajectory.compile_seconds,
        "curve_mean": _numbers(mean_curve),
        "curve_se": _numbers(stats.standard_error(curves, axis=0)),
        "train_loss": _numbers(curves),
    }


def _sweep_summary(sweep: SweepResult) -> dict:
    """A baseline's sweep: its grid, every rate's per-seed final losses and the choice."""
    return {
        "hyperparameters": sweep.hyperparameters,
        "learning_rates": list(sweep.learning_rates),
        "seeds": list(sweep.seeds),
        "num_steps": sweep.num_steps,
        "tail": sweep.tail,
        "final_losses": _numbers(sweep.final_losses),
        "scores": _numbers(sweep.scores),
        "best_learning_rate": sweep.best_learning_rate,
        "at_grid_edge": sweep.at_grid_edge,
    }


def _settings_summary(result: EvalResult) -> dict:
    """The settings and seeds of the evaluation, with the definitions its numbers follow."""
    settings = result.settings
    tail = settings.tail
    return {
        "num_steps": settings.num_steps,
        "num_seeds": settings.num_seeds,
        "seeds": list(settings.seeds),
        "tuning_seeds": list(settings.tuning) if result.sweeps else [],
        "tuning_steps": settings.tuning_steps or settings.num_steps,
        "tail_steps": tail,
        "num_test_batches": settings.num_test_batches,
        "final_loss": f"mean training loss over the last {tail} steps of a run",
        "sweep_criterion": (
            "lowest mean final training loss over the tuning seeds; a rate with a "
            "diverged run is excluded"
        ),
        "seconds_per_step": f"all {settings.num_seeds} seeds vmapped, compile excluded",
    }


def summarize_result(result: EvalResult) -> dict:
    """Everything about the evaluation as a JSON-serialisable dict."""
    target = target_loss(result)
    return {
        "paired": paired_differences(result),
        "task": {"name": result.task_name, "config": result.task_config},
        "settings": _settings_summary(result),
        "target": {"baseline": TARGET_BASELINE, "final_train_loss": target},
        "sweeps": {name: _sweep_summary(sweep) for name, sweep in result.sweeps.items()},
        "optimizers": {
            optimizer.label: _optimizer_summary(result, optimizer, target)
            for optimizer in result.optimizers
        },
        "environment": result.environment,
    }


def paired_differences(result: EvalResult) -> dict[str, dict[str, dict]]:
    """Final training loss of every trained optimizer minus every other optimizer's, paired
    over the evaluation seeds (the same initial parameters and data stream per seed, so
    seed-to-seed variation cancels).

    Returns:
        ``{trained: {other: {"mean", "se", "z"}}}`` with ``z = mean / se`` (negative: the
        trained optimizer is lower); ``None`` values where a difference is not finite.
    """
    tail = result.settings.tail
    finals = {o.label: stats.final_loss(o.trajectory.train_loss, tail) for o in result.optimizers}
    out: dict[str, dict[str, dict]] = {}
    for optimizer in result.optimizers:
        if optimizer.kind != "trained":
            continue
        rows = {}
        for other, values in finals.items():
            if other == optimizer.label:
                continue
            difference = finals[optimizer.label] - values
            mean = float(difference.mean()) if np.isfinite(difference).all() else math.nan
            se = float(stats.standard_error(difference))
            z = mean / se if se > 0 and math.isfinite(mean) else math.nan
            rows[other] = {"mean": _number(mean), "se": _number(se), "z": _number(z)}
        out[optimizer.label] = rows
    return out


def _format(mean: float | None, se: float | None, nonfinite: int = 0, total: int = 0) -> str:
    if mean is None:
        return f"diverged ({nonfinite}/{total})" if nonfinite else "—"
    text = f"{mean:.4g} ± {se:.2g}"
    return f"{text} ({nonfinite}/{total} diverged)" if nonfinite else text


def _task_options(task: dict) -> str:
    """``option=value, ...`` of a summary's task (its sizes; the name is shown apart)."""
    return ", ".join(f"{k}={v}" for k, v in task["config"].items() if k != "name")


def _held_out_metrics(summary: dict) -> list[str]:
    """The :data:`HELD_OUT_METRICS` that at least one optimizer reports."""
    return [
        name
        for name in HELD_OUT_METRICS
        if any(name in o["held_out"] for o in summary["optimizers"].values())
    ]


def _introduction(summary: dict) -> list[str]:
    """The title and the paragraph saying how every number of the table was measured."""
    settings = summary["settings"]
    seeds = settings["seeds"]
    target = summary["target"]["final_train_loss"]
    target_text = "—" if target is None else f"{target:.4g}"
    task = summary["task"]
    return [
        f"# Evaluation on `{task['name']}` ({_task_options(task)})",
        "",
        f"{settings['num_steps']} steps from {len(seeds)} evaluation seeds "
        f"({seeds[0]}–{seeds[-1]}); final loss = {settings['final_loss']}; "
        f"mean ± standard error over seeds. Held-out metrics: final parameters on "
        f"{settings['num_test_batches']} test batches. Steps to target: first step at which "
        f"the mean curve (trailing mean over {settings['tail_steps']} steps) reaches tuned "
        f"{summary['target']['baseline']}'s final loss ({target_text}). Time per step: "
        f"{settings['seconds_per_step']}.",
        "",
    ]


def _results_table(summary: dict) -> list[str]:
    """One row per optimizer: final loss, held-out metrics, steps to target, time."""
    metrics = _held_out_metrics(summary)
    header = ["optimizer", "final train loss", "held-out loss", *[f"held-out {m}" for m in metrics]]
    header += ["steps to Adam's final loss", "ms / step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    total = len(summary["settings"]["seeds"])
    for label, entry in summary["optimizers"].items():
        final = entry["final_train_loss"]
        name = label if entry["kind"] == "trained" else _baseline_label(label, entry)
        row = [name, _format(final["mean"], final["se"], final["num_nonfinite"], total)]
        for metric in ("loss", *metrics):
            held = entry["held_out"].get(metric)
            row.append("—" if held is None else _format(held["mean"], held["se"]))
        steps = entry["steps_to_target"]
        row.append("—" if steps is None else str(steps))
        row.append(f"{entry['seconds_per_step'] * 1e3:.3g}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _paired_table(label: str, rows: dict[str, dict]) -> list[str]:
    """A trained optimizer's paired differences (:func:`paired_differences`)."""
    lines = [
        "",
        f"**{label}, paired over seeds** (its final training loss minus the other's; "
        "z = mean ÷ standard error of the per-seed differences, below −2: lower by more "
        "than 2 paired s.e.)",
        "",
        "| against | difference | z |",
        "|---|---|---|",
    ]
    for other, entry in rows.items():
        if entry["mean"] is None:
            lines.append(f"| {other} | not finite | — |")
        else:
            z = "—" if entry["z"] is None else f"{entry['z']:.3g}"
            lines.append(f"| {other} | {entry['mean']:.4g} ± {entry['se']:.2g} | {z} |")
    return lines


def _sweep_table(name: str, sweep: dict) -> list[str]:
    """A baseline's sweep: every learning rate of the grid and its mean final loss."""
    seeds, rates = sweep["seeds"], sweep["learning_rates"]
    return [
        "",
        f"**{name} sweep** ({len(seeds)} tuning seeds {seeds[0]}–"
        f"{seeds[-1]}, {sweep['num_steps']} steps; mean final training loss, "
        f"inf = a run diverged): chosen learning rate {sweep['best_learning_rate']:g}"
        + (" — at the edge of the grid, widen it" if sweep["at_grid_edge"] else ""),
        "",
        "| learning rate | " + " | ".join(f"{r:g}" for r in rates) + " |",
        "|---|" + "---|" * len(rates),
        "| mean final loss | "
        + " | ".join("inf" if s is None else f"{s:.4g}" for s in sweep["scores"])
        + " |",
    ]


def markdown_table(summary: dict) -> str:
    """The Markdown report of :func:`summarize_result`'s output."""
    lines = _introduction(summary) + _results_table(summary)
    notes = [
        _generalization_note(label, entry)
        for label, entry in summary["optimizers"].items()
        if entry.get("generalization")
    ]
    if notes:
        lines += ["", *notes]
    for label, rows in summary.get("paired", {}).items():
        lines += _paired_table(label, rows)
    for name, sweep in summary["sweeps"].items():
        lines += _sweep_table(name, sweep)
    env = summary["environment"]
    commit = f", lopt commit {env['commit']}" if env.get("commit") else ""
    lines += [
        "",
        f"Measured with jax {env['jax']} on {env['backend']} ({env['device']}){commit}.",
        "",
    ]
    return "\n".join(lines)


def _generalization_note(label: str, entry: dict) -> str:
    general, trained = entry["generalization"], entry["meta_training"]
    parts = []
    if not general["same_task"]:
        parts.append(f"meta-trained on `{trained['task']['name']}`")
    for key, (before, after) in general["task_changes"].items():
        parts.append(f"{key} {before} → {after}")
    if general["horizon_ratio"] is not None:
        parts.append(f"horizon {general['horizon_ratio']:.3g}× the meta-training horizon")
    return f"- {label}: " + ("; ".join(parts) if parts else "same task as meta-training")


def _baseline_label(label: str, entry: dict) -> str:
    return f"{label} (tuned, lr {entry['config']['learning_rate']:g})"


def use_log_scale(curves: list[np.ndarray], log_y: bool | None) -> bool:
    """``log_y`` if given; else log when the finite positive losses span over 10x."""
    if log_y is not None:
        return bool(log_y)
    values = np.concatenate([np.asarray(c, np.float64).reshape(-1) for c in curves])
    values = values[np.isfinite(values) & (values > 0)]
    return values.size > 0 and values.max() / values.min() > 10


def plot_curves(
    summary: dict, path: str | os.PathLike, log_y: bool | None = None, smoothing: int = 0
) -> Path:
    """Draws training loss (mean ± standard error) per optimizer into a PNG.

    Args:
        summary: output of :func:`summarize_result`.
        path: the PNG file.
        log_y: log-scale loss axis (None: automatic, see :func:`use_log_scale`).
        smoothing: trailing-mean window of the drawn curves (0: ``T // 100``, 1: none).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_steps = summary["settings"]["num_steps"]
    window = smoothing if smoothing > 0 else max(1, num_steps // 100)
    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    drawn = []
    for label, entry in summary["optimizers"].items():
        mean = np.asarray(entry["curve_mean"], dtype=np.float64)  # None -> nan
        se = np.asarray(entry["curve_se"], dtype=np.float64)
        mean, se = stats.trailing_mean(mean, window), stats.trailing_mean(se, window)
        steps = np.arange(mean.shape[0])
        name = label if entry["kind"] == "trained" else _baseline_label(label, entry)
        style = "-" if entry["kind"] == "trained" else "--"
        (line,) = axis.plot(steps, mean, style, label=name, linewidth=1.4)
        axis.fill_between(steps, mean - se, mean + se, color=line.get_color(), alpha=0.25)
        drawn.append(mean)
    if drawn and use_log_scale(drawn, log_y):
        axis.set_yscale("log")
    # Wrapped: a task with many options (the transformer) would run off the figure.
    task = summary["task"]
    title = f"{task['name']} ({_task_options(task)})"
    axis.set_title(textwrap.fill(title, width=80), fontsize=9)
    axis.set_xlabel("inner step")
    axis.set_ylabel("training loss")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    caption = f"mean ± s.e. over {summary['settings']['num_seeds']} seeds"
    if window > 1:
        caption += f", trailing mean over {window} steps"
    axis.text(0.99, 0.01, caption, transform=axis.transAxes, ha="right", va="bottom", fontsize=7)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path


def write_outputs(
    result: EvalResult,
    out_dir: str | os.PathLike,
    log_y: bool | None = None,
    smoothing: int = 0,
) -> dict[str, Path]:
    """Writes ``results.json``, ``results.md`` and ``curves.png`` into ``out_dir``.

    Returns:
        ``{"json": ..., "markdown": ..., "figure": ...}`` paths.
    """
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    summary = summarize_result(result)
    paths = {
        "json": directory / JSON_FILE,
        "markdown": directory / MARKDOWN_FILE,
        "figure": directory / FIGURE_FILE,
    }
    paths["json"].write_text(json.dumps(summary, separators=(",", ":"), allow_nan=False) + "\n")
    paths["markdown"].write_text(markdown_table(summary))
    plot_curves(summary, paths["figure"], log_y=log_y, smoothing=smoothing)
    return paths


def load_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a ``results.json`` (or the directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / JSON_FILE
    return json.loads(path.read_text())
