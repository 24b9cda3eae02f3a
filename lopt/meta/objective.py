"""The meta-objective: which inner losses the outer loop minimises, and how they are shaped.

Every inner step ``t`` of a particle yields one *per-step objective* value: the loss of the
parameters entering step ``t`` (after ``t`` updates of the current episode) on either the
training minibatch of that step (``split="train"``, free: it is the loss the inner gradient is
taken of) or a fresh batch of the task's ``valid`` split (``split="valid"``, one extra forward
pass per step). The ``test`` split is the evaluation's alone and is refused here.

``reduction`` says how per-step values form the objective of one unroll:

* ``"mean"`` -- mean over the unroll's steps (the usual choice: rewards fast *and* good
  training).
* ``"final"`` -- the sum, over the unroll, of the values at the last step of each episode
  (the loss after ``length - 1`` updates): only where training ends up counts. The signal is
  sparse (one value per episode), so expect noisier estimates.

``transform`` shapes each per-step value before the reduction:

* ``"none"`` -- the raw loss.
* ``"log"`` -- ``log(max(loss, 1e-8))``. Losses of different tasks and training phases differ by
  orders of magnitude; the log makes a relative improvement count the same early and late in
  training and keeps one blown-up particle from dominating the estimate.

``tail`` (optional, in ``(0, 1]``) counts only the last ``tail`` fraction of each episode:
a step after ``t`` updates of a ``T``-step episode weighs ``1 / tail`` when
``t >= T - round(tail * T)`` and 0 before, so the objective rewards where training ends up
(as the evaluation's final loss does) while every step of the tail still gives signal, and
its scale stays that of the whole-episode mean. It is applied to each per-step value
before the reduction; truncations entirely before the tail carry no signal of their own, but
an estimator that accumulates perturbations across an episode (PES) still credits them.

``clip`` (optional) caps each transformed value from above, bounding what a particle that has
started to diverge can contribute while it is still finite; a NaN value becomes ``clip`` (the
worst value), as in learned_optimization's clipped objectives.

``max_loss`` (optional) is the divergence bound: an inner step whose raw training loss is
above it counts as diverged, exactly like a non-finite one: the particle's group is left out
of the estimate, counted in ``num_nonfinite`` and reset. A particle that explodes while its
loss is still finite (a step size of 1e6 gives losses of 1e28) is then no longer averaged
into the estimate or the logged meta-loss.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

SPLITS = ("train", "valid")
"""The choices of :attr:`MetaObjective.split`."""
REDUCTIONS = ("mean", "final")
"""The choices of :attr:`MetaObjective.reduction`."""
TRANSFORMS = ("none", "log")
"""The choices of :attr:`MetaObjective.transform`."""
_LOG_FLOOR = 1e-8


class MetaObjective(NamedTuple):
    """What the outer loop minimises (see the module docstring).

    Attributes:
        split: ``"train"`` or ``"valid"``: which data the per-step loss is measured on.
        reduction: ``"mean"`` or ``"final"``.
        transform: ``"none"`` or ``"log"``.
        clip: upper bound on each transformed per-step value, or ``None``.
        max_loss: raw training loss above which a step counts as diverged, or ``None``.
        tail: the fraction of each episode that counts, in ``(0, 1]``, or ``None`` (all).
    """

    split: str = "train"
    reduction: str = "mean"
    transform: str = "none"
    clip: float | None = None
    max_loss: float | None = None
    tail: float | None = None

    def check(self) -> MetaObjective:
        """Returns self; raises ``ValueError`` naming the bad field otherwise."""
        if self.split == "test":
            raise ValueError(
                "MetaObjective.split 'test' is reserved for the evaluation's held-out metrics; "
                "meta-train on 'train' or 'valid'"
            )
        if self.split not in SPLITS:
            raise ValueError(f"MetaObjective.split must be one of {SPLITS}, got {self.split!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(
                f"MetaObjective.reduction must be one of {REDUCTIONS}, got {self.reduction!r}"
            )
        if self.transform not in TRANSFORMS:
            raise ValueError(
                f"MetaObjective.transform must be one of {TRANSFORMS}, got {self.transform!r}"
            )
        for name in ("clip", "max_loss", "tail"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value != value
            ):
                raise ValueError(f"MetaObjective.{name} must be a number or None, got {value!r}")
        if self.max_loss is not None and not self.max_loss > 0:
            raise ValueError(f"MetaObjective.max_loss must be positive, got {self.max_loss!r}")
        if self.tail is not None and not 0 < self.tail <= 1:
            raise ValueError(f"MetaObjective.tail must lie in (0, 1], got {self.tail!r}")
        return self

    @property
    def config(self) -> dict:
        """JSON-serialisable form."""
        return dict(self._asdict())

    def step_value(self, loss: jax.Array) -> jax.Array:
        """The per-step objective value of a per-step loss (any shape): ``transform``, then
        ``clip``, applied."""
        if self.transform == "log":
            loss = jnp.log(jnp.maximum(loss, _LOG_FLOOR))
        if self.clip is not None:
            loss = jnp.where(jnp.isnan(loss), self.clip, jnp.minimum(loss, self.clip))
        return loss

    def progress_weight(self, step: jax.Array, length: jax.Array) -> jax.Array:
        """The factor on the per-step value of a step taken after ``step`` updates of an
        episode of ``length`` steps: 1 without ``tail``, else ``1 / tail`` within the
        episode's last ``round(tail * length)`` steps and 0 before them."""
        if self.tail is None:
            return jnp.ones(jnp.shape(step), jnp.float32)
        counted = jnp.round(self.tail * jnp.asarray(length, jnp.float32))
        start = jnp.asarray(length, jnp.float32) - jnp.maximum(counted, 1.0)
        inside = jnp.asarray(step, jnp.float32) >= start
        return jnp.where(inside, 1.0 / self.tail, 0.0).astype(jnp.float32)

    def diverged(self, loss: jax.Array) -> jax.Array:
        """Where a raw per-step loss counts as diverged: non-finite or above ``max_loss``."""
        bad = ~jnp.isfinite(loss)
        if self.max_loss is not None:
            bad = bad | (loss > self.max_loss)
        return bad

    def step_weights(self, ended: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """Weights of per-step values in one unroll's objective.

        Args:
            ended: bool ``(K, N)``; true where a step was the last of its episode.
            lengths: optional int ``(N,)``, for unrolls in which every column's episode
                starts at the first step and may end before the unroll does (full-horizon
                unrolls without resets): each column's episode length; the steps after it
                weigh 0.

        Returns:
            float32 ``(K, N)``. For ``"mean"``: ``1/K`` everywhere, or with ``lengths``
            ``1/length`` within each episode; for ``"final"``: ``ended``.
        """
        if self.reduction == "mean":
            if lengths is None:
                return jnp.full(ended.shape, 1.0 / ended.shape[0], jnp.float32)
            in_episode = within_episode(ended.shape[0], lengths)
            return in_episode / lengths[None, :].astype(jnp.float32)
        return ended.astype(jnp.float32)


def within_episode(num_steps: int, lengths: jax.Array) -> jax.Array:
    """bool ``(num_steps, N)``: step ``t`` of an unroll that starts every column's episode
    lies within that episode (``t < lengths[n]``)."""
    return jnp.arange(num_steps)[:, None] < lengths[None, :]


def as_objective(objective: MetaObjective | dict | None) -> MetaObjective:
    """Accepts a ``MetaObjective``, its config dict, or ``None`` (the default objective)."""
    if objective is None:
        return MetaObjective()
    if isinstance(objective, dict):
        unknown = set(objective) - set(MetaObjective._fields)
        if unknown:
            raise ValueError(f"unknown MetaObjective fields {sorted(unknown)}")
        objective = MetaObjective(**objective)
    if not isinstance(objective, MetaObjective):
        raise TypeError(f"expected a MetaObjective, got {type(objective)}")
    return objective.check()
