"""``lopt-train``: meta-train a learned optimizer from the command line (a Hydra app).

    lopt-train experiment=smoke                          # seconds
    lopt-train experiment=mlp lopt=nfn seed=1            # the paper's MLP setting
    lopt-train -m experiment=smoke lopt=unf,deepsets     # a sweep, one directory per run
    lopt-train experiment=mlp hydra.run.dir=runs/a resume=true   # continue runs/a
    lopt-train experiment=mlp devices=4 population=32    # 16 pairs over 4 devices
    srun lopt-train experiment=mlp devices=all hydra.run.dir=runs/$SLURM_JOB_ID  # many hosts

The app turns its config into :class:`lopt.run.RunSettings` and :class:`lopt.run.RunParts`
and calls :func:`lopt.run.train`, which writes the run directory (``config.yaml`` is the
resolved config). Every process of a multi-process run (``distributed.*``,
:mod:`lopt.distributed`) runs the same command in the same run directory.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lopt import run
from lopt.checkpoint import CheckpointError
from lopt.cli import help as cli_help
from lopt.cli import rundir, schema
from lopt.cli.common import (
    RunError,
    build_logger,
    build_parts,
    enable_compilation_cache,
    reference_cache_dir,
    to_container,
)
from lopt.distributed import initialize, is_main_process, settings_from
from lopt.evaluation.validation import ValidationSettings


def resolved_config(cfg: DictConfig) -> dict:
    """``cfg`` as a plain dict, refusing keys the schema does not know.

    Raises:
        RunError: an unknown key, or a value the schema rejects.
    """
    unknown = schema.unknown_keys(cfg)
    if unknown:
        raise RunError(
            f"unknown config keys {unknown}: the schema (lopt.cli.schema.TrainConfig and the "
            "groups' schemas) has no such options; `lopt-train --cfg job` lists the known ones"
        )
    try:
        return to_container(cfg)
    except Exception as err:
        raise RunError(f"invalid config: {err}") from err


def validation_settings(config: dict) -> ValidationSettings | None:
    """The run's validation settings (None when ``validation.every`` is not positive;
    ``num_steps: null`` is the meta-training horizon ``schedule.max_length``)."""
    options = dict(config["validation"])
    if options.pop("every") <= 0:
        return None
    if options["num_steps"] is None:
        options["num_steps"] = int(config["schedule"]["max_length"])
    options["adam_learning_rates"] = tuple(options["adam_learning_rates"])
    try:
        return ValidationSettings(**options)
    except ValueError as err:
        raise RunError(f"invalid validation settings: {err}") from err


def run_settings(config: dict) -> run.RunSettings:
    """The run settings of a resolved config, which is also the run's record.

    Raises:
        RunError: a count out of range, invalid validation settings, or ``start_at_tuned``
            without validation.
    """
    keys = ("name", "seed", "steps", "log_every", "checkpoint_every", "keep_checkpoints")
    keys += ("resume", "progress", "devices", "mesh_axis", "start_at_tuned")
    return run.RunSettings(
        **{key: config[key] for key in keys},
        validation=validation_settings(config),
        validate_every=config["validation"]["every"],
        reference_cache=reference_cache_dir(config.get("reference_cache", {})),
        record=config,
    )


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Runs (or resumes) the meta-training ``cfg`` describes, writing into ``run_dir``.

    Returns:
        The summary (also written to ``run_dir/summary.json``).

    Raises:
        RunError, CheckpointError: the run cannot start; nothing in ``run_dir`` was changed.
    """
    run_dir = Path(run_dir).absolute()
    config = resolved_config(cfg)
    settings = run_settings(config)
    parts = build_parts(config)
    return run.train(
        settings,
        parts,
        run_dir,
        logger=functools.partial(build_logger, config["logger"]),
        on_start=lambda: rundir.accept(run_dir, cfg, write=is_main_process()),
    )


def join_processes(cfg: DictConfig) -> None:
    """Joins the other processes of a multi-process run (``cfg.distributed``), before
    anything starts JAX's backend; the processes but the first then log warnings only.

    Raises:
        RunError: settings that cannot describe a run (see
            :func:`lopt.distributed.settings_from`).
    """
    distributed = OmegaConf.to_container(cfg.get("distributed") or {}, resolve=True)
    try:
        settings = settings_from(distributed)
    except ValueError as err:
        raise RunError(str(err)) from None
    initialize(settings)
    if not is_main_process():
        logging.getLogger("lopt").setLevel(logging.WARNING)


def _interrupt(number: int, frame: Any) -> None:
    del number, frame
    raise KeyboardInterrupt


def main() -> None:
    """Entry point of ``lopt-train``: registers the configs, then Hydra composes and runs."""
    schema.register_configs()
    cli_help.register_help_resolver()
    train_from_config()


@hydra.main(version_base="1.3", config_path="pkg://lopt.configs", config_name="train")
def train_from_config(cfg: DictConfig) -> float | None:
    """The run of the composed config (Hydra's task function); returns what a sweeper should
    minimise: the best validation loss, or the final meta-loss when validation is off."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    for noisy in ("jax", "absl"):  # Hydra logs INFO to the console; these are not for users
        logging.getLogger(noisy).setLevel(logging.WARNING)
    enable_compilation_cache(cfg.compilation_cache)
    signal.signal(signal.SIGTERM, _interrupt)  # while starting, like Ctrl-C
    try:
        join_processes(cfg)
        with rundir.run_directory(run_dir, cfg):
            summary = train(cfg, run_dir)
    except (RunError, CheckpointError) as err:
        print(f"lopt-train: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(
            "lopt-train: interrupted while starting (compiling, or validating theta0); no "
            f"checkpoint of this process was written in {run_dir}",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    if summary["interrupted_by"] is not None:
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
        overrides = [o for o in overrides if not o.startswith("hydra.run.dir=")]
        command = " ".join(["lopt-train", *overrides, f"hydra.run.dir={run_dir}", "resume=true"])
        print(
            f"lopt-train: stopped by {summary['interrupted_by']} at outer step "
            f"{summary['steps']}; the checkpoint and summary are written. To continue:\n"
            f"  {command}",
            file=sys.stderr,
        )
        raise SystemExit(128 + int(getattr(signal, summary["interrupted_by"])))
    loss = summary.get("final_meta_loss")
    if "validation" in summary:
        loss = summary["validation"]["best_score"]
    return float(loss) if loss is not None and np.isfinite(loss) else None


if __name__ == "__main__":
    main()
