"""Saving a fitted predictor and scoring networks with it: a predictor a user can apply.

A saved predictor is one directory, written like a saved learned optimizer
(:mod:`lopt.learned.serialization`): no pickle, a JSON document that records the SHA-256
of the binary file, every file written atomically (:func:`lopt.persistence.write_atomic`),
the binary file first::

    path/
      predictor.json   {"format": "lopt.weight_space_predictor", "format_version": 1,
                        "kind": "unf", "options": {"width": 16, ...},
                        "target": {"name": "test_accuracy", "mean": ..., "std": ...},
                        "weight_space": {...}, "tensors": [{"keys": [...], "shape": [...]}],
                        "hyperparameters": null, "provenance": {...},
                        "state_sha256": "..."}
      state.msgpack    {"params": the module's variables,
                        "inputs": {"mean": ..., "std": ...}}: the input standardisers

``weight_space`` is the structure of the spec (:func:`lopt.nf.matching.describe_weight_space`)
and ``tensors`` the tensors' paths (as lists of keys) and shapes, both in leaf order; a
hyperparameter predictor records ``hyperparameters`` (``names`` and ``log``) instead.
``inputs`` holds the per-tensor mean and deviation trees (nested like the params), or the
hyperparameters' ``(H,)`` vectors.

>>> predictor = load_predictor("runs/predict/rnn/unf_split0_seed0/predictor")
>>> predictor.score(params)                       # (1,) for one network, (B,) for a batch
>>> predictor.score(params, spec=lopt.derive_spec(apply, params, inputs))

A network of another weight space is refused with what differs: tensors missing,
unexpected or of another shape (:func:`lopt.persistence.leaf_mismatch`), or, given its
spec, tensors whose axes are permuted together differently.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import flax.serialization
import jax
import numpy as np

from lopt.nf import spec as nfspec
from lopt.nf.matching import canonical_spec, describe_weight_space
from lopt.persistence import leaf_mismatch, sha256, write_atomic
from lopt.predict.features import Standardizer
from lopt.predict.fitted import FittedPredictor, TargetScale, predict
from lopt.predict.hyperparameters import HyperparameterScaler
from lopt.predict.models import PREDICTORS

PyTree = Any

FORMAT = "lopt.weight_space_predictor"
FORMAT_VERSION = 1
DOCUMENT_FILE = "predictor.json"
STATE_FILE = "state.msgpack"
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


class SavedPredictorError(ValueError):
    """A saved predictor is missing, malformed, corrupt or of a newer format."""


class WeightSpaceError(ValueError):
    """Networks of another weight space than the predictor's; the message says what differs."""


def _keys(path: tuple) -> list[str]:
    return [str(getattr(part, "key", part)) for part in path]


def tensor_layout(spec: PyTree, shapes: PyTree) -> list[dict[str, Any]]:
    """Per tensor of ``spec`` (leaf order): its path as a list of keys and its shape.

    Args:
        spec: a permutation spec (nested dicts).
        shapes: one network's params (arrays or ``ShapeDtypeStruct``), nested as ``spec``.
    """
    flat = jax.tree_util.tree_flatten_with_path(spec, is_leaf=nfspec.is_axes)[0]
    shape_of = {tuple(_keys(path)): tuple(np.shape(leaf)) for path, leaf in _leaves(shapes)}
    return [{"keys": _keys(path), "shape": list(shape_of[tuple(_keys(path))])} for path, _ in flat]


def _leaves(tree: PyTree) -> list[tuple[tuple, Any]]:
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def _nest(items: list[tuple[list[str], Any]]) -> dict[str, Any]:
    """A nested dict from ``(keys, leaf)`` pairs."""
    tree: dict[str, Any] = {}
    for keys, leaf in items:
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = leaf
    return tree


def _path_name(keys: list[str]) -> str:
    return "".join(f"[{key!r}]" for key in keys)


def save_predictor(
    path: str | os.PathLike,
    fitted: FittedPredictor,
    *,
    target_name: str,
    example: PyTree | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Writes ``fitted`` to the directory ``path`` (created if needed).

    Args:
        path: the target directory; files of a predictor saved there are replaced.
        fitted: the predictor (:attr:`lopt.predict.Evaluation.predictor`).
        target_name: the metric it predicts (recorded, and shown when scoring).
        example: one network's params (or their shapes), for a weight-space predictor:
            the tensor shapes it accepts.
        provenance: JSON-serialisable notes (zoo, split, seed, test τ) kept with it.

    Returns:
        The directory as a ``Path``.
    """
    if fitted.kind not in PREDICTORS or fitted.params is None:
        raise ValueError(f"cannot save an unfitted or unknown predictor {fitted.kind!r}")
    document: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": fitted.kind,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in fitted.options.items()},
        "target": {"name": target_name, "mean": fitted.target.mean, "std": fitted.target.std},
        "weight_space": None,
        "tensors": None,
        "hyperparameters": None,
        "provenance": dict(provenance or {}),
    }
    if fitted.reads_weights:
        if example is None:
            raise ValueError("a weight-space predictor is saved with an example network")
        document["weight_space"] = describe_weight_space(fitted.spec)
        document["tensors"] = tensor_layout(fitted.spec, example)
        inputs = {"mean": fitted.inputs.mean, "std": fitted.inputs.std}
    else:
        names, log = fitted.inputs.names, fitted.inputs.log
        document["hyperparameters"] = {"names": list(names), "log": list(log)}
        inputs = {"mean": fitted.inputs.mean, "std": fitted.inputs.std}
    state = {"params": flax.serialization.to_state_dict(fitted.params), "inputs": inputs}
    state = jax.tree_util.tree_map(np.asarray, state)
    state_bytes = flax.serialization.msgpack_serialize(state)
    document["state_sha256"] = sha256(state_bytes)
    try:
        document_bytes = json.dumps(document, indent=2, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise ValueError(f"the predictor's description is not JSON-serialisable: {err}") from err
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    # The document, which records the state's hash, goes last: a crash between the two
    # writes leaves a pair that fails the hash check, never a mix of two predictors.
    write_atomic(directory / STATE_FILE, state_bytes)
    write_atomic(directory / DOCUMENT_FILE, document_bytes)
    return directory


class SavedPredictor(NamedTuple):
    """A loaded predictor.

    Attributes:
        fitted: the predictor, on the canonical spec of its weight space.
        target_name: the metric it predicts.
        weight_space: the structure of the weight space it reads (``None`` for a
            hyperparameter predictor).
        tensors: ``{path: shape}`` of the tensors it reads (``jax.tree_util.keystr``
            paths), in leaf order; empty for a hyperparameter predictor.
        provenance: the notes saved with it.
    """

    fitted: FittedPredictor
    target_name: str
    weight_space: dict | None
    tensors: dict[str, tuple[int, ...]]
    provenance: dict[str, Any]

    def check(self, params: PyTree, spec: PyTree | None = None) -> bool:
        """Checks that ``params`` (and ``spec``) are of this predictor's weight space.

        Args:
            params: one network's params (leaves of the saved shapes) or a batch (one more
                leading axis).
            spec: the networks' permutation spec (e.g. :func:`lopt.derive_spec` of the
                model), compared by structure, not id names; ``None`` checks the tensors.

        Returns:
            Whether ``params`` is a batch.

        Raises:
            WeightSpaceError: saying what differs.
        """
        if not self.fitted.reads_weights:
            raise WeightSpaceError(
                f"this predictor reads hyperparameters {list(self.fitted.inputs.names)}, not "
                "weights: score {name: value} instead"
            )
        found = {jax.tree_util.keystr(path): np.shape(leaf) for path, leaf in _leaves(params)}
        single = leaf_mismatch(self.tensors, found)
        batch = leaf_mismatch(self.tensors, {path: shape[1:] for path, shape in found.items()})
        if single is not None and batch is not None:
            raise WeightSpaceError(
                f"these params are not of the weight space the predictor was fitted on: "
                f"{single} (it reads one network's tensors of the saved shapes, or a batch "
                "of them with one leading axis more)"
            )
        if spec is not None:
            differences = space_differences(self.weight_space, describe_weight_space(spec))
            if differences:
                raise WeightSpaceError(
                    "the model's permutation structure differs from the one the predictor "
                    "was fitted on:\n  " + "\n  ".join(differences)
                )
        return single is not None

    def score(self, networks: PyTree, spec: PyTree | None = None) -> np.ndarray:
        """Predicts the metric of networks.

        Args:
            networks: params of one network or a batch (see :meth:`check`); for a
                hyperparameter predictor ``{name: value or (B,)}``.
            spec: optional spec of the networks (see :meth:`check`).

        Returns:
            ``(B,)`` float64 predictions (``B = 1`` for one network), in the metric's units.

        Raises:
            WeightSpaceError: the networks are of another weight space.
        """
        if not self.fitted.reads_weights:
            batch = {k: np.atleast_1d(np.asarray(v)) for k, v in dict(networks).items()}
            return predict(self.fitted, batch)
        batched = self.check(networks, spec)
        if not batched:
            networks = jax.tree_util.tree_map(lambda w: np.asarray(w)[None], networks)
        return predict(self.fitted, networks)


def space_differences(saved: dict, found: dict) -> list[str]:
    """How two weight-space structures (:func:`describe_weight_space`) differ, per tensor."""
    word = lambda kind, number: "fixed" if number is None else f"{kind} {number}"
    words = lambda axes: "(" + ", ".join(word(kind, number) for kind, number in axes) + ")"
    saved_axes = {t["path"]: t["axes"] for t in saved["tensors"]}
    found_axes = {t["path"]: t["axes"] for t in found["tensors"]}
    out = [f"{p}: missing from the model" for p in saved_axes if p not in found_axes]
    out += [f"{p}: not in the fitted weight space" for p in found_axes if p not in saved_axes]
    out += [
        f"{p}: axes {words(found_axes[p])}, fitted on {words(axes)}"
        for p, axes in saved_axes.items()
        if p in found_axes and found_axes[p] != axes
    ]
    return out


def _read_document(directory: Path) -> dict[str, Any]:
    path = directory / DOCUMENT_FILE
    if not path.is_file():
        raise SavedPredictorError(
            f"{directory} is not a saved predictor: it has no {DOCUMENT_FILE}"
        )
    try:
        document = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SavedPredictorError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SavedPredictorError(f'{path} is not a saved predictor ("format": {FORMAT!r})')
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SavedPredictorError(f"{path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise SavedPredictorError(
            f"{path} has format version {version}; this lopt reads up to {FORMAT_VERSION}: "
            "upgrade lopt to load it"
        )
    required = ("kind", "options", "target", "state_sha256")
    missing = [key for key in required if key not in document]
    if missing or document["kind"] not in PREDICTORS:
        raise SavedPredictorError(
            f"{path} is damaged: missing {missing} or unknown kind {document.get('kind')!r}"
        )
    if not _HEX_DIGEST.fullmatch(str(document["state_sha256"])):
        raise SavedPredictorError(f"{path}: state_sha256 must be 64 lowercase hex digits")
    return document


def _read_state(directory: Path, document: dict[str, Any]) -> dict[str, Any]:
    path = directory / STATE_FILE
    if not path.is_file():
        raise SavedPredictorError(f"saved predictor {directory} has no {STATE_FILE}")
    data = path.read_bytes()
    if sha256(data) != document["state_sha256"]:
        raise SavedPredictorError(
            f"{path} is corrupt: its SHA-256 is {sha256(data)}, but {DOCUMENT_FILE} records "
            f"{document['state_sha256']} (the file changed after it was saved)"
        )
    try:
        state = flax.serialization.msgpack_restore(data)
    except Exception as err:  # msgpack raises several unrelated types on bad bytes
        raise SavedPredictorError(f"{path} is not a msgpack file: {err}") from err
    if not isinstance(state, dict) or set(state) != {"params", "inputs"}:
        raise SavedPredictorError(f"{path} does not hold params and input standardisers")
    return state


def load_predictor(path: str | os.PathLike) -> SavedPredictor:
    """Loads a predictor written by :func:`save_predictor`.

    Raises:
        SavedPredictorError: the directory is not a saved predictor, is damaged, its state
            file changed after saving, or it is of a newer format.
    """
    directory = Path(path)
    document = _read_document(directory)
    state = _read_state(directory, document)
    options = dict(document["options"])
    if "head" in options:
        options["head"] = tuple(options["head"])
    target = TargetScale(float(document["target"]["mean"]), float(document["target"]["std"]))
    mean, std = state["inputs"]["mean"], state["inputs"]["std"]
    if document["weight_space"] is not None:
        tensors = document["tensors"]
        ids = canonical_spec(document["weight_space"])
        spec = _nest([(t["keys"], axes) for t, axes in zip(tensors, ids, strict=True)])
        inputs: Standardizer | HyperparameterScaler = Standardizer(mean, std)
        shapes = {_path_name(t["keys"]): tuple(t["shape"]) for t in tensors}
    else:
        names = tuple(document["hyperparameters"]["names"])
        log = tuple(bool(x) for x in document["hyperparameters"]["log"])
        spec, shapes = None, {}
        inputs = HyperparameterScaler(names, log, np.asarray(mean), np.asarray(std))
    fitted = FittedPredictor(document["kind"], options, spec, state["params"], inputs, target)
    return SavedPredictor(
        fitted=fitted,
        target_name=str(document["target"]["name"]),
        weight_space=document["weight_space"],
        tensors=shapes,
        provenance=dict(document.get("provenance") or {}),
    )
