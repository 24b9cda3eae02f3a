"""The validation's reference levels kept in the run directory (:data:`REFERENCE_FILE`): the
initial theta's and a tuned Adam's scores, for the settings they were measured with, and the
tuned step size theta started at with ``start_at_tuned``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

from lopt.evaluation.validation import Reference, ValidationSettings
from lopt.persistence import write_json
from lopt.run.layout import REFERENCE_FILE


class StoredReference(NamedTuple):
    """What :data:`REFERENCE_FILE` holds.

    Attributes:
        reference: the reference levels.
        tuned: ``{"baseline", "learning_rate"}`` theta started at, or None.
    """

    reference: Reference
    tuned: dict[str, Any] | None


def settings_json(settings: ValidationSettings) -> dict[str, Any]:
    """``settings`` in JSON types, as the reference file records them."""
    return json.loads(json.dumps(dataclasses.asdict(settings)))


def read_reference(run_dir: Path, settings: ValidationSettings) -> StoredReference | None:
    """The reference levels an earlier process of the run stored.

    Args:
        run_dir: the run directory.
        settings: this run's validation settings.

    Returns:
        What the file holds, or None when there is none or it was measured with other
        settings.
    """
    path = run_dir / REFERENCE_FILE
    if not path.is_file():
        return None
    document = json.loads(path.read_text())
    if document.get("settings") != settings_json(settings):
        return None
    return StoredReference(Reference.from_json(document), document.get("start_at_tuned"))


def write_reference(run_dir: Path, settings: ValidationSettings, stored: StoredReference) -> Path:
    """Writes the reference levels and the settings they were measured with.

    Returns:
        The file's path.
    """
    path = run_dir / REFERENCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "settings": settings_json(settings),
        "start_at_tuned": stored.tuned,
        **stored.reference.to_json(),
    }
    return write_json(path, document)
