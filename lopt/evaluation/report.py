"""Turns an :class:`~lopt.evaluation.evaluate.EvalResult` into JSON, Markdown and a figure.

Files written by :func:`write_outputs`:

* ``results.json``: settings, seeds, sweeps (every rate's per-seed final losses), and per
  optimizer its per-seed final losses and failures, their log-space summary, held-out
  metrics, steps to tuned Adam's final loss, timings, and its curves as means over
  :data:`CURVE_BLOCKS` blocks of steps (per seed, and mean ± standard error over seeds);
  for every trained optimizer a paired log-space test against every other. Non-finite
  numbers are ``null``; paths are relative to the output directory. Small enough to keep
  beside a published result (tens of kB).
* ``results.md``: the summary table, the paired tests and the sweeps.
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

CURVE_BLOCKS = 100
"""Blocks of steps a stored curve is averaged into."""

SIGNIFICANCE = 0.05
"""The p-value below which a paired difference is called significant in the reports."""


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


def _final_summary(finals: np.ndarray, reference: np.ndarray | None) -> dict:
    """Per-seed final losses: linear mean ± s.e., the log-space summary, and failures."""
    failed = stats.failures(finals, reference)
    log = stats.summarize_log(finals, failed)
    return {
        **_summary(finals),
        "geometric_mean": _number(log.geometric_mean),
        "median": _number(log.median),
        "iqm": _number(log.iqm),
        "log10_se": None if log.log_se is None else _number(log.log_se),
        "failed": [bool(f) for f in failed],
        "num_failed": log.num_failed,
    }


def _optimizer_summary(
    result: EvalResult, optimizer: OptimizerResult, target: float | None, reference: Any
) -> dict:
    """One optimizer's entry of :func:`summarize_result`: its final losses and held-out
    metrics per seed and summarised, and its ``(S, T)`` curves averaged over blocks of steps
    (per seed, and their mean and standard error over the seeds)."""
    tail = result.settings.tail
    curves = optimizer.trajectory.train_loss
    steps, blocks = stats.block_means(curves, CURVE_BLOCKS)
    reached = None
    if target is not None:
        reached = stats.steps_to_reach(stats.geometric_mean_curve(curves, tail), target, 1)
    return {
        "kind": optimizer.kind,
        "config": optimizer.config,
        "source": optimizer.source,
        "meta_training": optimizer.meta_training,
        "generalization": generalization(result, optimizer.meta_training),
        "final_train_loss": _final_summary(stats.final_loss(curves, tail), reference),
        "held_out": {
            name: _summary(values) for name, values in optimizer.trajectory.test_metrics.items()
        },
        "steps_to_target": reached,
        "seconds_per_step": optimizer.trajectory.seconds_per_step,
        "compile_seconds": optimizer.trajectory.compile_seconds,
        "curve_steps": steps.tolist(),
        "curve_mean": _numbers(stats.finite_mean(blocks, axis=0)),
        "curve_se": _numbers(stats.standard_error(blocks, axis=0)),
        "train_loss": _numbers(blocks),
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
        "log_floor": stats.LOG_FLOOR,
        "log_space": (
            f"final losses compared as log10(max(loss, {stats.LOG_FLOOR:g})); geometric mean "
            "over the finite seeds, median and interquartile mean over all seeds (a "
            "non-finite loss counts as the worst)"
        ),
        "failure": (
            f"a seed fails when its final loss is not finite or above "
            f"{stats.FAILURE_FACTOR:g}x the same seed's tuned {TARGET_BASELINE} final loss"
        ),
        "paired_test": (
            "two-sided paired t-test of the per-seed log10 differences over the seeds where "
            "both are finite (p from Student's t, n - 1 degrees of freedom), and the seeds "
            "each side wins"
        ),
        "sweep_criterion": (
            "lowest geometric mean final training loss over the tuning seeds; a rate with a "
            "diverged run is excluded"
        ),
        "curves": f"means over at most {CURVE_BLOCKS} blocks of consecutive steps",
        "seconds_per_step": f"all {settings.num_seeds} seeds vmapped, compile excluded",
    }


def summarize_result(result: EvalResult) -> dict:
    """Everything about the evaluation as a JSON-serialisable dict."""
    target = target_loss(result)
    reference = reference_finals(result)
    return {
        "paired": paired_differences(result),
        "task": {"name": result.task_name, "config": result.task_config},
        "settings": _settings_summary(result),
        "target": {"baseline": TARGET_BASELINE, "final_train_loss": target},
        "sweeps": {name: _sweep_summary(sweep) for name, sweep in result.sweeps.items()},
        "optimizers": {
            optimizer.label: _optimizer_summary(result, optimizer, target, reference)
            for optimizer in result.optimizers
        },
        "environment": result.environment,
    }


def reference_finals(result: EvalResult) -> np.ndarray | None:
    """Tuned Adam's per-seed final losses, what a failure is measured against (None without
    an Adam baseline: then only non-finite losses fail)."""
    for optimizer in result.optimizers:
        if optimizer.kind == "baseline" and optimizer.config["name"] == TARGET_BASELINE:
            return stats.final_loss(optimizer.trajectory.train_loss, result.settings.tail)
    return None


def paired_differences(result: EvalResult) -> dict[str, dict[str, dict]]:
    """Every trained optimizer's final training losses against every other optimizer's,
    paired over the evaluation seeds (the same initial parameters and data stream per seed,
    so seed-to-seed variation cancels), in log space (:func:`lopt.evaluation.stats.
    paired_log_test`).

    Returns:
        ``{trained: {other: {"ratio", "log10_se", "t", "p_value", "wins", "losses", "ties",
        "count"}}}``; ``ratio`` below 1 and negative ``t``: the trained optimizer is lower.
        ``None`` where a value is undefined.
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
            test = stats.paired_log_test(finals[optimizer.label], values)
            entry = {
                k: (_number(v) if isinstance(v, float) else v) for k, v in test._asdict().items()
            }
            entry["log10_se"] = entry.pop("log_se")
            rows[other] = entry
        out[optimizer.label] = rows
    return out


def _format(mean: float | None, se: float | None, nonfinite: int = 0, total: int = 0) -> str:
    """``mean ± se`` (``—`` for an undefined standard error), with diverged seeds counted."""
    if mean is None:
        return f"diverged ({nonfinite}/{total})" if nonfinite else "—"
    text = f"{mean:.4g} ± {'—' if se is None else f'{se:.2g}'}"
    return f"{text} ({nonfinite}/{total} diverged)" if nonfinite else text


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _p_value(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2g}" if value >= 1e-4 else "< 1e-4"


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
        f"{settings['log_space']}. Failed: {settings['failure']}. Held-out metrics: final "
        f"parameters on {settings['num_test_batches']} batches of the test split, mean ± "
        f"standard error over seeds. Steps to target: first step at which the geometric "
        f"mean over seeds of the runs' trailing-mean curves (over {settings['tail_steps']} "
        f"steps) reaches tuned {summary['target']['baseline']}'s geometric mean final loss "
        f"({target_text}). Time per step: {settings['seconds_per_step']}.",
        "",
    ]


def _results_table(summary: dict) -> list[str]:
    """One row per optimizer: final loss, held-out metrics, steps to target, time."""
    metrics = _held_out_metrics(summary)
    header = ["optimizer", "final train loss: geometric mean", "median", "IQM", "failed"]
    header += ["held-out loss", *[f"held-out {m}" for m in metrics]]
    header += ["steps to Adam's final loss", "ms / step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    total = len(summary["settings"]["seeds"])
    for label, entry in summary["optimizers"].items():
        final = entry["final_train_loss"]
        name = label if entry["kind"] == "trained" else _baseline_label(label, entry)
        geometric = _loss(final["geometric_mean"])
        if final["num_nonfinite"]:
            geometric += f" (of {total - final['num_nonfinite']} finite)"
        row = [name, geometric, _loss(final["median"]), _loss(final["iqm"])]
        row.append(f"{final['num_failed']}/{total}")
        for metric in ("loss", *metrics):
            held = entry["held_out"].get(metric)
            row.append("—" if held is None else _format(held["mean"], held["se"]))
        steps = entry["steps_to_target"]
        row.append("—" if steps is None else str(steps))
        row.append(f"{entry['seconds_per_step'] * 1e3:.3g}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _paired_table(label: str, rows: dict[str, dict]) -> list[str]:
    """A trained optimizer's paired log-space tests (:func:`paired_differences`)."""
    lines = [
        "",
        f"**{label}, paired over seeds** (ratio: geometric mean of its final training loss ÷ "
        f"the other's per seed, below 1: lower; t and two-sided p of the paired t-test on the "
        f"log10 differences; wins/losses/ties: seeds where it is lower/higher/equal; "
        f"significant: p < {SIGNIFICANCE:g})",
        "",
        "| against | ratio | t | p | wins / losses / ties | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for other, entry in rows.items():
        counts = f"{entry['wins']} / {entry['losses']} / {entry['ties']}"
        t = "—" if entry["t"] is None else f"{entry['t']:.3g}"
        ratio = "—" if entry["ratio"] is None else f"{entry['ratio']:.3g}"
        lines.append(
            f"| {other} | {ratio} | {t} | {_p_value(entry['p_value'])} | {counts} | "
            f"{verdict(entry)} |"
        )
    return lines


def verdict(entry: dict, level: float = SIGNIFICANCE) -> str:
    """``lower``, ``higher`` or ``not significant`` for a paired test's entry."""
    p_value, ratio = entry.get("p_value"), entry.get("ratio")
    if p_value is None or ratio is None or p_value >= level:
        return "not significant"
    return "lower" if ratio < 1 else "higher"


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
        generalization_note(label, entry)
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


def generalization_note(label: str, entry: dict) -> str:
    """One line of the report: how an optimizer's evaluation differs from its meta-training
    (another task, changed sizes, its task family, the horizon ratio).

    Args:
        label: the optimizer's label.
        entry: its entry of ``results.json`` (``generalization`` and ``meta_training``).
    """
    general, trained = entry["generalization"], entry["meta_training"]
    parts = []
    if not general["same_task"]:
        parts.append(f"meta-trained on `{trained['task']['name']}`")
    for key, (before, after) in general["task_changes"].items():
        parts.append(f"{key} {before} → {after}")
    family = trained.get("family") or []
    if family:
        members = ", ".join(
            "{" + ", ".join(f"{k}: {v}" for k, v in m.items()) + "}" for m in family
        )
        parts.append(f"meta-trained with task family members {members}")
    if general.get("family_member"):
        parts.append("this task is one of them")
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
        smoothing: trailing-mean window, in stored points, of the drawn curves (0 or 1:
            none; a stored point is already the mean of a block of steps).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_steps = summary["settings"]["num_steps"]
    window = max(1, smoothing)
    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    drawn = []
    for label, entry in summary["optimizers"].items():
        mean = np.asarray(entry["curve_mean"], dtype=np.float64)  # None -> nan
        se = np.asarray(entry["curve_se"], dtype=np.float64)
        mean, se = stats.trailing_mean(mean, window), stats.trailing_mean(se, window)
        steps = np.asarray(entry["curve_steps"]) + 1
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
    steps = summary["optimizers"] and next(iter(summary["optimizers"].values()))["curve_steps"]
    if steps:
        block = math.ceil(num_steps / len(steps))
        caption += f", means over blocks of {block} steps"
    if window > 1:
        caption += f", trailing mean over {window} blocks"
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
    summary = relative_paths(summarize_result(result), directory)
    paths = {
        "json": directory / JSON_FILE,
        "markdown": directory / MARKDOWN_FILE,
        "figure": directory / FIGURE_FILE,
    }
    paths["json"].write_text(json.dumps(summary, separators=(",", ":"), allow_nan=False) + "\n")
    paths["markdown"].write_text(markdown_table(summary))
    plot_curves(summary, paths["figure"], log_y=log_y, smoothing=smoothing)
    return paths


def relative_paths(summary: dict, directory: Path) -> dict:
    """``summary`` with every optimizer's ``source`` and meta-training ``run_dir`` relative to
    ``directory`` (where ``results.json`` is written), so that a result names no path of the
    machine that made it and still finds its optimizers when moved with them."""
    relative = lambda path: os.path.relpath(Path(path).resolve(), directory.resolve())
    for entry in summary["optimizers"].values():
        if entry.get("source"):
            entry["source"] = relative(entry["source"])
        if entry.get("meta_training") and entry["meta_training"].get("run_dir"):
            entry["meta_training"] = {
                **entry["meta_training"],
                "run_dir": relative(entry["meta_training"]["run_dir"]),
            }
    return summary


def load_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a ``results.json`` (or the directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / JSON_FILE
    return json.loads(path.read_text())
