"""The run's loss plot: meta-loss, meta-objective and validation against the outer step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lopt.evaluation.validation import Reference


def plot_losses(
    records: Sequence[dict[str, Any]],
    path: Path,
    title: str,
    reference: Reference | None = None,
) -> Path:
    """Saves meta-loss and meta-objective against the outer step as a PNG.

    Args:
        records: the run's metrics records.
        path: the PNG to write.
        title: the figure's title.
        reference: the validation's reference levels; with them a third panel shows the
            validation loss with the initial theta's and the reference Adam's levels as
            horizontal lines.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    panels = 3 if reference is not None else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    for axis, key, label in (
        (axes[0], "meta_loss", "mean inner training loss"),
        (axes[1], "objective", "meta-objective"),
    ):
        axis.plot(steps, [r.get(key, math.nan) for r in records], lw=1.5)
        axis.set_xlabel("outer step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    if reference is not None:
        plot_validation(axes[2], records, reference)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_validation(axis: Any, records: Sequence[dict[str, Any]], reference: Reference) -> None:
    """Draws the validated records' loss on ``axis`` (a matplotlib axis), starting at the
    initial theta's, with the initial theta's and the reference Adam's levels."""
    key = "val_final_loss_gmean"
    validated = [r for r in records if math.isfinite(r.get(key, math.nan))]
    theta0, adam = reference.theta0.score(), reference.adam.score()
    axis.plot(
        [0] + [r["step"] for r in validated],
        [theta0] + [r[key] for r in validated],
        marker="o",
        ms=3,
        lw=1.5,
        label="theta",
    )
    axis.axhline(theta0, color="tab:gray", ls="--", label="theta0")
    axis.axhline(adam, color="tab:red", ls=":", label=f"Adam (lr {reference.adam_learning_rate:g})")
    levels = [theta0, adam] + [r[key] for r in validated]
    if all(v > 0 and math.isfinite(v) for v in levels):
        axis.set_yscale("log")
    axis.set_xlabel("outer step")
    axis.set_ylabel("validation final training loss\n(geometric mean over seeds)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
