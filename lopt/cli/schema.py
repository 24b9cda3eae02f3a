"""Structured-config schemas of the command-line tools, registered in Hydra's ConfigStore.

Every option of a config group (``configs/<group>/<option>.yaml``) starts from one of these
dataclasses (its defaults list names ``/schema/<group>/<kind>@_here_``), so Hydra checks
every override against the schema while composing: a misspelt key or a value of the wrong
type is an error before any work starts. The schemas of the tasks, the learned
optimizers and the estimators are built from their factories' signatures
(:func:`options_schema`), the one place their options and defaults are defined, so an
option file only names its schema and sets what differs. Likewise the meta-objective's and
the validation's schemas are built from the library's settings classes
(:func:`settings_schema`), and the run's entries of :class:`TrainConfig` take their defaults
from :class:`lopt.run.RunSettings`.

Groups and their schemas:

==============  ==========================================================================
group           schemas (``_target_`` is the function the options are passed to)
==============  ==========================================================================
``task``        :class:`MLPTask`, :class:`CNNTask`, :class:`RNNTask`, :class:`TransformerTask`,
                their augmented-digits, augmented-letters and tensorflow-datasets variants
``lopt``        :class:`NFOptimizer` (unf, unf_deep, nfn, deepsets), :class:`SGDMOptimizer`,
                :class:`AdamOptimizer`
``estimator``   :class:`PESEstimator`, :class:`TBPTTEstimator`, :class:`ESEstimator`
``outer_opt``   :class:`AdamOuter`, :class:`AdamWOuter`, :class:`SGDOuter`
``logger``      :class:`NoLogger`, :class:`ConsoleLogger`, :class:`WandbLogger`
==============  ==========================================================================

The estimators' sizes come from the top-level :class:`TrainConfig` fields ``population``,
``truncation_length`` and ``sigma`` (by interpolation), so an experiment sets them once for
every estimator and ``-m estimator=pes,tbptt`` sweeps compare like with like.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from lopt import meta
from lopt.evaluation.validation import METRICS, ValidationSettings
from lopt.learned import make_adam, make_nf_optimizer, make_sgdm
from lopt.learned.nf_optimizer import DEFAULTS as NF_DEFAULTS
from lopt.meta.objective import REDUCTIONS, SPLITS, TRANSFORMS, MetaObjective
from lopt.run import RunSettings
from lopt.tasks import task_factory

# -- schemas from factory signatures -------------------------------------------------------


def _field(option: inspect.Parameter) -> tuple[str, Any, dataclasses.Field]:
    """A dataclass field of a factory's option: its type (a sequence as a list, the kind a
    structured config holds) and default (``MISSING`` when the factory has none)."""
    kind = Any if option.annotation is inspect.Parameter.empty else option.annotation
    default = MISSING if option.default is inspect.Parameter.empty else option.default
    if typing.get_origin(kind) in (Sequence, list, tuple) or isinstance(default, tuple | list):
        kind = list[typing.get_args(kind)[0]] if typing.get_args(kind) else list
        return option.name, kind, field(default_factory=lambda: list(default))
    return option.name, kind, field(default=default)


def options_schema(
    class_name: str,
    factory: Callable[..., Any],
    reference: str,
    *,
    target: str | None = None,
    name: str | None = None,
    exclude: Sequence[str] = (),
    extra: Sequence[tuple[str, Any, dataclasses.Field]] = (),
) -> type:
    """The structured config of ``factory``'s options, with their types and defaults.

    Args:
        class_name: the dataclass's name.
        factory: the function whose parameters are the options.
        reference: the factory's public dotted name (its docs say it).
        target: the ``_target_`` the options are passed to (``reference`` if None).
        name: a ``name`` field's default, for a target that builds by name.
        exclude: parameters that are no options (set by the caller, not by a config).
        extra: fields after the options, for what the caller handles itself.

    Returns:
        A dataclass: ``_target_``, ``name`` if given, then the options in signature order.
    """
    options = inspect.signature(factory, eval_str=True).parameters.values()
    fields = [("_target_", str, field(default=target or reference))]
    if name is not None:
        fields.append(("name", str, field(default=name)))
    fields += [_field(option) for option in options if option.name not in exclude]
    fields += list(extra)
    schema = dataclasses.make_dataclass(class_name, fields)
    schema.__module__ = __name__
    summary = (inspect.getdoc(factory) or "").split("\n")[0].rstrip(".")
    schema.__doc__ = f"{summary} (:func:`{reference}`)."
    return schema


def settings_schema(
    class_name: str,
    settings: type,
    *,
    leading: Sequence[tuple[str, Any, dataclasses.Field]] = (),
    replace: dict[str, tuple[Any, dataclasses.Field]] | None = None,
    rename: dict[str, str] | None = None,
    doc: str | None = None,
) -> type:
    """The structured config of a library settings class (a dataclass or a named tuple),
    from its constructor's parameters.

    The settings class is the one place the settings and their defaults are defined; the
    config adds what only a config has and changes what a config says differently.

    Args:
        class_name: the dataclass's name.
        settings: the settings class; its constructor's parameters are the fields.
        leading: fields the config has before the settings' own.
        replace: ``{name: (type, field)}`` for a setting whose config type or default
            differs (an enum of its choices, ``None`` for a default filled in later).
        rename: ``{name: config name}`` for a setting the config states in other units,
            under a name that says so (its ``replace`` entry, by the setting's name, gives
            the config's type and default).
        doc: the dataclass's docstring.

    Returns:
        A dataclass: ``leading``, then the settings in signature order.
    """
    replace, rename = replace or {}, rename or {}
    unknown = (set(replace) | set(rename)) - set(inspect.signature(settings).parameters)
    if unknown:
        raise TypeError(f"{settings.__name__} has no settings {sorted(unknown)}")
    # A named tuple's constructor does not resolve its string annotations; the class does.
    hints = typing.get_type_hints(settings)
    fields = list(leading)
    for option in inspect.signature(settings, eval_str=True).parameters.values():
        option = option.replace(annotation=hints.get(option.name, option.annotation))
        name, kind, default = (
            (option.name, *replace[option.name]) if option.name in replace else _field(option)
        )
        fields.append((rename.get(name, name), kind, default))
    schema = dataclasses.make_dataclass(class_name, fields)
    schema.__module__ = __name__
    if doc is not None:
        schema.__doc__ = doc
    return schema


def choices_enum(class_name: str, choices: Sequence[str], doc: str) -> type[enum.Enum]:
    """An enum of a setting's string choices (each member's name is its value), so that
    Hydra refuses any other value while composing."""
    kind = enum.Enum(class_name, [(choice, choice) for choice in choices], module=__name__)
    kind.__doc__ = doc
    return kind


def task_schema(class_name: str, task: str) -> type:
    """The structured config of the task ``task``: ``_target_`` (``lopt.tasks.<task>``) and
    its factory's keyword options, with their types and defaults.

    The factory's signature (:func:`lopt.tasks.task_factory`) is the one place a task's
    options and defaults are defined; the config files of the ``task`` group only name the
    schema. Every task also takes ``param_scale`` (null: none;
    :func:`lopt.tasks.with_param_scale`).
    """
    return options_schema(
        class_name,
        task_factory(task),
        f"lopt.tasks.{task}",
        extra=(("param_scale", float | None, field(default=None)),),
    )


def learned_schema(class_name: str, factory: Callable[..., Any], name: str) -> type:
    """The structured config of a learned optimizer built by name
    (:func:`lopt.learned.make_optimizer`) from ``factory``'s keyword options; the
    permutation spec and example params come from the task, not from a config."""
    return options_schema(
        class_name,
        factory,
        f"lopt.learned.{factory.__name__}",
        target="lopt.learned.make_optimizer",
        name=name,
        exclude=("backbone", "spec", "example_params"),
    )


# -- task -------------------------------------------------------------------------------

MLPAugmentedTask = task_schema("MLPAugmentedTask", "mlp_augmented_digits")
CNNAugmentedTask = task_schema("CNNAugmentedTask", "cnn_augmented_digits")
MLPLettersTask = task_schema("MLPLettersTask", "mlp_augmented_letters")
CNNLettersTask = task_schema("CNNLettersTask", "cnn_augmented_letters")
MLPTask = task_schema("MLPTask", "mlp_digits")
MLPFashionTask = task_schema("MLPFashionTask", "mlp_fashion_mnist")
CNNTask = task_schema("CNNTask", "cnn_digits")
CNNCifarTask = task_schema("CNNCifarTask", "cnn_cifar10")
RNNTask = task_schema("RNNTask", "rnn_text")
RNNLM1BTask = task_schema("RNNLM1BTask", "rnn_lm1b")
TransformerTask = task_schema("TransformerTask", "transformer_text")
TransformerLM1BTask = task_schema("TransformerLM1BTask", "transformer_lm1b")

# -- learned optimizer --------------------------------------------------------------------

NFOptimizer = learned_schema("NFOptimizer", make_nf_optimizer, "unf")
"""Its ``name`` is the backbone (unf, unf_deep, nfn, deepsets)."""
SGDMOptimizer = learned_schema("SGDMOptimizer", make_sgdm, "sgdm")
AdamOptimizer = learned_schema("AdamOptimizer", make_adam, "adam")

# -- meta-gradient estimator --------------------------------------------------------------

PESEstimator = options_schema("PESEstimator", meta.pes, "lopt.meta.pes")
TBPTTEstimator = options_schema("TBPTTEstimator", meta.tbptt, "lopt.meta.tbptt")
ESEstimator = options_schema("ESEstimator", meta.full_es, "lopt.meta.full_es")


# -- outer optimizer ------------------------------------------------------------------------


@dataclass
class OuterOptimizer:
    """What every outer optimizer takes: an optax optimizer ``name`` on theta after
    global-norm clipping, with linear warmup (:func:`lopt.cli.common.outer_optimizer`)."""

    _target_: str = "lopt.cli.common.outer_optimizer"
    name: str = MISSING
    learning_rate: float = MISSING
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    scalar_learning_rate: float | None = None


@dataclass
class AdamOuter(OuterOptimizer):
    """Adam on theta after global-norm clipping, with linear warmup."""

    name: str = "adam"
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8


@dataclass
class AdamWOuter(AdamOuter):
    """AdamW (decoupled weight decay) on theta."""

    name: str = "adamw"
    weight_decay: float = 1e-4


@dataclass
class SGDOuter(OuterOptimizer):
    """(Momentum) SGD on theta after global-norm clipping, with linear warmup."""

    name: str = "sgd"
    learning_rate: float = 1e-2
    momentum: float | None = 0.9
    nesterov: bool = False


# -- logger -----------------------------------------------------------------------------------


@dataclass
class NoLogger:
    """Metrics only in the run directory's files."""

    _target_: str = "lopt.loggers.null_logger"


@dataclass
class ConsoleLogger:
    """One line of metrics on the console per log interval."""

    _target_: str = "lopt.loggers.console_logger"


@dataclass
class WandbLogger:
    """Weights & Biases; offline unless ``mode`` or ``WANDB_MODE`` says otherwise."""

    _target_: str = "lopt.loggers.wandb_logger"
    project: str = "lopt"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str | None = None
    log_optimizer: bool = True


# -- the whole run ------------------------------------------------------------------------------


Split = choices_enum("Split", SPLITS, "Data the per-step meta-objective is measured on.")
Reduction = choices_enum("Reduction", REDUCTIONS, "How per-step values form an unroll's objective.")
Transform = choices_enum("Transform", TRANSFORMS, "Shaping of each per-step loss.")

ObjectiveConfig = settings_schema(
    "ObjectiveConfig",
    MetaObjective,
    replace={
        "split": (Split, field(default=Split.train)),
        "reduction": (Reduction, field(default=Reduction.mean)),
        "transform": (Transform, field(default=Transform.none)),
        # A bound in units of the task's chance-level loss suits every task alike.
        "max_loss": (float | None, field(default=10.0)),
    },
    rename={"max_loss": "max_loss_factor"},
    doc="""The meta-objective: the fields and defaults of :class:`lopt.meta.MetaObjective`,
its divergence bound given as ``max_loss_factor``, in units of the task's chance-level loss
``ln(classes)`` (null: only non-finite losses count as divergence).""",
)

ValidationMetric = choices_enum(
    "ValidationMetric",
    METRICS,
    "What selects the best theta (:meth:`lopt.evaluation.validation.ValidationScores.score`).",
)

ValidationConfig = settings_schema(
    "ValidationConfig",
    ValidationSettings,
    leading=(("every", int, field(default=100)),),
    replace={
        "num_steps": (int | None, field(default=None)),
        "metric": (ValidationMetric, field(default=ValidationMetric.final_loss)),
    },
    doc="""Meta-validation: the fields and defaults of
:class:`lopt.evaluation.validation.ValidationSettings`, and ``every``. Whole inner episodes
from held-out seeds, scored every ``every`` outer steps and at the end; ``every: 0`` turns
it off. ``num_steps: null`` validates at the meta-training horizon
(``schedule.max_length``).""",
)


@dataclass
class ScheduleConfig:
    """Inner-episode lengths: log-uniform on ``[min_length, max_length]``; constant when
    the two are equal."""

    min_length: int = 100
    max_length: int = 1000


@dataclass
class CompilationCacheConfig:
    """JAX's persistent compilation cache: a second run of the same programs loads them
    instead of compiling. ``dir: null`` means ``$JAX_COMPILATION_CACHE_DIR`` if set, else
    ``~/.cache/lopt/jax``."""

    enabled: bool = True
    dir: str | None = None


@dataclass
class ReferenceCacheConfig:
    """Validation's tuned reference Adam shared between runs of the same task, validation
    settings and committed code (the optimizers of one task, a sweep): ``dir: null`` means
    ``$LOPT_REFERENCE_CACHE_DIR`` if set, else ``~/.cache/lopt/references``."""

    enabled: bool = True
    dir: str | None = None


@dataclass
class DistributedConfig:
    """How a process joins a multi-process run (:func:`lopt.distributed.settings_from`):
    null entries come from ``$JAX_COORDINATOR_ADDRESS``, ``$JAX_NUM_PROCESSES`` and
    ``$JAX_PROCESS_ID``, or JAX's detection on SLURM and TPU pods."""

    enabled: Any = "auto"  # auto, true or false
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


@dataclass
class RecipeConfig:
    """How a learned rule starts (the ``recipe`` group's ``recipe`` node; the ``unf``,
    ``unf_deep``, ``nfn`` and ``deepsets`` options read it): see
    :func:`lopt.learned.make_nf_optimizer`."""

    base: str = NF_DEFAULTS["base"]
    alpha: float = NF_DEFAULTS["alpha"]
    beta: float = NF_DEFAULTS["beta"]
    gamma0: float = NF_DEFAULTS["gamma0"]
    zero_output: bool = NF_DEFAULTS["zero_output"]


RUN_DEFAULTS = RunSettings()
"""The library's run settings, whose defaults the run entries of :class:`TrainConfig` take."""


@dataclass
class TrainConfig:
    """The ``lopt-train`` config (``configs/train.yaml``).

    Attributes:
        task, lopt, estimator, outer_opt, logger: the config groups.
        task_family: further tasks meta-trained beside ``task``, each a mapping of task
            options over ``task``'s (e.g. ``[{width: 16}, {width: 64}]``); each member runs
            its own population of the estimator's size, and validation stays on ``task``.
        objective: the meta-objective; ``max_loss_factor`` sets its divergence bound in
            units of the task's chance-level loss ``ln(classes)`` (null: only non-finite
            losses count as divergence).
        schedule: inner-episode lengths.
        validation: meta-validation of theta during the run.
        recipe: the learned rules' initial base, step size, scale, momentum and last layer
            (set by the ``recipe`` group: ``tuned``, the default, or ``paper``).
        compilation_cache: JAX's persistent compilation cache (on by default).
        reference_cache: the validation's shared tuned reference Adams (on by default).
        devices: devices the particle groups are split over: a count, or ``"all"`` (of all
            processes).
        mesh_axis: the name of the mesh axis they are split along.
        distributed: joining other processes (hosts) through ``jax.distributed``.
        start_at_tuned: start theta's step size at its base optimizer's learning rate tuned
            by a sweep on the validation runs (Adam's for the ``adam`` base, SGDM's for
            ``sgdm``), so meta-training starts from the tuned baseline.
        population: inner runs per meta-gradient estimate (antithetic estimators use
            ``population / 2`` pairs).
        truncation_length: inner steps per estimate (truncated estimators).
        sigma: perturbation standard deviation (evolution strategies).
        name: run name (output directory, wandb run name).
        seed: seed of theta's initialisation and of every particle.
        steps: outer steps to reach (a resumed run continues up to this count).
        log_every: outer steps between metric records.
        checkpoint_every: outer steps between checkpoints (0: only the final one).
        keep_checkpoints: most recent checkpoints kept.
        resume: continue from the latest checkpoint in the run directory.
        progress: show a progress bar.
    """

    task: Any = MISSING
    task_family: list[Any] = field(default_factory=list)
    lopt: Any = MISSING
    estimator: Any = MISSING
    outer_opt: Any = MISSING
    logger: Any = MISSING
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    compilation_cache: CompilationCacheConfig = field(default_factory=CompilationCacheConfig)
    reference_cache: ReferenceCacheConfig = field(default_factory=ReferenceCacheConfig)
    start_at_tuned: bool = RUN_DEFAULTS.start_at_tuned
    devices: Any = RUN_DEFAULTS.devices  # a count, or "all"
    mesh_axis: str = RUN_DEFAULTS.mesh_axis
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    population: int = 16
    truncation_length: int = 50
    sigma: float = 0.01
    name: str = RUN_DEFAULTS.name
    seed: int = RUN_DEFAULTS.seed
    steps: int = RUN_DEFAULTS.steps
    log_every: int = RUN_DEFAULTS.log_every
    checkpoint_every: int = RUN_DEFAULTS.checkpoint_every
    keep_checkpoints: int = RUN_DEFAULTS.keep_checkpoints
    resume: bool = RUN_DEFAULTS.resume
    progress: bool = RUN_DEFAULTS.progress


def _pairs(population: Any) -> int:
    population = int(population)
    if population < 2 or population % 2:
        raise ValueError(
            f"population must be an even number >= 2 for antithetic estimators, got {population}"
        )
    return population // 2


SCHEMAS: dict[str, dict[str, type]] = {
    "task": {
        "mlp": MLPTask,
        "mlp_augmented": MLPAugmentedTask,
        "cnn_augmented": CNNAugmentedTask,
        "mlp_letters": MLPLettersTask,
        "cnn_letters": CNNLettersTask,
        "mlp_tfds": MLPFashionTask,
        "cnn": CNNTask,
        "cnn_tfds": CNNCifarTask,
        "rnn": RNNTask,
        "rnn_tfds": RNNLM1BTask,
        "transformer": TransformerTask,
        "transformer_tfds": TransformerLM1BTask,
    },
    "lopt": {"nf": NFOptimizer, "sgdm": SGDMOptimizer, "adam": AdamOptimizer},
    "estimator": {"pes": PESEstimator, "tbptt": TBPTTEstimator, "es": ESEstimator},
    "outer_opt": {"adam": AdamOuter, "adamw": AdamWOuter, "sgd": SGDOuter},
    "logger": {"none": NoLogger, "console": ConsoleLogger, "wandb": WandbLogger},
}
"""Schema of each config group, by kind: ``/schema/<group>/<kind>`` in the ConfigStore."""


def unknown_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Dotted keys of a composed config that its schema dataclasses do not define.

    Hydra's ``+key=value`` adds a key even to a structured config; such a key would be
    recorded in the run's config and silently ignored, so the tools reject it.
    """
    from omegaconf import DictConfig

    if not isinstance(cfg, DictConfig):
        return []
    schema = OmegaConf.get_type(cfg)
    fields = (
        {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    )
    found = []
    for key in cfg:
        where = f"{prefix}{key}"
        if fields is not None and key not in fields:
            found.append(where)
        elif fields is not None or schema is dict:
            found.extend(unknown_keys(cfg._get_node(key), f"{where}."))
    return found


def register_configs() -> None:
    """Registers every schema (and the ``pairs`` resolver) with Hydra; idempotent.

    ``lopt-train`` calls it before Hydra composes; a program composing the ``train`` config
    itself (``hydra.compose``) calls it first.
    """
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, kinds in SCHEMAS.items():
        for kind, node in kinds.items():
            store.store(group=f"schema/{group}", name=kind, node=node)
    if not OmegaConf.has_resolver("pairs"):
        OmegaConf.register_new_resolver("pairs", _pairs)
