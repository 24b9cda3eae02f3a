"""Saves and loads learned optimizers: meta-parameters plus a versioned config, no pickle.

A saved optimizer is one directory::

    path/
      config.json     {"format": "lopt.learned_optimizer", "format_version": 5,
                       "name": "unf", "hyperparameters": {...},
                       "weight_space": {...}, "theta_sha256": "..."}
      theta.msgpack   the meta-parameters, a msgpack of nested dicts of numpy arrays

``weight_space`` (format 4 on, learned rules only) is the structure of the weight space the
rule was trained on (:func:`lopt.nf.matching.describe_weight_space`): which ids join which
axes of which tensors, not their names or lengths. Loading needs only this package and the
permutation spec of the params to optimise: the model's tensors are matched to the trained
ones by that structure (:mod:`lopt.learned.transfer`), so the same ``theta`` serves any
model of the same architecture, of any width, whatever its module names or the order in
which its layers were constructed. Files of format 3 have no structure and fit only a model
whose params have the trained tree's order; another model is refused with that cause and
how to save the file again as the current format.

``theta_sha256`` (format 5 on) is the SHA-256 of ``theta.msgpack``: a file changed after it
was saved is refused as corrupt instead of silently giving another update rule. Files of
older formats have none; they load with a warning that they cannot be checked.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
import optax

from lopt.learned.base import LearnedOptimizer
from lopt.learned.export import as_optax
from lopt.learned.fit import theta_mismatch
from lopt.learned.optimizers import OPTIMIZERS, optimizer_from_config
from lopt.learned.transfer import for_model
from lopt.nf import spec as nfspec
from lopt.nf.matching import describe_weight_space
from lopt.persistence import sha256, write_atomic

PyTree = Any

FORMAT = "lopt.learned_optimizer"
FORMAT_VERSION = 5
UNF_LAYOUT_VERSION = 3
"""The first format whose UNF layers keep one kernel per shared source and stack leaves
whose axes are the same ids in any order; files of older formats with such layers cannot
be read."""
WEIGHT_SPACE_VERSION = 4
"""The first format that records the structure of the trained weight space."""
THETA_HASH_VERSION = 5
"""The first format whose ``config.json`` records the SHA-256 of ``theta.msgpack``."""
UNF_BACKBONES = ("unf", "unf_deep", "nfn")
"""Optimizers whose update network has UNF (or NFN) layers."""
CONFIG_FILE = "config.json"
THETA_FILE = "theta.msgpack"
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


class SavedOptimizerError(ValueError):
    """A saved optimizer directory is malformed, corrupt or from a newer format."""


def save_optimizer(path: str | os.PathLike, opt: LearnedOptimizer, theta: PyTree) -> Path:
    """Writes ``opt``'s config and ``theta`` to the directory ``path`` (created if needed).

    Args:
        path: target directory; existing files of a saved optimizer are replaced.
        opt: the optimizer (its ``config`` is saved).
        theta: its meta-parameters (nested dicts of arrays).

    Returns:
        The directory as a ``Path``.
    """
    directory = Path(path)
    config = dict(opt.config)
    name = config.pop("name", None)
    if name not in OPTIMIZERS:
        raise ValueError(f"cannot save optimizer with unknown name {name!r}")
    state = jax.tree_util.tree_map(np.asarray, flax.serialization.to_state_dict(theta))
    theta_bytes = flax.serialization.msgpack_serialize(state)
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "hyperparameters": config,
        "theta_sha256": sha256(theta_bytes),
    }
    if opt.spec is not None:
        document["weight_space"] = describe_weight_space(opt.spec)
    try:
        config_bytes = json.dumps(document, indent=2, sort_keys=True).encode()
    except TypeError as err:
        raise ValueError(f"the optimizer config is not JSON-serialisable: {err}") from err
    directory.mkdir(parents=True, exist_ok=True)
    # Owner-only permissions, as saved optimizers have always been written. The config, which
    # records theta's hash, goes last: a crash between the two writes leaves a pair that
    # fails the hash check instead of one that loads as a mix of two optimizers.
    write_atomic(directory / THETA_FILE, theta_bytes, mode=None)
    write_atomic(directory / CONFIG_FILE, config_bytes, mode=None)
    return directory


def read_config(path: str | os.PathLike) -> dict:
    """Reads and checks ``config.json`` of a saved optimizer.

    Returns:
        ``{"name": ..., **hyperparameters}``, the optimizer's ``config``.

    Raises:
        FileNotFoundError: the directory or its config file does not exist.
        SavedOptimizerError: the file is not valid JSON, not a lopt optimizer config, lacks
            a required key, or was written by a newer format version.
    """
    document = _read_document(path)
    return {"name": document["name"], **document["hyperparameters"]}


def _read_document(path: str | os.PathLike) -> dict:
    """Reads ``config.json`` of a saved optimizer as written, after checking it.

    Raises:
        FileNotFoundError, SavedOptimizerError: see :func:`read_config`.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"no saved optimizer at {directory}: not a directory")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"saved optimizer {directory} has no {CONFIG_FILE}")
    try:
        document = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SavedOptimizerError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SavedOptimizerError(
            f'{config_path} is not a lopt learned-optimizer config (expected "format": {FORMAT!r})'
        )
    version = _check_version(document, config_path)
    _check_entries(document, version, config_path)
    return document


def _check_version(document: dict, config_path: Path) -> int:
    """The document's format version, refused when invalid or newer than this lopt's."""
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SavedOptimizerError(f"{config_path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise SavedOptimizerError(
            f"{config_path} has format version {version}, newer than the versions this lopt "
            f"reads (up to {FORMAT_VERSION}); upgrade lopt to load it"
        )
    return version


def _check_entries(document: dict, version: int, config_path: Path) -> None:
    """Refuses a document whose name, hyperparameters or theta hash are missing or invalid,
    or whose UNF layers are laid out as before :data:`UNF_LAYOUT_VERSION`."""
    # A missing entry is refused rather than defaulted: the defaults would load another
    # update rule than the one that was trained.
    for key in ("name", "hyperparameters"):
        if key not in document:
            raise SavedOptimizerError(
                f"{config_path} has no {key!r} entry, which every saved optimizer records; "
                "the file is damaged: export or save the optimizer again"
            )
    name, hyper = document["name"], document["hyperparameters"]
    if name not in OPTIMIZERS:
        raise SavedOptimizerError(
            f"{config_path} names unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}"
        )
    if version < UNF_LAYOUT_VERSION and name in UNF_BACKBONES:
        raise SavedOptimizerError(
            f"{config_path} has format version {version}, whose {name!r} network lays out "
            f"its UNF kernels differently from this lopt (format {FORMAT_VERSION}: one kernel "
            "per shared source, leaves stacked whatever the order of their axes); meta-train "
            "it again with this version"
        )
    if not isinstance(hyper, dict):
        raise SavedOptimizerError(f"{config_path}: hyperparameters must be a JSON object")
    digest = document.get("theta_sha256")
    if digest is None and version >= THETA_HASH_VERSION:
        raise SavedOptimizerError(
            f"{config_path} has format version {version} but no 'theta_sha256' entry, which "
            f"that format records; the file is damaged: export or save the optimizer again"
        )
    if digest is not None and not (isinstance(digest, str) and _HEX_DIGEST.fullmatch(digest)):
        raise SavedOptimizerError(
            f"{config_path}: theta_sha256 must be 64 lowercase hex digits, got {digest!r}"
        )


def read_weight_space(path: str | os.PathLike) -> dict | None:
    """The trained weight space's structure recorded in ``config.json`` (None before format
    4, and for the hand-designed optimizers)."""
    space = _read_document(path).get("weight_space")
    if space is not None and not isinstance(space, dict):
        raise SavedOptimizerError(f"{Path(path) / CONFIG_FILE}: weight_space must be an object")
    return space


def read_theta(path: str | os.PathLike) -> PyTree:
    """Reads ``theta.msgpack`` of a saved optimizer as nested dicts of numpy arrays.

    The file's SHA-256 must be the one ``config.json`` records (format 5 on; older files
    load with a warning that they cannot be checked).

    Raises:
        FileNotFoundError: the file or ``config.json`` does not exist.
        SavedOptimizerError: ``config.json`` is invalid (see :func:`read_config`), the file's
            SHA-256 differs from the recorded one, or it is not a msgpack of nested dicts of
            numeric arrays.
    """
    theta_path = Path(path) / THETA_FILE
    if not theta_path.is_file():
        raise FileNotFoundError(f"saved optimizer {Path(path)} has no {THETA_FILE}")
    data = theta_path.read_bytes()
    _check_digest(_read_document(path), data, theta_path)
    try:
        theta = flax.serialization.msgpack_restore(data)
    except Exception as err:  # msgpack raises several unrelated types on bad bytes
        raise SavedOptimizerError(f"{theta_path} is corrupt or not a msgpack file: {err}") from err
    if not isinstance(theta, dict):
        raise SavedOptimizerError(f"{theta_path} does not hold a dict of meta-parameters")
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(theta)[0]:
        where = jax.tree_util.keystr(key_path)
        if not isinstance(leaf, np.ndarray | np.generic) or not np.issubdtype(
            np.asarray(leaf).dtype, np.number
        ):
            raise SavedOptimizerError(f"{theta_path}: entry {where} is not a numeric array")
    return jax.tree_util.tree_map(np.asarray, theta)


def _check_digest(document: dict, data: bytes, theta_path: Path) -> None:
    """Refuses ``data`` unless its SHA-256 is the one ``document`` records; warns when it
    records none (files older than :data:`THETA_HASH_VERSION`)."""
    recorded = document.get("theta_sha256")
    if recorded is None:
        warnings.warn(
            f"{theta_path} cannot be checked for corruption: its {CONFIG_FILE} has format "
            f"version {document['format_version']}, which records no SHA-256 of it (save it "
            f"again with this lopt to record one)",
            stacklevel=3,
        )
        return
    actual = sha256(data)
    if actual != recorded:
        raise SavedOptimizerError(
            f"{theta_path} is corrupt: its SHA-256 is {actual}, but {CONFIG_FILE} records "
            f"{recorded} (the file changed after it was saved); export or save the optimizer "
            "again"
        )


def _unit_params(spec: nfspec.Spec | None) -> PyTree | None:
    """Params of ``spec``'s structure whose every axis has length one."""
    if spec is None:
        return None
    return jax.tree_util.tree_map(
        lambda axes: jax.ShapeDtypeStruct((1,) * len(axes), np.float32),
        spec,
        is_leaf=nfspec.is_axes,
    )


def _check_fits(opt: LearnedOptimizer, theta: PyTree, spec: nfspec.Spec | None, where: Path):
    """Compares theta's entries (names and ranks) with those of a fresh ``init_meta``."""
    # The model's lengths are unknown here, so only the ranks can be compared.
    mismatch = theta_mismatch(opt, theta, _unit_params(spec), ranks_only=True)
    if mismatch is not None:
        raise SavedOptimizerError(
            f"the meta-parameters in {where / THETA_FILE} do not fit an optimizer for this "
            f"model's weight space (was it trained on another architecture?): {mismatch}"
        )


def load_learned_optimizer(
    path: str | os.PathLike, spec: nfspec.Spec | None = None, **extra: Any
) -> tuple[LearnedOptimizer, PyTree]:
    """Loads a saved optimizer as ``(LearnedOptimizer, theta)`` for params with ``spec``.

    Args:
        path: the directory written by :func:`save_optimizer`.
        spec: permutation spec of the params to optimise (required by the learned rules).
        **extra: further keywords for the optimizer's factory, e.g. ``example_params``.

    Raises:
        FileNotFoundError, SavedOptimizerError: see :func:`read_config` and
            :func:`read_theta`; also when ``theta`` does not fit the config, or (files
            before :data:`WEIGHT_SPACE_VERSION`) the ``example_params``, saying why.
        lopt.nf.matching.WeightSpaceMismatch: the model's weight space has another
            structure than the trained one (format 4 on; the message says how).
    """
    config = read_config(path)
    theta = read_theta(path)
    space = read_weight_space(path)
    if space is not None and spec is not None:
        opt = for_model(config, space, spec, **extra)
    else:
        opt = optimizer_from_config(config, spec, **extra)
    _check_fits(opt, theta, spec, Path(path))
    if space is None and spec is not None and "example_params" in extra:
        _check_tree_order(path, opt, theta, extra["example_params"])
    return opt, theta


def _check_tree_order(
    path: str | os.PathLike, opt: LearnedOptimizer, theta: PyTree, params: PyTree
) -> None:
    """Refuses params that ``theta`` of a file without a weight-space structure (before
    :data:`WEIGHT_SPACE_VERSION`) does not fit, saying why such a file may not fit."""
    mismatch = theta_mismatch(opt, theta, params)
    if mismatch is None:
        return
    version = _read_document(path)["format_version"]
    raise SavedOptimizerError(
        f"the optimizer in {path} does not fit these params ({mismatch}). It has format "
        f"version {version}, which does not record the structure of the weight space it was "
        "trained on, so its meta-parameters fit only a model whose params come in the "
        "trained model's tree order (layers named and built in the same order). Load it once "
        "with the spec of the model it was trained on and save it again, as format "
        f"{FORMAT_VERSION}, which fits any layer order: "
        "save_optimizer(path, *load_learned_optimizer(path, trained_spec))"
    )


def load_optimizer(
    path: str | os.PathLike, spec: nfspec.Spec | None = None, num_steps: int | None = None
) -> optax.GradientTransformationExtraArgs:
    """Loads a saved optimizer as an optax transformation for params with ``spec``.

    See :func:`lopt.learned.as_optax` for the transformation's behaviour and ``num_steps``
    (the run's length, needed by a rule that follows the run's progress). For a
    file before :data:`WEIGHT_SPACE_VERSION`, ``init`` refuses params ``theta`` does not
    fit with :class:`SavedOptimizerError`, saying why such a file may not fit.
    """
    opt, theta = load_learned_optimizer(path, spec)
    optimizer = as_optax(opt, theta, num_steps)
    if spec is None or read_weight_space(path) is not None:
        return optimizer

    def init_fn(params: PyTree) -> Any:
        _check_tree_order(path, opt, theta, params)
        return optimizer.init(params)

    return optimizer._replace(init=init_fn)
