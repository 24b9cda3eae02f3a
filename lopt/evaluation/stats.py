"""Statistics of loss curves over seeds: means, standard errors, final loss, time to target, and
final losses compared in log space.

Conventions:

* A *curve* is a training-loss array ``(S, T)``: ``S`` seeds, ``T`` inner steps; entry
  ``[s, t]`` is the minibatch loss of the parameters after ``t`` updates.
* A run has *diverged* when its final loss is not finite. Means and standard errors skip
  non-finite values (and say how many there were where it matters).
* The *final loss* of a run is its mean training loss over the last ``tail`` steps
  (:func:`tail_steps`), which averages out minibatch noise.
* Final losses of different optimizers are compared in log space (:func:`log_losses`, floored
  at :data:`LOG_FLOOR`): their geometric mean, median and interquartile mean
  (:func:`summarize_log`), failed seeds counted apart (:func:`failures`), and for a pair a
  paired t-test of the per-seed log differences with the seeds each side wins
  (:func:`paired_log_test`). A linear mean of losses is dominated by its largest seed, and a
  linear difference against a seed at 0 is meaningless.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import stats as scipy_stats

LOG_FLOOR = 1e-8
"""Losses below this count as this in log space: a float32 cross-entropy of exactly 0 (the
softmax underflowed) and one of 1e-30 are the same, unmeasurable, result."""

FAILURE_FACTOR = 10.0
"""A seed fails when its final loss is non-finite or above this many times the same seed's
tuned-Adam final loss."""


class Summary(NamedTuple):
    """Mean and standard error of per-seed values, over the finite ones.

    Attributes:
        mean: mean of the finite values (nan if none).
        se: standard error of that mean, ``std(ddof=1) / sqrt(n)`` (nan if ``n < 2``: one
            value says nothing of the spread).
        count: number of finite values ``n``.
        num_nonfinite: number of values that were nan or infinite.
    """

    mean: float
    se: float
    count: int
    num_nonfinite: int


def standard_error(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Standard error of the mean along ``axis``, ignoring non-finite values.

    ``std(x, ddof=1) / sqrt(n)`` over the ``n`` finite entries; nan where ``n < 2`` (no
    spread can be estimated).

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
    return np.where(count < 2, np.nan, se)


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


def geometric_mean_curve(curves: np.ndarray, window: int, floor: float = LOG_FLOOR) -> np.ndarray:
    """The geometric mean over seeds of each seed's trailing-mean curve.

    At the last step it equals the geometric mean of the seeds' final losses when ``window``
    is the final-loss tail, so a run reaches its own final level exactly at its end.

    Args:
        curves: ``(S, T)`` training losses.
        window: trailing-mean window of each seed's curve.
        floor: the log floor.

    Returns:
        ``(T,)``; ``inf`` from the first step any seed's smoothed loss is not finite.
    """
    smooth = np.stack([trailing_mean(curve, window) for curve in np.asarray(curves, np.float64)])
    return 10 ** log_losses(smooth, floor).mean(axis=0)


def block_means(values: np.ndarray, num_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``values`` over consecutive blocks of its last axis, to keep curves small.

    Args:
        values: ``(..., T)``.
        num_blocks: at most this many blocks of equal length (``T`` if smaller); the last
            block takes the remainder.

    Returns:
        ``(steps, means)``: ``(B,)`` the last step of each block and ``(..., B)`` the means.
    """
    values = np.asarray(values, np.float64)
    total = values.shape[-1]
    size = max(1, math.ceil(total / max(1, num_blocks)))
    starts = np.arange(0, total, size)
    with np.errstate(invalid="ignore", over="ignore"):
        means = np.add.reduceat(values, starts, axis=-1) / np.diff(np.append(starts, total))
    return np.minimum(starts + size, total) - 1, means


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


# -- final losses in log space ---------------------------------------------------------------


def log_losses(values: np.ndarray, floor: float = LOG_FLOOR) -> np.ndarray:
    """``log10(max(loss, floor))`` per entry; a non-finite loss becomes ``+inf``.

    A diverged run is the worst outcome, so it sorts last in medians and win counts instead
    of disappearing from them.
    """
    values = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        logs = np.log10(np.maximum(values, floor))
    return np.where(np.isfinite(values), logs, np.inf)


def failures(
    finals: np.ndarray, reference: np.ndarray | None, factor: float = FAILURE_FACTOR
) -> np.ndarray:
    """Which seeds failed: a non-finite final loss, or one above ``factor`` times the same
    seed's ``reference`` (tuned Adam's) final loss.

    Args:
        finals: ``(S,)`` final losses.
        reference: ``(S,)`` the reference's final losses on the same seeds, or None (then only
            non-finite losses fail).
        factor: the failure threshold.

    Returns:
        ``(S,)`` bool.
    """
    finals = np.asarray(finals, np.float64)
    failed = ~np.isfinite(finals)
    if reference is not None:
        reference = np.asarray(reference, np.float64)
        if reference.shape != finals.shape:
            raise ValueError(f"reference has shape {reference.shape}, finals {finals.shape}")
        with np.errstate(invalid="ignore"):
            failed |= np.isfinite(reference) & (finals > factor * reference)
    return failed


class LogSummary(NamedTuple):
    """Per-seed final losses summarised in log space (:func:`log_losses`).

    Attributes:
        geometric_mean: ``10 ** mean(log10 loss)`` over the finite seeds (nan if none).
        median: the median loss over all seeds, a non-finite one counted as the worst.
        iqm: interquartile mean: ``10 **`` the mean of the middle half of the sorted log
            losses (:func:`interquartile_mean`), all seeds counted.
        log_se: standard error of ``mean(log10 loss)`` over the finite seeds (None if fewer
            than 2).
        count: number of seeds.
        num_nonfinite: seeds whose loss is not finite (left out of the geometric mean).
        num_failed: seeds that failed (:func:`failures`).
    """

    geometric_mean: float
    median: float
    iqm: float
    log_se: float | None
    count: int
    num_nonfinite: int
    num_failed: int


def interquartile_mean(values: np.ndarray) -> float:
    """Mean of the middle half of the sorted values: the ``floor(n / 4)`` lowest and highest
    are dropped (all kept for ``n < 4``)."""
    ordered = np.sort(np.asarray(values, np.float64).reshape(-1))
    cut = ordered.shape[0] // 4
    middle = ordered[cut : ordered.shape[0] - cut]
    return float(middle.mean()) if middle.size else math.nan


def summarize_log(
    finals: np.ndarray, failed: np.ndarray | None = None, floor: float = LOG_FLOOR
) -> LogSummary:
    """:class:`LogSummary` of ``(S,)`` final losses; ``failed`` from :func:`failures`."""
    logs = log_losses(finals, floor).reshape(-1)
    finite = np.isfinite(logs)
    count = int(finite.sum())
    with np.errstate(over="ignore"):
        geometric = 10 ** float(logs[finite].mean()) if count else math.nan
        median = 10 ** float(np.median(logs)) if logs.size else math.nan
        iqm = 10 ** interquartile_mean(logs) if logs.size else math.nan
    se = float(logs[finite].std(ddof=1) / math.sqrt(count)) if count >= 2 else None
    num_failed = int(np.sum(failed)) if failed is not None else int((~finite).sum())
    return LogSummary(geometric, median, iqm, se, int(logs.size), int((~finite).sum()), num_failed)


class PairedTest(NamedTuple):
    """A paired comparison of two optimizers' final losses on the same seeds, in log space.

    Attributes:
        ratio: ``10 ** mean(log10 a - log10 b)`` over the seeds where both are finite: the
            geometric mean of the per-seed ratios ``a / b`` (below 1: ``a`` is lower).
        log_se: standard error of that mean log difference (None if fewer than 2 pairs).
        t: the paired t statistic ``mean / log_se`` (None where undefined).
        p_value: two-sided p-value of ``t`` under Student's t with ``n - 1`` degrees of
            freedom (None where undefined).
        wins: seeds where ``a`` is lower (a non-finite loss is the worst).
        losses: seeds where ``b`` is lower.
        ties: seeds where both are equal in log space (e.g. both at the floor, or both
            non-finite).
        count: seeds where both are finite (the t-test's pairs).
    """

    ratio: float
    log_se: float | None
    t: float | None
    p_value: float | None
    wins: int
    losses: int
    ties: int
    count: int


def paired_log_test(a: np.ndarray, b: np.ndarray, floor: float = LOG_FLOOR) -> PairedTest:
    """Paired t-test of ``log10 a - log10 b`` over seeds (:class:`PairedTest`).

    Args:
        a: ``(S,)`` one optimizer's final losses.
        b: ``(S,)`` the other's, on the same seeds.
        floor: the log floor (:data:`LOG_FLOOR`).
    """
    log_a, log_b = log_losses(a, floor).reshape(-1), log_losses(b, floor).reshape(-1)
    if log_a.shape != log_b.shape:
        raise ValueError(f"paired values need one shape, got {log_a.shape} and {log_b.shape}")
    wins, losses = int(np.sum(log_a < log_b)), int(np.sum(log_a > log_b))
    both = np.isfinite(log_a) & np.isfinite(log_b)
    difference = log_a[both] - log_b[both]
    count = int(difference.size)
    ratio = 10 ** float(difference.mean()) if count else math.nan
    se = t = p_value = None
    if count >= 2:
        se = float(difference.std(ddof=1) / math.sqrt(count))
        if se > 0:
            t = float(difference.mean() / se)
            p_value = float(2 * scipy_stats.t.sf(abs(t), count - 1))
        elif difference.mean() == 0:
            t, p_value = 0.0, 1.0
    return PairedTest(ratio, se, t, p_value, wins, losses, int(log_a.size) - wins - losses, count)
