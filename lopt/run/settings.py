"""What a meta-training run trains (:class:`RunParts`) and how it goes (:class:`RunSettings`).

A run also keeps a *record*: a JSON-like description of its settings, written to the run
directory's ``config.yaml`` and into every checkpoint. A resumed run compares its record
with the checkpoint's (:func:`lopt.run.resume.check_compatible`). The command line records
its whole resolved config; from Python, :func:`run_record` derives one from the settings.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import optax

from lopt.evaluation.validation import ValidationSettings
from lopt.meta import EpisodeSchedule, Estimator, MetaObjective
from lopt.run.errors import RunError


class RunParts(NamedTuple):
    """What a training run is built from.

    Attributes:
        task: the inner task.
        opt: the learned optimizer.
        estimator: the meta-gradient estimator.
        outer_opt: the optax optimizer of theta.
        schedule: inner-episode lengths.
        objective: the meta-objective.
        family: further tasks of ``task``'s architecture meta-trained beside it (a task
            family, :func:`lopt.meta.make_meta_trainer`), each with its own population;
            validation and the summary are ``task``'s.
    """

    task: Any
    opt: Any
    estimator: Estimator
    outer_opt: optax.GradientTransformation
    schedule: EpisodeSchedule
    objective: MetaObjective
    family: tuple = ()


COUNT_MINIMA: tuple[tuple[str, int], ...] = (
    ("steps", 1),
    ("log_every", 1),
    ("checkpoint_every", 0),
    ("keep_checkpoints", 1),
)
"""The step counts of :class:`RunSettings` and their smallest allowed values."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSettings:
    """How a meta-training run goes.

    Attributes:
        name: the run's name (progress bar, logger, summary).
        seed: seed of theta's initialisation and of every particle.
        steps: outer steps to reach (a resumed run continues up to this count).
        log_every: outer steps between metric records.
        checkpoint_every: outer steps between checkpoints (0: only the final one).
        keep_checkpoints: most recent checkpoints kept.
        resume: continue from the latest checkpoint in the run directory.
        progress: show a progress bar.
        devices: devices the particle groups are split over: a count, or ``"all"``.
        mesh_axis: the name of the mesh axis they are split along.
        validation: how theta is validated (None: no validation).
        validate_every: outer steps between validations (0 exactly when ``validation`` is
            None).
        start_at_tuned: start theta's step size at its base optimizer's learning rate tuned
            on the validation runs (needs validation).
        reference_cache: directory where the validation's tuned reference Adam is shared
            between runs of the same task, settings and committed code (None: each run
            tunes its own).
        record: the run's record (None: :func:`run_record` derives it from the settings).

    Raises:
        RunError: a count below its minimum (:data:`COUNT_MINIMA`), a negative
            ``validate_every``, or validation settings without a positive ``validate_every``
            (or the reverse), or ``start_at_tuned`` without validation.
    """

    name: str = "train"
    seed: int = 0
    steps: int = 1000
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = False
    progress: bool = True
    devices: int | str = 1
    mesh_axis: str = "particles"
    validation: ValidationSettings | None = None
    validate_every: int = 0
    start_at_tuned: bool = False
    reference_cache: Path | None = None
    record: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        for key, low in COUNT_MINIMA:
            if getattr(self, key) < low:
                raise RunError(f"{key} must be >= {low}, got {getattr(self, key)}")
        if self.validate_every < 0:
            raise RunError(f"validation.every must be >= 0, got {self.validate_every}")
        if (self.validation is None) != (self.validate_every == 0):
            raise RunError(
                "validation settings go with validation.every > 0, and validation.every > 0 "
                f"with settings (got every={self.validate_every}, settings={self.validation})"
            )
        if self.start_at_tuned and self.validation is None:
            raise RunError("start_at_tuned needs validation (validation.every > 0)")


def run_record(settings: RunSettings) -> dict[str, Any]:
    """The record of a run: ``settings.record``, or one derived from the settings.

    A derived record holds every setting but the record itself, the validation settings
    under ``validation`` together with ``every``, in plain JSON types.

    Args:
        settings: the run's settings.

    Returns:
        The record, a dict of JSON types.
    """
    if settings.record is not None:
        return dict(settings.record)
    fields = {
        field.name: getattr(settings, field.name)
        for field in dataclasses.fields(settings)
        if field.name not in ("record", "validation", "validate_every", "reference_cache")
    }
    validation = {} if settings.validation is None else dataclasses.asdict(settings.validation)
    fields["validation"] = {"every": settings.validate_every, **validation}
    return json.loads(json.dumps(fields))


def validates(record: Mapping[str, Any]) -> bool:
    """Whether the run a record describes validates theta (``validation.every > 0``)."""
    return record.get("validation", {}).get("every", 0) > 0
