"""Evaluation of trained optimizers against tuned baselines, from held-out seeds.

>>> task = lopt.tasks.get_task("mlp_digits", width=64)        # wider than meta-trained
>>> trained = [load_for_task("runs/mlp_unf", task)]          # saved optimizer or run dir
>>> result = evaluate(task, trained, EvalSettings(num_seeds=5, num_steps=4000))
>>> write_outputs(result, "eval_out")                         # PNG + JSON + Markdown

Modules: :mod:`~lopt.evaluation.seeds` (seed ranges), :mod:`~lopt.evaluation.runner`
(vmapped, scanned inner runs), :mod:`~lopt.evaluation.sweep` (baseline learning-rate
sweeps), :mod:`~lopt.evaluation.stats` (means, standard errors, final loss, steps to
target), :mod:`~lopt.evaluation.loading` (saved optimizers and run directories),
:mod:`~lopt.evaluation.evaluate` and :mod:`~lopt.evaluation.report`.
"""

from lopt.evaluation.evaluate import (
    TARGET_BASELINE,
    EvalResult,
    EvalSettings,
    OptimizerResult,
    evaluate,
    target_loss,
)
from lopt.evaluation.loading import (
    LoadedOptimizer,
    OptimizerLoadError,
    find_saved_optimizer,
    load_for_task,
)
from lopt.evaluation.report import (
    load_summary,
    markdown_table,
    plot_curves,
    summarize_result,
    write_outputs,
)
from lopt.evaluation.runner import Trajectory, make_run_fn, run_seeds
from lopt.evaluation.seeds import (
    EVAL_SEED_OFFSET,
    TUNING_SEED_OFFSET,
    check_disjoint,
    evaluation_seeds,
    seed_keys,
    tuning_seeds,
)
from lopt.evaluation.stats import (
    LOG_FLOOR,
    LogSummary,
    PairedTest,
    Summary,
    failures,
    final_loss,
    log_losses,
    paired_log_test,
    standard_error,
    steps_to_reach,
    summarize,
    summarize_log,
    tail_steps,
    trailing_mean,
)
from lopt.evaluation.sweep import BASELINES, DEFAULT_GRIDS, SweepResult, tune_learning_rate

__all__ = [
    "BASELINES",
    "DEFAULT_GRIDS",
    "EVAL_SEED_OFFSET",
    "LOG_FLOOR",
    "TARGET_BASELINE",
    "TUNING_SEED_OFFSET",
    "EvalResult",
    "EvalSettings",
    "LoadedOptimizer",
    "LogSummary",
    "OptimizerLoadError",
    "OptimizerResult",
    "PairedTest",
    "Summary",
    "SweepResult",
    "Trajectory",
    "check_disjoint",
    "evaluate",
    "evaluation_seeds",
    "failures",
    "final_loss",
    "find_saved_optimizer",
    "load_for_task",
    "load_summary",
    "log_losses",
    "make_run_fn",
    "markdown_table",
    "paired_log_test",
    "plot_curves",
    "run_seeds",
    "seed_keys",
    "standard_error",
    "steps_to_reach",
    "summarize",
    "summarize_log",
    "summarize_result",
    "tail_steps",
    "target_loss",
    "trailing_mean",
    "tune_learning_rate",
    "tuning_seeds",
    "write_outputs",
]
