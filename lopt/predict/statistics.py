"""How well predictions fit, and whether one predictor beats another beyond the noise.

Point measures: :func:`r_squared` and :func:`mean_absolute_error` (beside Kendall τ).

Comparisons: :func:`paired_bootstrap` puts a confidence interval on the difference in
Kendall τ between two predictors evaluated on the same test networks of several zoo
splits. It resamples at both levels that vary between repetitions of the experiment:

1. the split seeds (with replacement), so the interval covers which networks the
   predictors were trained on;
2. within each drawn split, its test networks (with replacement), the *same* draw for
   both predictors (the pairing: a hard test set is hard for both).

A resample of test networks is a vector of counts ``w`` (how often each network was
drawn), and τ-b of the resampled networks is ``wᵀ(Sx∘Sy)w / sqrt(wᵀ|Sx|w · wᵀ|Sy|w)``
with ``S`` the ``(n, n)`` matrices of pairwise signs: a pair drawn twice counts twice, a
network paired with its own copy is tied in both and counts nowhere, exactly as τ-b on the
resampled vectors. So every resample costs two matrix products instead of a new
``O(n²)`` comparison per predictor and seed.

>>> interval = paired_bootstrap(first, second, targets, resamples=2000, seed=0)
>>> interval.holds        # the 95% interval lies above 0: the first predictor is better
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

# A metric of one predictor's predictions ``(n,)`` against the targets ``(n,)`` on ``R``
# weighted resamples ``(R, n)`` (non-negative counts), returning ``(R,)``.
WeightedMetric = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def r_squared(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Coefficient of determination ``1 - Σ(y - ŷ)² / Σ(y - ȳ)²``.

    Args:
        predictions: ``(n,)`` predicted values ``ŷ``.
        targets: ``(n,)`` true values ``y``.

    Returns:
        R² (1 for a perfect fit, 0 for the targets' mean, negative when worse); NaN when
        the targets are constant.
    """
    predictions, targets = _vectors(predictions, targets)
    total = float(np.sum((targets - targets.mean()) ** 2))
    if total == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((targets - predictions) ** 2)) / total


def mean_absolute_error(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Mean of ``|y - ŷ|`` over ``(n,)`` predictions and targets, in the targets' units."""
    predictions, targets = _vectors(predictions, targets)
    return float(np.mean(np.abs(targets - predictions)))


def _vectors(predictions: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predictions = np.asarray(predictions, np.float64)
    targets = np.asarray(targets, np.float64)
    if predictions.ndim != 1 or predictions.shape != targets.shape or len(targets) == 0:
        raise ValueError(
            f"need two non-empty vectors of one length, got {predictions.shape}, {targets.shape}"
        )
    return predictions, targets


def _signs(values: np.ndarray) -> np.ndarray:
    """``(n, n)`` matrix of ``sign(v_i - v_j)``."""
    return np.sign(values[:, None] - values[None, :])


def weighted_kendall_tau(
    predictions: np.ndarray, targets: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Kendall τ-b of the networks drawn ``counts`` times each, for many draws at once.

    Equal to :func:`lopt.predict.kendall_tau` of the vectors in which network ``i`` is
    repeated ``counts[r, i]`` times (see the module's docstring).

    Args:
        predictions: ``(n,)`` predictions.
        targets: ``(n,)`` true values.
        counts: ``(R, n)`` non-negative draw counts, one row per resample.

    Returns:
        ``(R,)`` τ-b per resample; NaN where a resample has no untied pair.
    """
    predictions, targets = _vectors(predictions, targets)
    counts = np.asarray(counts, np.float64)
    sign_x, sign_y = _signs(predictions), _signs(targets)
    quadratic = lambda matrix: np.einsum("rn,rn->r", counts @ matrix, counts)
    concordance = quadratic(sign_x * sign_y)
    untied = quadratic(np.abs(sign_x)) * quadratic(np.abs(sign_y))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(untied > 0, concordance / np.sqrt(untied), np.nan)


def weighted_mean_absolute_error(
    predictions: np.ndarray, targets: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """:func:`mean_absolute_error` of the resamples ``counts`` ``(R, n)``; returns ``(R,)``."""
    predictions, targets = _vectors(predictions, targets)
    counts = np.asarray(counts, np.float64)
    return counts @ np.abs(targets - predictions) / counts.sum(axis=1)


class Interval(NamedTuple):
    """A bootstrap confidence interval of a difference ``first - second``.

    Attributes:
        estimate: the difference on the data as observed (mean over splits and seeds).
        low: the lower end of the percentile interval.
        high: the upper end.
        confidence: the interval's nominal coverage, e.g. 0.95.
        resamples: how many bootstrap resamples gave a finite difference.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    resamples: int

    @property
    def holds(self) -> bool:
        """Whether the interval lies entirely above 0 (``first`` is better)."""
        return self.low > 0

    @property
    def reversed(self) -> bool:
        """Whether the interval lies entirely below 0 (``second`` is better)."""
        return self.high < 0

    @property
    def verdict(self) -> str:
        """``"holds"``, ``"reversed"`` or ``"undecided"`` (the interval contains 0)."""
        return "holds" if self.holds else "reversed" if self.reversed else "undecided"


def _split_difference(
    first: np.ndarray, second: np.ndarray, targets: np.ndarray, counts: np.ndarray, metric
) -> np.ndarray:
    """Mean metric over ``first``'s seeds minus that over ``second``'s, per resample."""
    mean = lambda runs: np.mean([metric(p, targets, counts) for p in runs], axis=0)
    return mean(first) - mean(second)


def paired_bootstrap(
    first: Sequence[np.ndarray],
    second: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    *,
    metric: WeightedMetric = weighted_kendall_tau,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Paired two-level bootstrap interval of ``metric(first) - metric(second)``.

    The difference is the mean over splits of (mean over ``first``'s seeds minus mean over
    ``second``'s seeds). Each resample draws the splits with replacement and, for every
    split drawn, its test networks with replacement, the same networks for both
    predictors; the interval is the percentile interval of the resampled differences.

    Args:
        first: per split ``s``, ``(seeds, n_s)`` test predictions of the first predictor
            (one row per training seed).
        second: the same for the second predictor (any number of seeds).
        targets: per split, the ``(n_s,)`` true values of its test networks.
        metric: a :data:`WeightedMetric`, larger is better (:func:`weighted_kendall_tau`).
        resamples: number of bootstrap resamples.
        confidence: the interval's coverage, in (0, 1).
        seed: seed of the resampling.

    Returns:
        The :class:`Interval`; resamples whose difference is not finite (a resample with
        no untied pair) are left out and not counted.
    """
    if not len(first) == len(second) == len(targets) > 0:
        raise ValueError(
            f"need the same splits for both predictors and the targets, got {len(first)}, "
            f"{len(second)}, {len(targets)}"
        )
    if not 0.0 < confidence < 1.0 or resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and resamples >= 1: {confidence}, {resamples}")
    runs = []
    for index, (a, b, y) in enumerate(zip(first, second, targets, strict=True)):
        a, b, y = np.atleast_2d(a), np.atleast_2d(b), np.asarray(y)
        if a.shape[1] != len(y) or b.shape[1] != len(y):
            raise ValueError(
                f"split {index}: predictions {a.shape}, {b.shape} do not match {len(y)} targets"
            )
        runs.append((a, b, y))
    observed = [_split_difference(a, b, y, np.ones((1, len(y))), metric)[0] for a, b, y in runs]
    rng = np.random.default_rng(seed)
    splits = len(runs)
    drawn = rng.integers(0, splits, size=(resamples, splits))  # outer level: the splits
    differences = np.empty((resamples, splits))
    for index, (a, b, y) in enumerate(runs):
        where = drawn == index
        inner = rng.integers(0, len(y), size=(int(where.sum()), len(y)))  # inner: networks
        counts = np.zeros((len(inner), len(y)))
        np.add.at(counts, (np.arange(len(inner))[:, None], inner), 1.0)
        differences[where] = _split_difference(a, b, y, counts, metric)
    totals = differences.mean(axis=1)
    totals = totals[np.isfinite(totals)]
    if len(totals) == 0:
        raise ValueError("no bootstrap resample gave a finite difference")
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(totals, [tail, 1.0 - tail])
    return Interval(float(np.mean(observed)), float(low), float(high), confidence, len(totals))
