"""``lopt-export``: write a checkpoint's learned optimizer in the saved-optimizer format.

    lopt-export runs/mlp/2025-01-01_12-00-00 -o my_optimizer          # latest checkpoint
    lopt-export runs/mlp/2025-01-01_12-00-00/checkpoints/500 -o opt500  # a given step
    lopt-export runs/mlp/2025-01-01_12-00-00 -o last --theta last       # not the best
    lopt-export runs/mlp/2025-01-01_12-00-00 -o my_optimizer --overwrite  # replace it

A checkpoint holds two thetas: the best by meta-validation up to its step (exported by
default, what ``optimizer/`` holds at the end of a run) and the one of its step (``--theta
last``). A run without validation has only the latter. An output directory that already
holds a saved optimizer is replaced only with ``--overwrite``.

The output is what :func:`lopt.learned.save_optimizer` writes and
:func:`lopt.learned.load_optimizer` reads (an optax transformation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lopt import checkpoint
from lopt.checkpoint import Checkpointer, CheckpointError, leaf_infos, nested_dict
from lopt.cli.common import RunError, build_task
from lopt.learned import load_learned_optimizer, optimizer_from_config, save_optimizer
from lopt.learned.serialization import CONFIG_FILE, THETA_FILE, SavedOptimizerError
from lopt.run import THETAS, theta_location


def locate(path: str | Path, step: int | None = None) -> tuple[Checkpointer, int]:
    """The checkpoints and step that ``path`` names.

    Args:
        path: a run directory, its ``checkpoints/`` directory, or one step's directory.
        step: the step to take (default: the step ``path`` names, else the latest).

    Raises:
        RunError: no checkpoint there (see :func:`lopt.checkpoint.locate`).
    """
    try:
        return checkpoint.locate(path, step)
    except CheckpointError as err:
        raise RunError(str(err)) from err


def export(
    path: str | Path,
    output: str | Path,
    step: int | None = None,
    which: str = "best",
    overwrite: bool = False,
) -> Path:
    """Exports the learned optimizer of a checkpoint to ``output``.

    Args:
        path: run directory, checkpoints directory, or step directory.
        output: the saved-optimizer directory to write.
        step: checkpoint step (default: see :func:`locate`).
        which: ``"best"`` (by validation; the checkpoint's own theta when the run had no
            validation) or ``"last"`` (the checkpoint's own theta).
        overwrite: replace the saved optimizer ``output`` may already hold.

    Returns:
        ``output`` as a ``Path``.

    Raises:
        RunError: ``output`` cannot or may not be written; see :func:`check_output`.
        CheckpointError: no usable checkpoint.
    """
    if which not in THETAS:
        raise RunError(f"which theta: expected one of {THETAS}, got {which!r}")
    check_output(Path(output), overwrite)
    checkpoints, step = locate(path, step)
    with checkpoints:
        leaves, meta = checkpoints.restore_leaves(step)
    saved = meta.get("config") or {}
    if "run" not in saved or "optimizer" not in saved:
        raise CheckpointError(
            f"checkpoint step {step} in {checkpoints.directory} has no run config"
        )
    theta = nested_dict(leaves, leaf_infos(meta), theta_location(saved["run"], which))
    # The learned rules need the permutation spec of the task they were trained on.
    task = build_task(saved["run"]["task"])
    opt = optimizer_from_config(saved["optimizer"], task.spec)
    output = save_optimizer(output, opt, theta)
    try:
        load_learned_optimizer(output, task.spec)
    except SavedOptimizerError as err:
        raise CheckpointError(f"the exported optimizer does not load back: {err}") from err
    return output


def check_output(target: Path, overwrite: bool = False) -> None:
    """Refuses an output that is a file, a non-empty directory holding no saved optimizer,
    or (unless ``overwrite``) one holding a saved optimizer.

    Raises:
        RunError: naming the output and what to do.
    """
    if target.exists() and not target.is_dir():
        raise RunError(
            f"{target} exists and is not a directory: the output is a saved-optimizer "
            "directory (config.json and theta.msgpack); choose another -o"
        )
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not (target / CONFIG_FILE).is_file() and not (target / THETA_FILE).is_file():
        raise RunError(
            f"{target} is a non-empty directory that holds no saved optimizer; refusing to "
            "write into it (choose another -o)"
        )
    if not overwrite:
        raise RunError(
            f"{target} already holds a saved optimizer; pass --overwrite to replace it, or "
            "choose another -o"
        )


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lopt-export``."""
    parser = argparse.ArgumentParser(
        prog="lopt-export",
        description="Export the learned optimizer of a lopt-train checkpoint (for "
        "lopt.learned.load_optimizer).",
    )
    parser.add_argument("path", help="run directory, its checkpoints/ directory, or a step's")
    parser.add_argument("-o", "--output", required=True, help="directory to write")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument(
        "--theta",
        choices=THETAS,
        default="best",
        help="the best theta by validation up to that step (default), or the step's own",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the saved optimizer the output directory already holds",
    )
    args = parser.parse_args(argv)
    try:
        output = export(args.path, args.output, args.step, args.theta, args.overwrite)
    except (RunError, CheckpointError) as err:
        print(f"lopt-export: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"exported {output}")


if __name__ == "__main__":
    main()
