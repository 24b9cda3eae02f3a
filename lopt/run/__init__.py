"""Meta-training runs in a directory: settings, state, resume, validation, summary.

:func:`train` runs (or resumes) a meta-training run from typed settings, writing its
checkpoints, metrics, best theta and summary into a run directory; ``lopt-train`` builds the
settings from its config and calls it. From Python::

    parts = RunParts(task, opt, estimator, outer_opt, schedule, objective)
    settings = RunSettings(
        name="mlp", steps=1000, validation=ValidationSettings(), validate_every=100
    )
    summary = train(settings, parts, "runs/mlp")
"""

from lopt.run.errors import RunError
from lopt.run.layout import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_OPTIMIZER_DIR,
    OPTIMIZER_DIR,
    PLOT_FILE,
    REFERENCE_FILE,
    SUMMARY_FILE,
)
from lopt.run.resume import RUN_CONTROL_KEYS, check_compatible, initial_state, topology
from lopt.run.settings import RunParts, RunSettings, run_record, validates
from lopt.run.state import THETAS, RunState, fresh_run_state, keep_best, theta_location
from lopt.run.stop import StopRequest
from lopt.run.training import train
from lopt.run.tuning import tuned_step_size, with_step_size
from lopt.run.validation import VALIDATION_KEYS, Validation

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "LAST_OPTIMIZER_DIR",
    "OPTIMIZER_DIR",
    "PLOT_FILE",
    "REFERENCE_FILE",
    "RUN_CONTROL_KEYS",
    "SUMMARY_FILE",
    "THETAS",
    "VALIDATION_KEYS",
    "RunError",
    "RunParts",
    "RunSettings",
    "RunState",
    "StopRequest",
    "Validation",
    "check_compatible",
    "fresh_run_state",
    "initial_state",
    "keep_best",
    "run_record",
    "theta_location",
    "topology",
    "train",
    "tuned_step_size",
    "validates",
    "with_step_size",
]
