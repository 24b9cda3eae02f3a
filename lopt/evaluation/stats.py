"""Statistics of loss curves over seeds: means, standard errors, final loss, time to target.

Conventions:

* A *curve* is a training-loss array ``(S, T)``: ``S`` seeds, ``T`` inner steps; entry
  ``[s, t]`` is the minibatch loss of the parameters after ``t`` updates.
* A run has *diverged* when its final loss is not finite. Means and standard errors skip
  non-finite values (and say how many there were where it matters).
* The *final loss* of a run is its mean training loss over the last ``tail`` steps
  (:func:`tail_steps`), which averages out minibatch noise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class Summary(NamedTuple):
    """Mean and standard error of per-seed values, over the finite ones.

    Attributes:
        mean: mean of the finite values (nan if none).
        se: standard error of that mean, ``std(ddof=1) / sqrt(n)`` (0 if ``n < 2``).
        count: number of finite values ``n``.
        num_nonfinite: number of values that were nan or infinite.
    """

    mean: float
    se: float
    count: int
    num_nonfinite: int


def standard_error(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Standard error of the mean along ``axis``, ignoring non-finite values.

    ``std(x, ddof=1) / sqrt(n)`` over the ``n`` finite entries; 0 where ``n < 2`` (no
    spread can be estimated), nan where ``n == 0``.

    Args:
        values: float array, e.g. ``(S, T)`` losses.
        axis: the seed axis.

    Returns:
        The standard errors, ``values`` without ``axis``.
    """
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    count = finite.sum(axis=axis)
    clean = np.where(finite, values, 0.0)
    safe = np.maximum(count, 1)
    mean = clean.sum(axis=axis) / safe
    squares = np.where(finite, (values - np.expand_dims(mean, axis)) ** 2, 0.0).sum(axis=axis)
    variance = squares / np.maximum(count - 1, 1)
    se = np.sqrt(variance / safe)
    se = np.where(count < 2, 0.0, se)
    return np.where(count == 0, np.nan, se)


def finite_mean(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean along ``axis`` over finite entries (nan where there are none)."""
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    count = finite.sum(axis=axis)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    return np.where(count == 0, np.nan, total / np.maximum(count, 1))


def summarize(values: np.ndarray) -> Summary:
    """:class:`Summary` of a 1-D array of per-seed values."""
    values = np.asarray(values, np.float64).reshape(-1)
    finite = np.isfinite(values)
    return Summary(
        mean=float(finite_mean(values)),
        se=float(standard_error(values)),
        count=int(finite.sum()),
        num_nonfinite=int((~finite).sum()),
    )


def tail_steps(num_steps: int, fraction: float) -> int:
    """Number of final steps averaged into the final loss: ``ceil(fraction * T)``, >= 1."""
    if not 0 < fraction <= 1:
        raise ValueError(f"tail_fraction must lie in (0, 1], got {fraction!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps!r}")
    return max(1, math.ceil(fraction * num_steps))


def final_loss(curves: np.ndarray, tail: int) -> np.ndarray:
    """Per-seed final loss: mean training loss over the last ``tail`` steps.

    Args:
        curves: ``(S, T)`` training losses.
        tail: number of final steps, ``1 <= tail <= T``.

    Returns:
        ``(S,)``; non-finite for a run with any non-finite loss in its tail.
    """
    curves = np.asarray(curves, np.float64)
    if not 1 <= tail <= curves.shape[-1]:
        raise ValueError(f"tail must lie in [1, {curves.shape[-1]}], got {tail}")
    with np.errstate(invalid="ignore", over="ignore"):
        return curves[..., -tail:].mean(axis=-1)


def trailing_mean(curve: np.ndarray, window: int) -> np.ndarray:
    """Moving average over the last ``window`` entries (fewer at the start).

    Args:
        curve: ``(T,)``.
        window: >= 1.

    Returns:
        ``(T,)``, entry ``t`` the mean of ``curve[max(0, t - window + 1) : t + 1]``.
    """
    curve = np.asarray(curve, np.float64)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    with np.errstate(invalid="ignore", over="ignore"):
        total = np.concatenate([[0.0], np.cumsum(curve)])
        ends = np.arange(1, curve.shape[0] + 1)
        starts = np.maximum(ends - window, 0)
        return (total[ends] - total[starts]) / (ends - starts)


def steps_to_reach(curve: np.ndarray, target: float, window: int) -> int | None:
    """Updates a run needs until its smoothed loss first reaches ``target``.

    Args:
        curve: ``(T,)`` mean training loss over seeds.
        target: loss to reach.
        window: trailing-average window (use the final-loss tail, so that a curve whose
            final loss equals ``target`` reaches it by its last step).

    Returns:
        The first ``t`` with ``trailing_mean(curve, window)[t] <= target`` (the number of
        updates taken), or None if never (or if ``target`` is not finite).
    """
    if not math.isfinite(target):
        return None
    smooth = trailing_mean(curve, window)
    # Compare with a relative tolerance: the target is itself a float64 mean of this kind.
    hits = np.flatnonzero(smooth <= target + 1e-9 * abs(target))
    return int(hits[0]) if hits.size else None
