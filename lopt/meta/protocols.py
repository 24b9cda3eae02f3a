"""What meta-training asks of an inner task and of a learned optimizer.

These are structural types: any object with these methods (a class, a NamedTuple of
functions such as :class:`lopt.learned.LearnedOptimizer`) can be meta-trained; nothing has
to inherit from them. Optional attributes, used only to describe a run, are read with
``getattr``: a task's ``name`` and an optimizer's ``config``.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax

PyTree = Any


class TaskLike(Protocol):
    """An inner task: initial parameters, a loss, and a stream of batches."""

    def init(self, key: jax.Array) -> PyTree:
        """Initial parameters drawn from ``key``."""
        ...

    def loss(self, params: PyTree, batch: PyTree) -> jax.Array:
        """Scalar loss of ``params`` on ``batch``."""
        ...

    def batch(self, key: jax.Array, split: str = "train") -> PyTree:
        """A batch of ``split`` (``"train"``, ``"valid"`` or ``"test"``) drawn from ``key``."""
        ...


class LearnedOptimizerLike(Protocol):
    """An optimizer whose behaviour is set by meta-parameters ``theta``."""

    def init_meta(self, key: jax.Array) -> PyTree:
        """Initial meta-parameters ``theta``."""
        ...

    def init(self, params: PyTree) -> PyTree:
        """Inner optimizer state for ``params``. An optimizer whose ``needs_num_steps``
        attribute is true takes the run's length too: ``init(params, num_steps=...)``."""
        ...

    def update(
        self, theta: PyTree, grads: PyTree, state: PyTree, params: PyTree, *, loss: jax.Array
    ) -> tuple[PyTree, PyTree]:
        """``(updates, state)``: updates to add to ``params`` with ``optax.apply_updates``."""
        ...


class WeightSpaceOptimizerLike(LearnedOptimizerLike, Protocol):
    """A learned optimizer built for a weight space, whose theta may be sized by it.

    Some update networks size themselves by axes a permutation spec leaves fixed, so their
    theta depends on the task's parameter shapes. Such an optimizer says so by carrying the
    ``spec`` it was built for (not ``None``), and its ``init_meta`` takes those shapes.
    """

    spec: Any

    def init_meta(self, key: jax.Array, params: PyTree | None = None) -> PyTree:
        """Initial ``theta`` for parameters shaped like ``params`` (arrays or
        ``jax.ShapeDtypeStruct``)."""
        ...


TASK_METHODS = ("init", "loss", "batch")
OPTIMIZER_METHODS = ("init", "update")


def check_methods(obj: Any, names: tuple[str, ...], what: str) -> None:
    """Raises ``TypeError`` naming the first of ``names`` that ``obj`` lacks as a callable.

    Args:
        obj: the object to check.
        names: the method names it must have.
        what: how the message calls it (``"task"``, ``"learned optimizer"``).
    """
    for name in names:
        if not callable(getattr(obj, name, None)):
            raise TypeError(f"{what} has no callable {name!r}; got {type(obj).__name__}")


def initial_theta(opt: LearnedOptimizerLike, task: TaskLike, key: jax.Array) -> PyTree:
    """``opt``'s initial theta for ``task``: given the task's parameter shapes where ``opt``
    is a :class:`WeightSpaceOptimizerLike`, from ``key`` alone otherwise."""
    if getattr(opt, "spec", None) is not None:
        return opt.init_meta(key, params=jax.eval_shape(task.init, key))
    return opt.init_meta(key)


def init_state(opt: LearnedOptimizerLike, params: PyTree, num_steps: Any = None) -> PyTree:
    """``opt``'s state for ``params`` at the start of a run of ``num_steps`` steps.

    The run's length is passed only to an optimizer whose ``needs_num_steps`` attribute is
    true (one that reads the fraction of the run done or follows a schedule over it);
    others get ``params`` alone.

    Raises:
        ValueError: the optimizer needs the run's length and ``num_steps`` is None.
    """
    if not getattr(opt, "needs_num_steps", False):
        return opt.init(params)
    if num_steps is None:
        name = getattr(opt, "config", {}).get("name", "learned")
        raise ValueError(
            f"the {name!r} optimizer follows the run's progress, so it needs the "
            "run's length: pass num_steps"
        )
    return opt.init(params, num_steps=num_steps)
