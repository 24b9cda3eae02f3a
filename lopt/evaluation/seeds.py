"""Seeds of evaluation runs, kept apart from meta-training and from baseline tuning.

Every inner run of an evaluation starts from its own root key ``jax.random.key(seed)``
(split into the run's initialisation, data-stream and held-out keys). Meta-training derives
all of its inner runs from one root key, by convention a seed below
:data:`EVAL_SEED_OFFSET`, so evaluation runs never repeat a meta-training run. Baselines
are tuned on a third, separate range, so the learning rate a baseline is evaluated with was
not picked on the seeds it is evaluated on.

==========================  ======================================
seeds                       used for
==========================  ======================================
``0 .. 9_999``              meta-training (convention)
``10_000 ..``               evaluation runs (:data:`EVAL_SEED_OFFSET`)
``20_000 ..``               baseline learning-rate sweeps (:data:`TUNING_SEED_OFFSET`)
``30_000 ..``               meta-validation during meta-training
                            (:data:`VALIDATION_SEED_OFFSET`)
==========================  ======================================
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

EVAL_SEED_OFFSET = 10_000
"""First evaluation seed; seeds below it are left to meta-training."""

TUNING_SEED_OFFSET = 20_000
"""First seed of the baselines' learning-rate sweeps."""

VALIDATION_SEED_OFFSET = 30_000
"""First seed of the meta-validation runs ``lopt-train`` scores its theta on: never used by
meta-training's own inner runs, nor by an evaluation's or its tuning sweeps' defaults."""


def seed_range(count: int, offset: int) -> tuple[int, ...]:
    """``count`` consecutive seeds starting at ``offset``.

    Raises:
        ValueError: ``count < 1`` or ``offset < 0``.
    """
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of seeds must be a positive integer, got {count!r}")
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"a seed offset must be a non-negative integer, got {offset!r}")
    return tuple(range(offset, offset + count))


def evaluation_seeds(count: int, offset: int = EVAL_SEED_OFFSET) -> tuple[int, ...]:
    """The seeds of ``count`` evaluation runs."""
    return seed_range(count, offset)


def tuning_seeds(count: int, offset: int = TUNING_SEED_OFFSET) -> tuple[int, ...]:
    """The seeds of ``count`` runs per learning rate of a baseline sweep."""
    return seed_range(count, offset)


def validation_seeds(count: int, offset: int = VALIDATION_SEED_OFFSET) -> tuple[int, ...]:
    """The seeds of ``count`` meta-validation runs.

    Raises:
        ValueError: the range reaches below :data:`VALIDATION_SEED_OFFSET` into the
            meta-training, evaluation or tuning seeds.
    """
    seeds = seed_range(count, offset)
    if offset < VALIDATION_SEED_OFFSET:
        raise ValueError(
            f"validation seeds must start at {VALIDATION_SEED_OFFSET} or above (lower seeds "
            f"belong to meta-training, evaluation and tuning runs), got {offset}"
        )
    return seeds


def check_disjoint(evaluation: Sequence[int], tuning: Sequence[int]) -> None:
    """Raises a ValueError naming the shared seeds if the two sets overlap."""
    shared = sorted(set(evaluation) & set(tuning))
    if shared:
        raise ValueError(
            f"evaluation and tuning seeds overlap at {shared[:5]}"
            f"{' ...' if len(shared) > 5 else ''}: the baselines' learning rates must be "
            "chosen on other runs than those they are evaluated on (change seed_offset or "
            "tuning.seed_offset)"
        )


def seed_keys(seeds: Sequence[int]) -> jax.Array:
    """Raw uint32 root keys ``(len(seeds), 2)``, one per seed (``jax.random.key(seed)``)."""
    return jnp.stack([jax.random.key_data(jax.random.key(seed)) for seed in seeds])
