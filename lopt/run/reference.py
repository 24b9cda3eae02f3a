"""The validation's reference levels kept in the run directory (:data:`REFERENCE_FILE`): the
initial theta's and a tuned Adam's scores, for the settings they were measured with, and the
tuned step size theta started at with ``start_at_tuned``.

The tuned Adam depends on the task, the validation settings and the code alone, not on the
learned optimizer, so runs that share them (the optimizers of one task, a sweep) can share
it: :func:`read_cached_adam` and :func:`write_cached_adam` keep it in a cache directory
under a key of all it depends on (:func:`adam_cache_key`), for committed code only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax

from lopt.evaluation.validation import Reference, ValidationSettings
from lopt.persistence import write_json
from lopt.provenance import source_commit
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


def adam_cache_key(task: Any, settings: ValidationSettings) -> str | None:
    """The key of a tuned reference Adam in the cache: a hash of the task (name and
    options), the validation settings, the source commit and the JAX platform.

    Returns:
        The key, or None when the code is not a clean checkout of a commit (its results
        could differ from another run's with the same commit).
    """
    commit = source_commit()
    if commit is None or commit.endswith("+"):
        return None
    device = jax.devices()[0]
    document = {
        "task": {"name": getattr(task, "name", None), "config": getattr(task, "config", None)},
        "settings": settings_json(settings),
        "commit": commit,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
    }
    text = json.dumps(document, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_cached_adam(cache_dir: Path, key: str) -> tuple[Reference, Path] | None:
    """The reference levels (theta0's left None) cached under ``key``, and their file."""
    path = cache_dir / f"{key}.json"
    if not path.is_file():
        return None
    document = json.loads(path.read_text())
    # The file holds no theta0: that of the run using it is its own.
    reference = Reference.from_json({**document, "theta0": document["adam"]})
    return reference._replace(theta0=None), path


def write_cached_adam(cache_dir: Path, key: str, reference: Reference) -> Path:
    """Caches the tuned Adam of ``reference`` under ``key``; returns the file's path."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    document = reference._replace(theta0=reference.adam).to_json()
    del document["theta0"]
    return write_json(cache_dir / f"{key}.json", document)
