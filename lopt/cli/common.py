"""Helpers shared by the command-line tools: building a run's parts from a composed config."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra.utils
import jax
import optax
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lopt.cli import rundir
from lopt.meta import EpisodeSchedule, as_objective, constant_length, log_uniform_length
from lopt.meta.outer import clip_by_global_norm, linear_warmup
from lopt.persistence import config_differences as config_differences  # the tools import
from lopt.persistence import write_json as write_json  # them from here
from lopt.persistence import write_text as write_text
from lopt.provenance import environment
from lopt.run import RunError as RunError  # the tools import it from here
from lopt.run import RunParts
from lopt.tasks import with_param_scale

OUTER_OPTIMIZERS = ("adam", "adamw", "sgd")


def outer_optimizer(
    name: str,
    learning_rate: float,
    warmup_steps: int = 0,
    max_grad_norm: float = 1.0,
    scalar_learning_rate: float | None = None,
    **hyper: Any,
) -> optax.GradientTransformation:
    """An optax optimizer for theta: global-norm clipping, then ``optax.<name>`` with a linear
    learning-rate warmup.

    Args:
        name: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        learning_rate: peak learning rate.
        warmup_steps: outer steps over which the rate ramps up linearly, starting at
            ``learning_rate / warmup_steps`` (0: no warmup).
        max_grad_norm: global-norm clipping threshold of the meta-gradient.
        scalar_learning_rate: peak learning rate of the scalar meta-parameters (every entry
            of theta but its ``network``: step size, scale, momentum), which an outer
            optimizer like Adam otherwise moves no faster than each of the network's many
            weights; ``None``: ``learning_rate``.
        **hyper: further keywords of the optax optimizer (``b1``, ``momentum``, ...).

    Returns:
        The transformation. With ``name="adam"`` and default ``hyper`` it equals
        :func:`lopt.meta.default_outer_optimizer`.
    """
    if name not in OUTER_OPTIMIZERS:
        raise ValueError(f"unknown outer optimizer {name!r}; expected one of {OUTER_OPTIMIZERS}")
    for key, value in (
        ("learning_rate", learning_rate),
        ("scalar_learning_rate", scalar_learning_rate),
    ):
        if value is not None and not value > 0:
            raise ValueError(f"outer_opt.{key} must be positive, got {value}")
    if warmup_steps < 0:
        raise ValueError(f"outer_opt.warmup_steps must be >= 0, got {warmup_steps}")

    def optimizer(peak: float) -> optax.GradientTransformation:
        return getattr(optax, name)(linear_warmup(peak, warmup_steps), **hyper)

    if scalar_learning_rate is None:
        return optax.chain(clip_by_global_norm(max_grad_norm), optimizer(learning_rate))
    split = optax.multi_transform(
        {"network": optimizer(learning_rate), "scalars": optimizer(scalar_learning_rate)},
        meta_parameter_groups,
    )
    return optax.chain(clip_by_global_norm(max_grad_norm), split)


def meta_parameter_groups(theta: Any) -> Any:
    """``"network"`` on the leaves of ``theta["network"]``, ``"scalars"`` on every other."""
    return {
        key: jax.tree.map(lambda _, k=key: "network" if k == "network" else "scalars", value)
        for key, value in theta.items()
    }


DEFAULT_CACHE_DIR = "~/.cache/lopt/jax"


def enable_compilation_cache(options: Mapping[str, Any]) -> Path | None:
    """Turns on JAX's persistent compilation cache as ``{"enabled", "dir"}`` says.

    Returns:
        The cache directory, or None when switched off.
    """
    if not options.get("enabled", True):
        return None
    directory = options.get("dir") or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    path = Path(directory or DEFAULT_CACHE_DIR).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Cache every program that took a noticeable time to build; small ones are cheaper to
    # compile than to look up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


DEFAULT_REFERENCE_CACHE_DIR = "~/.cache/lopt/references"
REFERENCE_CACHE_ENV = "LOPT_REFERENCE_CACHE_DIR"


def reference_cache_dir(options: Mapping[str, Any]) -> Path | None:
    """The directory of shared reference Adams as ``{"enabled", "dir"}`` says (None: off);
    ``dir: null`` is ``$LOPT_REFERENCE_CACHE_DIR`` if set, else ``~/.cache/lopt/references``."""
    if not options.get("enabled", True):
        return None
    directory = options.get("dir") or os.environ.get(REFERENCE_CACHE_ENV)
    return Path(directory or DEFAULT_REFERENCE_CACHE_DIR).expanduser()


def run_in_output_dir(
    tool: str,
    run: Callable[[DictConfig, Path], Any],
    cfg: DictConfig,
    errors: tuple[type[Exception], ...] = (ValueError,),
) -> Any:
    """Runs a Hydra app's ``run(cfg, run_dir)`` in the job's output directory.

    The JAX compilation cache is enabled as ``cfg.compilation_cache`` says; an error of one
    of the ``errors`` types is bad input, printed as ``<tool>: error: <message>`` before
    exiting with status 1, with no traceback. The run directory gets ``.hydra/`` and the log
    when ``run`` returns (or calls :func:`lopt.cli.rundir.accept` itself); a run that raises
    before that leaves it as it was (:func:`lopt.cli.rundir.run_directory`).

    Returns:
        What ``run`` returns.
    """
    logging.getLogger("jax").setLevel(logging.WARNING)  # backend-probing noise
    enable_compilation_cache(cfg.compilation_cache)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with rundir.run_directory(run_dir, cfg):
            return run(cfg, run_dir)
    except errors as err:
        print(f"{tool}: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def run_relative(path: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """``path`` relative to ``run_dir`` (with ``..`` where needed), as a run's files record
    it: they then hold no absolute path of the machine that wrote them, and stay right
    when the run directory moves together with what it refers to."""
    return os.path.relpath(Path(path).absolute(), Path(run_dir).absolute())


def start_context() -> dict[str, Any]:
    """What a run is measured on, taken as it starts: jax, device, source commit, CPU count
    and the 1-minute load average (above the CPU count, other work shares the machine)."""
    return environment() | {"cpus": os.cpu_count(), "load_average_start": _load()}


def finish_context(context: dict[str, Any]) -> dict[str, Any]:
    """``context`` with the load average at the end of the run added."""
    return context | {"load_average_end": _load()}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def schedule_from(config: Mapping[str, Any]) -> EpisodeSchedule:
    """The episode schedule of ``{"min_length", "max_length"}`` (constant when equal)."""
    lo, hi = int(config["min_length"]), int(config["max_length"])
    if lo == hi:
        return constant_length(lo)
    return log_uniform_length(lo, hi)


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain JSON-serialisable dicts (enums as strings)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True, throw_on_missing=True)


def _build(section: str, config: Mapping[str, Any], /, **extra: Any) -> Any:
    try:
        # Partial first: extra arguments (a permutation spec, ...) must not pass through
        # OmegaConf, which only holds primitive values.
        factory = hydra.utils.instantiate(config, _partial_=True, _convert_="all")
        return factory(**extra)
    except Exception as err:
        # instantiate wraps the factory's exception; report the innermost cause.
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        options = {k: v for k, v in config.items() if k != "_target_"}
        raise RunError(
            f"cannot build {section} from {options}: {type(cause).__name__}: {cause}"
        ) from err


def build_task(config: Mapping[str, Any]) -> Any:
    """The task of a resolved ``task`` config; its ``param_scale`` (every task has it; null:
    none) reparametrises it (:func:`lopt.tasks.with_param_scale`)."""
    options = dict(config)
    scale = options.pop("param_scale", None)
    task = _build("task", options)
    if scale is None:
        return task
    try:
        return with_param_scale(task, scale)
    except ValueError as err:
        raise RunError(f"invalid task option: {err}") from err


def build_logger(config: Mapping[str, Any], /, **context: Any) -> Any:
    """The :class:`lopt.loggers.Logger` of a resolved ``logger`` config, given the run's
    context (``run_dir``, ``run_config``, ``name``, ``resume``)."""
    return _build("logger", config, **context)


def build_parts(config: Mapping[str, Any]) -> RunParts:
    """Builds every part of a run from its resolved config (see :func:`to_container`).

    Raises:
        RunError: a part rejects its options; the message names the part and the cause.
    """
    task = build_task(config["task"])
    opt = _build("lopt", config["lopt"], spec=task.spec)
    estimator = _build("estimator", config["estimator"])
    outer = _build("outer_opt", config["outer_opt"])
    try:
        schedule = schedule_from(config["schedule"])
    except ValueError as err:
        raise RunError(f"invalid schedule {config['schedule']}: {err}") from err
    objective_config = dict(config["objective"])
    factor = objective_config.pop("max_loss_factor", None)
    if factor is not None:
        if not factor > 0:
            raise RunError(f"objective.max_loss_factor must be positive or null, got {factor}")
        objective_config["max_loss"] = float(factor) * task.chance_loss
    try:
        objective = as_objective(objective_config)
    except (TypeError, ValueError) as err:
        raise RunError(f"invalid objective {config['objective']}: {err}") from err
    return RunParts(task, opt, estimator, outer, schedule, objective, family_members(config))


def family_members(config: Mapping[str, Any]) -> tuple:
    """The tasks of ``task_family``: each entry's options over the ``task`` config's.

    Raises:
        RunError: an entry that is not a mapping of task options, or a task that cannot be
            built from them.
    """
    members = []
    for index, entry in enumerate(config.get("task_family") or ()):
        if not isinstance(entry, Mapping) or not entry:
            raise RunError(
                f"task_family[{index}] must be a mapping of task options (e.g. {{width: 64}}), "
                f"got {entry!r}"
            )
        members.append(build_task({**config["task"], **entry}))
    return tuple(members)
