"""The files of a run directory, relative to it.

A run directory holds :data:`CONFIG_FILE` (the run's record), ``metrics.jsonl`` and
``metrics.csv`` (:class:`lopt.loggers.MetricsFiles`), :data:`CHECKPOINT_DIR`,
:data:`REFERENCE_FILE` (with validation), and at the end :data:`OPTIMIZER_DIR`,
:data:`LAST_OPTIMIZER_DIR` (with validation), :data:`PLOT_FILE` and :data:`SUMMARY_FILE`.
"""

from __future__ import annotations

CONFIG_FILE = "config.yaml"
"""The run's record (:func:`lopt.run.settings.run_record`) as YAML."""

CHECKPOINT_DIR = "checkpoints"
"""The checkpoints: the whole :class:`lopt.run.state.RunState` every few steps."""

REFERENCE_FILE = "validation/reference.json"
"""The validation's reference levels: the initial theta's and a tuned Adam's."""

OPTIMIZER_DIR = "optimizer"
"""The best theta by validation (the last without validation), as a saved optimizer."""

LAST_OPTIMIZER_DIR = "optimizer_last"
"""The last theta, when :data:`OPTIMIZER_DIR` holds the best by validation."""

PLOT_FILE = "loss.png"
"""The meta-loss, meta-objective and validation curves."""

SUMMARY_FILE = "summary.json"
"""What the run found (:func:`lopt.run.summary.run_summary`)."""
