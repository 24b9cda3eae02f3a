"""Learned optimizers whose update rule is a Universal Neural Functional.

The public API, re-exported from the subpackages:

* :mod:`lopt.nf`: permutation specs and equivariant (UNF, NFN, Deep Sets) networks.
* :mod:`lopt.learned`: the learned update rule, baselines, optax export, save/load.
* :mod:`lopt.meta`: populations of inner runs, PES / TBPTT / ES, the outer loop.
* :mod:`lopt.tasks`: the inner tasks and automatic spec derivation for flax models.
* :mod:`lopt.pretrained`: trained optimizers shipped with the package, with their cards.

Using a trained optimizer in a plain optax loop::

    spec = lopt.derive_spec(lambda p, x: model.apply({"params": p}, x), params, inputs)
    optimizer = lopt.load_optimizer("runs/unf_mlp/optimizer", spec=spec)
    opt_state = optimizer.init(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

A shipped optimizer instead of one's own: ``lopt.pretrained.load("mlp_unf", spec)``.
"""

from lopt import pretrained
from lopt.learned import (
    as_optax,
    load_learned_optimizer,
    load_optimizer,
    make_optimizer,
    save_optimizer,
)
from lopt.meta import full_es, make_meta_trainer, meta_train, pes, tbptt
from lopt.tasks import derive_spec, get_task

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "as_optax",
    "derive_spec",
    "full_es",
    "get_task",
    "load_learned_optimizer",
    "load_optimizer",
    "make_meta_trainer",
    "make_optimizer",
    "meta_train",
    "pes",
    "pretrained",
    "save_optimizer",
    "tbptt",
]
