"""The outer loop: run meta-training steps, log a record per interval, measure throughput.

One loop serves :func:`lopt.meta.meta_train` and ``lopt-train``; what differs between them
is passed in: which steps are logged (``log_due``), how an interval's step metrics become a
record (a :class:`MetricsReducer`), and :class:`LoopHooks` for stopping, progress,
validation, logging and checkpointing.

Throughput is measured here, outside ``jit``: a record's ``inner_steps_per_sec`` is the
number of particle-steps run since the previous record divided by the wall time in between.
The clock starts once the loop's first step has finished, so no interval includes
compilation (a record of that first step reports NaN), and it stands still while a hook
validates: validation is not meta-training time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp

from lopt.distributed import to_host

State = TypeVar("State")
Metrics = dict[str, jax.Array]
Record = dict[str, float]

COUNT_METRICS = ("num_episodes_ended", "num_nonfinite", "skipped")
"""Step metrics that count events: summed over a log interval, not averaged."""


class MetricsReducer(NamedTuple):
    """How the step metrics of one log interval become a record's values.

    Attributes:
        add: ``(totals | None, metrics) -> totals``: folds in one step's metrics (``None``
            starts an interval). Runs without waiting for the device.
        finish: ``(totals, count) -> dict[str, float]``: the interval's values on the host,
            given how many steps were folded in.
    """

    add: Callable[[Any, Metrics], Any]
    finish: Callable[[Any, int], dict[str, float]]


def last_step_metrics() -> MetricsReducer:
    """A record holds the metrics of its own step alone (as floats)."""

    def finish(totals: Metrics, count: int) -> dict[str, float]:
        del count
        return {name: float(value) for name, value in to_host(totals).items()}

    return MetricsReducer(add=lambda totals, metrics: metrics, finish=finish)


def _sum_metrics(totals: Metrics | None, metrics: Metrics) -> Metrics:
    as_float = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return as_float if totals is None else {k: totals[k] + as_float[k] for k in totals}


_sum_metrics_jit = jax.jit(_sum_metrics)


def interval_means(counts: tuple[str, ...] = COUNT_METRICS) -> MetricsReducer:
    """A record holds the means over its interval (float32 sums), ``counts`` summed as ints."""

    def finish(totals: Metrics, count: int) -> dict[str, float]:
        values = {}
        for name, value in to_host(totals).items():
            value = float(value)
            values[name] = int(value) if name in counts else value / count
        return values

    return MetricsReducer(add=_sum_metrics_jit, finish=finish)


class Clock(NamedTuple):
    """The point throughput is measured from: a wall time and the outer step it belongs to."""

    time: float
    step: int


def throughput(clock: Clock, step: int, now: float, inner_steps_per_step: int) -> float:
    """Particle-steps per second from ``clock`` to outer ``step`` at wall time ``now`` (NaN
    when no step was run since the clock was set)."""
    if step <= clock.step:
        return math.nan
    return (step - clock.step) * inner_steps_per_step / max(now - clock.time, 1e-9)


def _never() -> bool:
    return False


def _nothing(*args: Any) -> None:
    del args


class LoopHooks(NamedTuple):
    """Callbacks of :func:`outer_loop`; the defaults do nothing.

    Attributes:
        stop_requested: ``() -> bool``, asked before every step (true: stop there) and after
            it (true: log this step at once).
        on_step: ``step -> None``, right after every step (a progress bar, say).
        validate: ``(step, state) -> (state, fields)`` or ``None``: runs every
            ``validate_every`` steps and at the last step, on a finished state; the step is
            then logged with ``fields`` in its record.
        validate_every: steps between validations (0: only at the last step).
        validation_keys: the record columns validation fills; every record gets them while
            ``validate`` is set (NaN where its step was not validated).
        on_log: ``(step, record) -> None``, for every record.
        after_step: ``(step, state) -> None``, the last thing of every step (a checkpoint).
    """

    stop_requested: Callable[[], bool] = _never
    on_step: Callable[[int], None] = _nothing
    validate: Callable[[int, Any], tuple[Any, dict[str, float]]] | None = None
    validate_every: int = 0
    validation_keys: tuple[str, ...] = ()
    on_log: Callable[[int, Record], None] = _nothing
    after_step: Callable[[int, Any], None] = _nothing


def outer_loop(
    step: Callable[[State], tuple[State, Metrics]],
    state: State,
    start: int,
    end: int,
    *,
    inner_steps_per_step: int,
    log_due: Callable[[int], bool],
    reducer: MetricsReducer,
    hooks: LoopHooks | None = None,
) -> tuple[State, list[Record]]:
    """Runs outer steps ``start + 1`` to ``end`` (fewer if a stop is requested).

    Args:
        step: ``state -> (state, metrics)``, one outer step (jitted; metrics are scalars).
        state: the state to continue from, ``start`` outer steps in.
        start: outer steps already taken.
        end: the outer step to stop after.
        inner_steps_per_step: particle-steps one ``step`` runs, for throughput.
        log_due: ``step -> bool``, whether a finished step is logged (validated steps and
            steps after a stop request are logged regardless).
        reducer: how step metrics become a record's values.
        hooks: the callbacks (default: none).

    Returns:
        The last state and the records, each ``{"step", *values, "inner_steps_per_sec",
        *hooks.validation_keys}``.
    """
    hooks = LoopHooks() if hooks is None else hooks
    history: list[Record] = []
    totals, count, clock = None, 0, None
    for done in range(start + 1, end + 1):
        if hooks.stop_requested():
            break
        state, metrics = step(state)
        totals, count = reducer.add(totals, metrics), count + 1
        hooks.on_step(done)
        if clock is None:
            jax.block_until_ready(state)
            clock = Clock(time.perf_counter(), done)
        fields = None
        if hooks.validate is not None and _validation_due(hooks.validate_every, done, end):
            state, fields, seconds = _timed(hooks.validate, done, state)
            clock = clock._replace(time=clock.time + seconds)
        if log_due(done) or fields is not None or hooks.stop_requested():
            jax.block_until_ready(totals)
            now = time.perf_counter()
            record: Record = {"step": done, **reducer.finish(totals, count)}
            record["inner_steps_per_sec"] = throughput(clock, done, now, inner_steps_per_step)
            if hooks.validate is not None:
                filled = {} if fields is None else fields
                record.update({key: filled.get(key, math.nan) for key in hooks.validation_keys})
            clock, totals, count = Clock(now, done), None, 0
            history.append(record)
            hooks.on_log(done, record)
        hooks.after_step(done, state)
    return state, history


def _validation_due(every: int, step: int, end: int) -> bool:
    return (every > 0 and step % every == 0) or step == end


def _timed(
    validate: Callable[[int, Any], tuple[Any, dict[str, float]]], step: int, state: Any
) -> tuple[Any, dict[str, float], float]:
    """``validate(step, state)`` and its wall time, after the steps so far have finished
    (their time is meta-training time)."""
    jax.block_until_ready(state)
    began = time.perf_counter()
    state, fields = validate(step, state)
    return state, fields, time.perf_counter() - began
