"""Episode-length schedules: how many inner steps an inner run lasts before it is reset."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class EpisodeSchedule(NamedTuple):
    """Distribution of inner-episode lengths.

    Attributes:
        sample: ``key -> int32 scalar`` drawing one episode length (>= 1). Pure, usable in
            ``jit``/``vmap``.
        min_length: smallest length ``sample`` can return.
        max_length: largest length ``sample`` can return (static; full-horizon estimators
            unroll this many steps).
        config: JSON-serialisable description, e.g. ``{"kind": "constant", "length": 2000}``.
    """

    sample: Callable[[jax.Array], jax.Array]
    min_length: int
    max_length: int
    config: dict


def _check_length(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def constant_length(length: int) -> EpisodeSchedule:
    """Every episode lasts exactly ``length`` inner steps."""
    length = _check_length("length", length)

    def sample(key: jax.Array) -> jax.Array:
        del key
        return jnp.asarray(length, jnp.int32)

    return EpisodeSchedule(sample, length, length, {"kind": "constant", "length": length})


def log_uniform_length(min_length: int, max_length: int) -> EpisodeSchedule:
    """Episode lengths log-uniform on ``[min_length, max_length]`` (rounded down, inclusive).

    Log-uniform lengths make the learned optimizer see short and long horizons alike, so it
    cannot overfit to one fixed training length.
    """
    lo = _check_length("min_length", min_length)
    hi = _check_length("max_length", max_length)
    if lo > hi:
        raise ValueError(f"min_length ({lo}) must not exceed max_length ({hi})")
    log_lo, log_hi = math.log(lo), math.log(hi + 1)

    def sample(key: jax.Array) -> jax.Array:
        u = jax.random.uniform(key, (), jnp.float32, log_lo, log_hi)
        return jnp.clip(jnp.floor(jnp.exp(u)), lo, hi).astype(jnp.int32)

    return EpisodeSchedule(
        sample, lo, hi, {"kind": "log_uniform", "min_length": lo, "max_length": hi}
    )


def as_schedule(schedule: EpisodeSchedule | int) -> EpisodeSchedule:
    """Accepts a schedule or a plain integer (a constant episode length)."""
    if isinstance(schedule, EpisodeSchedule):
        return schedule
    if isinstance(schedule, int) and not isinstance(schedule, bool):
        return constant_length(schedule)
    raise TypeError(
        f"episode schedule must be an EpisodeSchedule or a positive int, got {type(schedule)}"
    )


def schedule_from_config(config: dict) -> EpisodeSchedule:
    """Rebuilds a schedule from its ``config`` dict."""
    kind = config.get("kind")
    if kind == "constant":
        return constant_length(config["length"])
    if kind == "log_uniform":
        return log_uniform_length(config["min_length"], config["max_length"])
    raise ValueError(
        f"unknown episode schedule kind {kind!r}; expected 'constant' or 'log_uniform'"
    )
