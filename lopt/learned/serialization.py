"""Saves and loads learned optimizers: meta-parameters plus a versioned config, no pickle.

A saved optimizer is one directory::

    path/
      config.json     {"format": "lopt.learned_optimizer", "format_version": 4,
                       "name": "unf", "hyperparameters": {...},
                       "weight_space": {...}}
      theta.msgpack   the meta-parameters, a msgpack of nested dicts of numpy arrays

``weight_space`` (format 4 on, learned rules only) is the structure of the weight space the
rule was trained on (:func:`lopt.nf.matching.describe_weight_space`): which ids join which
axes of which tensors, not their names or lengths. Loading needs only this package and the
permutation spec of the params to optimise: the model's tensors are matched to the trained
ones by that structure (:mod:`lopt.learned.transfer`), so the same ``theta`` serves any
model of the same architecture, of any width, whatever its module names or the order in
which its layers were constructed. Files of format 3 have no structure and fit only a model
whose params have the trained tree's order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
import optax

from lopt.learned.base import LearnedOptimizer
from lopt.learned.export import as_optax
from lopt.learned.optimizers import OPTIMIZERS, optimizer_from_config
from lopt.learned.transfer import for_model
from lopt.nf import spec as nfspec
from lopt.nf.matching import describe_weight_space
from lopt.persistence import theta_mismatch, write_atomic

PyTree = Any

FORMAT = "lopt.learned_optimizer"
FORMAT_VERSION = 4
UNF_LAYOUT_VERSION = 3
"""The first format whose UNF layers keep one kernel per shared source and stack leaves
whose axes are the same ids in any order; files of older formats with such layers cannot
be read."""
UNF_BACKBONES = ("unf", "unf_deep", "nfn")
"""Optimizers whose update network has UNF (or NFN) layers."""
CONFIG_FILE = "config.json"
THETA_FILE = "theta.msgpack"


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
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "hyperparameters": config,
    }
    if opt.spec is not None:
        document["weight_space"] = describe_weight_space(opt.spec)
    try:
        config_bytes = json.dumps(document, indent=2, sort_keys=True).encode()
    except TypeError as err:
        raise ValueError(f"the optimizer config is not JSON-serialisable: {err}") from err
    state = jax.tree_util.tree_map(np.asarray, flax.serialization.to_state_dict(theta))
    theta_bytes = flax.serialization.msgpack_serialize(state)
    directory.mkdir(parents=True, exist_ok=True)
    # Owner-only permissions, as saved optimizers have always been written.
    write_atomic(directory / THETA_FILE, theta_bytes, mode=None)
    write_atomic(directory / CONFIG_FILE, config_bytes, mode=None)
    return directory


def read_config(path: str | os.PathLike) -> dict:
    """Reads and checks ``config.json`` of a saved optimizer.

    Returns:
        ``{"name": ..., **hyperparameters}``, the optimizer's ``config``.

    Raises:
        FileNotFoundError: the directory or its config file does not exist.
        SavedOptimizerError: the file is not valid JSON, not a lopt optimizer config, or
            written by a newer format version.
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
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SavedOptimizerError(f"{config_path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise SavedOptimizerError(
            f"{config_path} has format version {version}, newer than the versions this lopt "
            f"reads (up to {FORMAT_VERSION}); upgrade lopt to load it"
        )
    name, hyper = document.get("name"), document.get("hyperparameters", {})
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
    return {"name": name, **hyper}


def read_weight_space(path: str | os.PathLike) -> dict | None:
    """The trained weight space's structure recorded in ``config.json`` (None before format
    4, and for the hand-designed optimizers)."""
    document = json.loads((Path(path) / CONFIG_FILE).read_text())
    space = document.get("weight_space")
    if space is not None and not isinstance(space, dict):
        raise SavedOptimizerError(f"{Path(path) / CONFIG_FILE}: weight_space must be an object")
    return space


def read_theta(path: str | os.PathLike) -> PyTree:
    """Reads ``theta.msgpack`` of a saved optimizer as nested dicts of numpy arrays.

    Raises:
        FileNotFoundError: the file does not exist.
        SavedOptimizerError: the file is not a msgpack of nested dicts of numeric arrays.
    """
    theta_path = Path(path) / THETA_FILE
    if not theta_path.is_file():
        raise FileNotFoundError(f"saved optimizer {Path(path)} has no {THETA_FILE}")
    try:
        theta = flax.serialization.msgpack_restore(theta_path.read_bytes())
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
            :func:`read_theta`; also when ``theta`` does not fit the config.
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
    return opt, theta


def load_optimizer(
    path: str | os.PathLike, spec: nfspec.Spec | None = None
) -> optax.GradientTransformationExtraArgs:
    """Loads a saved optimizer as an optax transformation for params with ``spec``.

    See :func:`lopt.learned.as_optax` for the transformation's behaviour.
    """
    opt, theta = load_learned_optimizer(path, spec)
    return as_optax(opt, theta)
