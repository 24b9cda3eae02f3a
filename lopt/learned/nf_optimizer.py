"""The UNF paper's learned update rule: momentum SGD plus a learned equivariant correction.

For every tensor ``W`` of the optimised network, with gradient ``g``, the update is a base
direction ``d`` plus the network's correction::

    W ← W − α (d + β f_θ(features, t))

Two bases (``base``):

* ``"sgdm"`` (the UNF paper's): ``d = m``, ``m ← γ0 m + g``; with ``β f = 0`` this *is*
  momentum SGD.
* ``"adam"``: ``d`` is Adam's bias-corrected, normalised direction with first-moment decay
  ``γ0`` and second-moment decay ``b2``; with ``β f = 0`` this *is* Adam with learning rate
  ``α``. ``f`` then acts on the normalised scale, where one ``β`` suits every tensor and
  task (the UNF authors' released code has such an RMS-normalised variant; Celo normalises
  its network's output too).

``zero_output`` starts the network's last layer at zero, so the initial ``θ`` is exactly the
base optimizer and meta-training only has to learn the correction.

Three options bound what the rule can do beyond its meta-training runs (both off by default,
the paper's rule):

* ``time="none"`` feeds the network no step count (8 channels instead of 19), so it is the
  same function at every step of a run of any length (Celo2 takes its schedule from outside
  the same way).
* ``time="fraction"`` feeds it the fraction of the run done instead of the step count
  (Celo's choice): ``init`` then takes the run's length, ``num_steps``, as a schedule does,
  and a run twice as long sees the same inputs at the same fraction.
* ``schedule="warmup_cosine"`` multiplies the step size ``α`` by the warmup-cosine factor
  of :func:`lopt.learned.baselines.warmup_cosine_factor` over the run (Celo2's schedule from
  outside): with ``base="adam"`` and ``β f = 0`` the rule *is* Adam with warmup-cosine, and
  ``init`` takes the run's length, ``num_steps``, as for ``time="fraction"``.
* ``normalize_output=True`` divides ``f`` per tensor by its root mean square, so the learned
  term is ``β`` times a unit-RMS direction on every tensor, whatever the network outputs
  (Celo2's normalisation); an all-zero ``f`` (the ``zero_output`` start) stays zero.

``f_θ`` is a neural functional over the whole weight space (:mod:`lopt.nf`) reading the
19 feature channels of :mod:`lopt.learned.features`. ``α``, ``β`` and ``γ0`` are
meta-parameters next to the network's weights. The momentum follows optax's convention
(``optax.sgd(learning_rate=α, momentum=γ0)`` accumulates ``m ← g + γ0 m`` and steps by
``−α m``), so with ``β f = 0`` the rule *is* momentum SGD, a safe starting point.

Backbones (``f_θ``), all ``NeuralFunctional`` networks with ``hidden`` channels:

* ``unf``: ``depth`` per-parameter layers, then one UNF layer with one output channel
  (the paper's network).
* ``unf_deep``: ``depth`` UNF layers of width ``hidden``, then one with one channel.
* ``nfn``: as ``unf`` with NFN's final layer (conv spatial axes become channels).
* ``deepsets``: ``depth`` per-parameter layers, then a per-parameter output layer.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.learned import features as feats
from lopt.learned.base import (
    LearnedOptimizer,
    check_like,
    check_non_negative,
    check_unit,
    log_positive,
    logit_unit,
    require_params,
    validate_params,
    zero_count,
)
from lopt.learned.baselines import COSINE_DEFAULTS, warmup_cosine_factor
from lopt.nf import spec as nfspec
from lopt.nf.layers import NeuralFunctional

PyTree = Any

BACKBONES = ("unf", "unf_deep", "nfn", "deepsets")
BASES = ("sgdm", "adam")
SCHEDULES = ("constant", "warmup_cosine")
"""What multiplies the step size ``α`` over a run: nothing, or a warmup-cosine factor."""

DEFAULTS = {
    "hidden": 32,
    "depth": 3,
    "clip": feats.DEFAULT_CLIP,
    "alpha": 0.1,
    "beta": 0.001,
    "gamma0": 0.9,
    "base": "sgdm",
    "b2": 0.999,
    "eps": 1e-8,
    "zero_output": False,
    "time": "absolute",
    "normalize_output": False,
    "schedule": "constant",
    "warmup_fraction": COSINE_DEFAULTS["warmup_fraction"],
}

OUTPUT_RMS_EPS = 1e-30
"""Added to the mean square of ``f`` before the root: an all-zero output stays zero."""


class NFOptState(NamedTuple):
    """Inner state of the learned update rule.

    Attributes:
        count: int32 scalar, the number of updates applied.
        momentum: ``m`` (accumulated with the learned ``γ0``), one tensor per parameter.
        feature_momenta: the EMA momenta fed to the network, ``(*shape, 6)`` per parameter.
        second_moment: the ``adam`` base's EMA of squared gradients (``None`` for ``sgdm``).
        num_steps: int32 scalar, the run's length, for ``time="fraction"`` or a schedule
            (else ``None``).
    """

    count: jax.Array
    momentum: PyTree
    feature_momenta: PyTree
    second_moment: PyTree = None
    num_steps: jax.Array | None = None


def build_network(backbone: str, spec: nfspec.Spec, hidden: int, depth: int) -> NeuralFunctional:
    """The neural functional ``f_θ`` of a backbone (one output channel)."""
    hidden_layers = (hidden,) * depth
    if backbone == "unf":
        return NeuralFunctional(spec, pointwise=hidden_layers, equivariant=(1,))
    if backbone == "unf_deep":
        return NeuralFunctional(spec, equivariant=(*hidden_layers, 1))
    if backbone == "nfn":
        return NeuralFunctional(spec, pointwise=hidden_layers, equivariant=(1,), kind="nfn")
    if backbone == "deepsets":
        return NeuralFunctional(spec, pointwise=(*hidden_layers, 1))
    raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")


def _shape_free(backbone: str, perm_id: Any) -> bool:
    """Whether the network's parameter shapes ignore the length of an axis with this id."""
    if backbone == "deepsets":
        return True
    if perm_id is None:
        return False
    return not (backbone == "nfn" and isinstance(perm_id, nfspec.Spatial))


def init_features(
    backbone: str, spec: nfspec.Spec, params: PyTree | None, channels: int = feats.NUM_FEATURES
) -> PyTree:
    """The smallest feature tree that gives the network its full parameter shapes.

    Axes whose length the parameter shapes ignore get length one; the others take their
    length from ``params``.

    Raises:
        ValueError: when ``params`` is missing but an axis length matters.
    """
    leaves = nfspec.spec_leaves_with_paths(spec)
    if params is not None:
        nfspec.validate(spec, params)
        shapes = [tuple(jnp.shape(t)) for _, t in nfspec.tree_leaves_with_paths(params)]
    else:
        shapes = [None] * len(leaves)
    small = []
    for (path, axes), shape in zip(leaves, shapes, strict=True):
        dims = []
        for position, perm_id in enumerate(axes):
            if _shape_free(backbone, perm_id):
                dims.append(1)
            elif shape is None:
                raise ValueError(
                    f"init_meta needs example params for the {backbone!r} network: axis "
                    f"{position} of {path} ({perm_id!r}) is folded into channels, so the "
                    "network's size depends on its length; pass params=... to init_meta "
                    "or example_params=... to make_optimizer"
                )
            else:
                dims.append(shape[position])
        small.append(jnp.zeros((*dims, channels), jnp.float32))
    treedef = jax.tree_util.tree_structure(spec, is_leaf=nfspec.is_axes)
    return jax.tree_util.tree_unflatten(treedef, small)


def zero_last_layer(network_params: PyTree) -> PyTree:
    """The network's parameters with its last layer (highest ``*_<index>`` name) zeroed."""
    last = max(network_params, key=lambda name: int(name.rsplit("_", 1)[1]))
    zeroed = jax.tree_util.tree_map(jnp.zeros_like, network_params[last])
    return {**network_params, last: zeroed}


def meta_parameters(theta: PyTree) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(α, β, γ0)`` from their stored forms in ``theta``."""
    alpha = jnp.exp(theta["log_alpha"])
    beta = jnp.exp(theta["log_beta"])
    gamma0 = jax.nn.sigmoid(theta["logit_gamma0"])
    return alpha, beta, gamma0


def initial_meta_parameters(alpha: float, beta: float, gamma0: float) -> dict[str, jax.Array]:
    """The stored forms of ``(α, β, γ0)``; inverse of :func:`meta_parameters`."""
    return {
        "log_alpha": log_positive(alpha, "alpha"),
        "log_beta": log_positive(beta, "beta"),
        "logit_gamma0": logit_unit(gamma0, "gamma0"),
    }


def check_network_options(
    backbone: str, spec: nfspec.Spec, hidden: int, depth: int, example_params: PyTree | None
) -> None:
    """Raises a ValueError naming the first invalid option of the network ``f_θ``."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")
    if spec is None:
        raise ValueError(f"the {backbone!r} optimizer needs the permutation spec of the params")
    nfspec.validate(spec)
    if example_params is not None:
        nfspec.validate(spec, example_params)
    for name, value in (("hidden", hidden), ("depth", depth)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def needs_run_length(time: str, schedule: str | None = "constant") -> bool:
    """Whether a rule with these ``time`` and ``schedule`` options must be told the run's
    length at ``init`` (it reads the fraction of the run done, or scales ``α`` over it); a
    saved config from before schedules records none (``None``: constant)."""
    return time == "fraction" or schedule not in (None, "constant")


def check_rule_options(
    clip: float,
    base: str,
    b2: float,
    eps: float,
    time: str = "absolute",
    schedule: str = "constant",
    warmup_fraction: float = COSINE_DEFAULTS["warmup_fraction"],
) -> None:
    """Raises a ValueError naming the first invalid fixed option of the update rule."""
    feats.num_features(time)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if not (isinstance(warmup_fraction, (int, float)) and 0 <= warmup_fraction < 1):
        raise ValueError(f"warmup_fraction must lie in [0, 1), got {warmup_fraction!r}")
    if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a positive finite number, got {clip!r}")
    if base not in BASES:
        raise ValueError(f"unknown base {base!r}; expected one of {BASES}")
    check_unit(b2, "b2")
    check_non_negative(eps, "eps")


def adam_direction(
    state: NFOptState, grads: PyTree, gamma0: jax.Array, b2: float, eps: float
) -> tuple[PyTree, PyTree, PyTree]:
    """``(d, momentum, second_moment)`` of the ``adam`` base: Adam's bias-corrected,
    normalised direction with first-moment decay ``γ0``, each leaf in its parameter's dtype."""
    momentum = jax.tree_util.tree_map(
        lambda m, g: (gamma0 * m + (1 - gamma0) * g).astype(m.dtype), state.momentum, grads
    )
    second = jax.tree_util.tree_map(
        lambda v, g: (b2 * v + (1 - b2) * jnp.square(g)).astype(v.dtype),
        state.second_moment,
        grads,
    )
    t = (state.count + 1).astype(jnp.float32)
    correction1, correction2 = 1 - gamma0**t, 1 - b2**t
    direction = jax.tree_util.tree_map(
        lambda m, v: ((m / correction1) / (jnp.sqrt(v / correction2) + eps)).astype(m.dtype),
        momentum,
        second,
    )
    return direction, momentum, second


def normalize_per_tensor(outputs: PyTree) -> PyTree:
    """Each leaf ``(*shape, C)`` divided by its root mean square over the whole tensor."""

    def one(f: jax.Array) -> jax.Array:
        return f * jax.lax.rsqrt(jnp.mean(jnp.square(f)) + OUTPUT_RMS_EPS)

    return jax.tree_util.tree_map(one, outputs)


def base_direction(
    base: str, state: NFOptState, grads: PyTree, gamma0: jax.Array, b2: float, eps: float
) -> tuple[PyTree, PyTree, PyTree]:
    """``(d, momentum, second_moment)`` of the base rule ``base`` (see the module
    docstring); ``second_moment`` is ``None`` for ``sgdm``."""
    if base == "adam":
        return adam_direction(state, grads, gamma0, b2, eps)
    momentum = jax.tree_util.tree_map(
        lambda m, g: (gamma0.astype(m.dtype) * m + g).astype(m.dtype), state.momentum, grads
    )
    return momentum, momentum, None


def make_nf_optimizer(
    backbone: str,
    spec: nfspec.Spec,
    *,
    hidden: int = DEFAULTS["hidden"],
    depth: int = DEFAULTS["depth"],
    clip: float = DEFAULTS["clip"],
    alpha: float = DEFAULTS["alpha"],
    beta: float = DEFAULTS["beta"],
    gamma0: float = DEFAULTS["gamma0"],
    base: str = DEFAULTS["base"],
    b2: float = DEFAULTS["b2"],
    eps: float = DEFAULTS["eps"],
    zero_output: bool = DEFAULTS["zero_output"],
    time: str = DEFAULTS["time"],
    normalize_output: bool = DEFAULTS["normalize_output"],
    schedule: str = DEFAULTS["schedule"],
    warmup_fraction: float = DEFAULTS["warmup_fraction"],
    example_params: PyTree | None = None,
) -> LearnedOptimizer:
    """The learned update rule with a neural-functional backbone.

    Args:
        backbone: one of :data:`BACKBONES`.
        spec: permutation spec of the optimised network's parameters.
        hidden: channels of the hidden layers of ``f_θ``.
        depth: number of hidden layers of ``f_θ``.
        clip: feature clip bound (:func:`lopt.learned.features.normalize`).
        alpha: initial step size α (stored as ``log_alpha``).
        beta: initial scale β of the network's output (stored as ``log_beta``).
        gamma0: initial momentum decay γ0 (stored as ``logit_gamma0``).
        base: the base direction, ``"sgdm"`` or ``"adam"`` (see the module docstring).
        b2: second-moment decay of the ``adam`` base (fixed).
        eps: denominator offset of the ``adam`` base (fixed).
        zero_output: start the network's last layer at zero (the initial theta is then
            exactly the base optimizer).
        time: the step-count input, one of :data:`lopt.learned.features.TIME_INPUTS`.
        normalize_output: divide ``f`` per tensor by its RMS (see the module docstring).
        schedule: one of :data:`SCHEDULES`, the factor on ``α`` over a run.
        warmup_fraction: the ``warmup_cosine`` schedule's fraction of the run spent ramping
            ``α`` up from zero.
        example_params: params (or ``jax.ShapeDtypeStruct`` tree) giving the lengths of
            axes folded into channels, used by ``init_meta`` when it gets no ``params``.

    Returns:
        A :class:`~lopt.learned.base.LearnedOptimizer`; ``theta`` is
        ``{"log_alpha", "log_beta", "logit_gamma0", "network"}``.
    """
    check_network_options(backbone, spec, hidden, depth, example_params)
    check_rule_options(clip, base, b2, eps, time, schedule, warmup_fraction)
    needs_num_steps = needs_run_length(time, schedule)
    initial = initial_meta_parameters(alpha, beta, gamma0)
    channels = feats.num_features(time)
    network = build_network(backbone, spec, hidden, depth)
    init_network = jax.jit(network.init)  # one compiled call instead of many eager ops
    clip = float(clip)

    def init_meta(key: jax.Array, params: PyTree | None = None) -> PyTree:
        example = init_features(
            backbone, spec, example_params if params is None else params, channels
        )
        network_params = init_network(key, example)["params"]
        if zero_output:
            network_params = zero_last_layer(network_params)
        return {**initial, "network": network_params}

    def init(params: PyTree, num_steps: jax.Array | int | None = None) -> NFOptState:
        validate_params(spec, params)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        second = zeros if base == "adam" else None
        length = None
        if needs_num_steps:
            if num_steps is None:
                raise ValueError(
                    f"the {backbone!r} rule with time={time!r} and schedule={schedule!r} "
                    "follows the run's progress: pass init(params, num_steps=...) with the "
                    "run's length"
                )
            length = jnp.asarray(num_steps, jnp.int32)
        momenta = feats.init_feature_momenta(params)
        return NFOptState(zero_count(), zeros, momenta, second, length)

    def update(
        theta: PyTree,
        grads: PyTree,
        state: NFOptState,
        params: PyTree | None = None,
        loss: jax.Array | None = None,
    ) -> tuple[PyTree, NFOptState]:
        del loss  # the paper's features do not read the loss
        params = require_params(params, backbone)
        check_like(params, grads, "gradients", "params")
        alpha, beta, gamma0 = meta_parameters(theta)
        if schedule == "warmup_cosine":
            alpha = alpha * warmup_cosine_factor(state.count, state.num_steps, warmup_fraction)
        direction, momentum, second = base_direction(base, state, grads, gamma0, b2, eps)
        feature_momenta = feats.update_feature_momenta(state.feature_momenta, grads)
        inputs = feats.entry_features(params, grads, feature_momenta, clip)
        # The time channels are one vector shared by every entry: the network takes them as
        # context (through its first layer's bias) instead of as 11 broadcast channels.
        context = None
        if time == "absolute":
            context = feats.time_features(state.count)
        elif time == "fraction":
            context = feats.fraction_features(state.count, state.num_steps)
        outputs = network.apply({"params": theta["network"]}, inputs, context)
        if normalize_output:
            outputs = normalize_per_tensor(outputs)
        updates = jax.tree_util.tree_map(
            lambda d, f: (-alpha * (d + beta * f[..., 0])).astype(d.dtype), direction, outputs
        )
        new_state = NFOptState(state.count + 1, momentum, feature_momenta, second, state.num_steps)
        return updates, new_state

    config = {
        "name": backbone,
        "hidden": hidden,
        "depth": depth,
        "clip": clip,
        "alpha": float(alpha),
        "beta": float(beta),
        "gamma0": float(gamma0),
        "base": base,
        "b2": float(b2),
        "eps": float(eps),
        "zero_output": bool(zero_output),
        "time": time,
        "normalize_output": bool(normalize_output),
        "schedule": schedule,
        "warmup_fraction": float(warmup_fraction),
    }
    return LearnedOptimizer(
        init_meta=init_meta,
        init=init,
        update=update,
        config=config,
        spec=spec,
        needs_num_steps=needs_num_steps,
    )
