"""``lopt-predict``: train a weight-space predictor on a zoo and report its test Kendall τ.

    lopt-predict zoo=rnn model=unf seed=0
    lopt-predict -m zoo=rnn model=unf,statnn,deepsets seed=0,1,2
    lopt-predict -m zoo=cnn model=nfn,unf,statnn,deepsets seed=0,1,2

The run directory gets ``result.json`` (test and validation τ, early-stopping epoch, the
invariance check, time, the resolved config, the zoo's path relative to the run directory)
and ``predictions.npz`` (test predictions and true values); ``scripts/weight_space_page.py``
reads both. Returns τ to a sweeper.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from lopt.cli import help as cli_help  # noqa: F401  (registers the resolver of --help)
from lopt.cli.common import (
    finish_context,
    run_in_output_dir,
    run_relative,
    start_context,
    to_container,
    write_json,
)
from lopt.predict import FitSettings, run_prediction
from lopt.zoo import ZooFormatError, load_zoo


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Loads the zoo, trains and evaluates the predictor, writes the results."""
    zoo_dir = to_absolute_path(cfg.zoo.path)
    zoo = load_zoo(zoo_dir)
    if cfg.zoo.target not in zoo.metrics:
        raise ValueError(f"zoo has no metric {cfg.zoo.target!r}; it has {sorted(zoo.metrics)}")
    model = OmegaConf.to_container(cfg.model, resolve=True)
    kind = model.pop("kind")
    model["head"] = tuple(model["head"])
    fit = FitSettings(**OmegaConf.to_container(cfg.fit, resolve=True))
    start, context = time.perf_counter(), start_context()
    result = run_prediction(
        zoo.params,
        zoo.spec,
        zoo.metrics[cfg.zoo.target],
        kind,
        int(cfg.seed),
        split_fractions=tuple(cfg.split),
        split_seed=int(cfg.split_seed),
        model_options=model,
        settings=fit,
    )
    summary = {
        "zoo": cfg.zoo.name,
        "zoo_path": run_relative(zoo_dir, run_dir),
        "zoo_networks": zoo.size,
        "target": cfg.zoo.target,
        "model": kind,
        "seed": int(cfg.seed),
        "kendall_tau": _finite_or_none(result.tau),
        "validation_tau": _finite_or_none(result.validation_tau),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "networks_used": result.kept,
        "test_networks": len(result.targets),
        "invariance_error": result.invariance_error,
        "seconds": round(time.perf_counter() - start, 1),
        "environment": finish_context(context),
        "config": to_container(cfg),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "result.json", summary)
    np.savez(run_dir / "predictions.npz", predictions=result.predictions, targets=result.targets)
    print(
        f"lopt-predict: {summary['zoo']} {kind} seed {summary['seed']}: Kendall tau "
        f"{result.tau:.4f} (validation {result.validation_tau:.4f}, best epoch "
        f"{result.best_epoch} of {result.epochs_run}, {summary['seconds']} s)"
    )
    return summary


@hydra.main(version_base="1.3", config_path="pkg://lopt.configs", config_name="predict")
def main(cfg: DictConfig) -> float:
    """Entry point of ``lopt-predict``."""
    summary = run_in_output_dir("lopt-predict", run, cfg, (ZooFormatError, ValueError))
    return summary["kendall_tau"]


if __name__ == "__main__":
    main()
