"""``lopt-predict``: train a weight-space predictor on a zoo, or score networks with one.

    lopt-predict zoo=rnn model=unf seed=0
    lopt-predict -m zoo=rnn model=unf,statnn split_seed=0,1,2,3,4 seed=0,1,2
    lopt-predict mode=score predictor=runs/predict/rnn/unf_split0_seed0/predictor \\
        'params=[net_a.npz,net_b.msgpack]'

``mode=train`` (the default): the run directory gets ``result.json`` (test τ, R², mean
absolute error, validation τ, early-stopping epoch, the networks dropped as unreadable and
why, the invariance check, time, the resolved config, the zoo's path relative to the run
directory), ``predictions.npz`` (test predictions, true values and the test networks'
indices in the zoo, which pair the predictors of one split seed) and ``predictor/``, the
fitted predictor (:func:`lopt.predict.save_predictor`); ``scripts/weight_space_page.py``
reads the first two. Returns τ to a sweeper.

``mode=score``: loads ``predictor`` and predicts the metric of the networks in the
``params`` files (:func:`lopt.predict.read_network_file`: ``.npz`` or ``.msgpack``, one
network or a batch each), refusing networks of another weight space with what differs;
prints one line per network and writes ``scores.json`` to the run directory.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import hydra
import jax
import numpy as np
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from lopt.cli import help as cli_help
from lopt.cli.common import (
    finish_context,
    run_in_output_dir,
    run_relative,
    start_context,
    to_container,
    write_json,
)
from lopt.predict import (
    WEIGHTLESS,
    FitSettings,
    SavedPredictorError,
    WeightSpaceError,
    canonical_kind,
    load_predictor,
    read_network_file,
    run_prediction,
    save_predictor,
)
from lopt.zoo import ZooFormatError, load_zoo

MODES = ("train", "score")
PREDICTOR_DIR = "predictor"


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Loads the zoo, trains and evaluates the predictor, writes the results and saves it."""
    zoo_dir = to_absolute_path(cfg.zoo.path)
    zoo = load_zoo(zoo_dir)
    if cfg.zoo.target not in zoo.metrics:
        raise ValueError(f"zoo has no metric {cfg.zoo.target!r}; it has {sorted(zoo.metrics)}")
    model = OmegaConf.to_container(cfg.model, resolve=True)
    kind = canonical_kind(model.pop("kind"))
    model["head"] = tuple(model["head"])
    fit = FitSettings(**OmegaConf.to_container(cfg.fit, resolve=True))
    start, context = time.perf_counter(), start_context()
    result = run_prediction(
        zoo.params,
        zoo.spec,
        zoo.metrics[cfg.zoo.target],
        kind,
        int(cfg.seed),
        hyperparameters=zoo.hyperparameters,
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
        "split_seed": int(cfg.split_seed),
        "kendall_tau": _finite_or_none(result.tau),
        "r_squared": _finite_or_none(result.r_squared),
        "mean_absolute_error": _finite_or_none(result.mean_absolute_error),
        "validation_tau": _finite_or_none(result.validation_tau),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "networks_used": result.kept,
        "networks_dropped": result.dropped._asdict(),
        "test_networks": len(result.targets),
        "invariance_error": result.invariance_error,
        "seconds": round(time.perf_counter() - start, 1),
        "environment": finish_context(context),
        "config": to_container(cfg),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "result.json", summary)
    np.savez(
        run_dir / "predictions.npz",
        predictions=result.predictions,
        targets=result.targets,
        test_indices=result.test_indices,
    )
    provenance = {
        key: summary[key]
        for key in ("zoo", "zoo_networks", "model", "seed", "split_seed", "kendall_tau")
    } | {"zoo_description": zoo.manifest.get("description"), "split": list(cfg.split)}
    example = None if kind in WEIGHTLESS else jax.tree_util.tree_map(lambda w: w[0], zoo.params)
    save_predictor(
        run_dir / PREDICTOR_DIR,
        result.predictor,
        target_name=cfg.zoo.target,
        example=example,
        provenance=provenance,
    )
    dropped = sum(result.dropped)
    print(
        f"lopt-predict: {summary['zoo']} {kind} split {summary['split_seed']} seed "
        f"{summary['seed']}: Kendall tau {result.tau:.4f}, R2 {result.r_squared:.3f}, MAE "
        f"{result.mean_absolute_error:.4f} (validation tau {result.validation_tau:.4f}, best "
        f"epoch {result.best_epoch} of {result.epochs_run}, {dropped} networks dropped, "
        f"{summary['seconds']} s)"
    )
    return summary


def score(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Scores the networks of ``cfg.params`` with the saved ``cfg.predictor``."""
    if not cfg.predictor:
        raise ValueError("mode=score needs predictor=DIR (a saved predictor's directory)")
    files = [Path(to_absolute_path(str(name))) for name in (cfg.params or [])]
    if not files:
        raise ValueError("mode=score needs params=[FILE,...] (.npz or .msgpack parameter files)")
    predictor_dir = Path(to_absolute_path(str(cfg.predictor)))
    predictor = load_predictor(predictor_dir)
    rows = []
    for path in files:
        try:
            predictions = predictor.score(read_network_file(path))
        except WeightSpaceError as err:
            raise WeightSpaceError(f"{path}: {err}") from None
        rows.append({"file": run_relative(path, run_dir), "predictions": predictions.tolist()})
        shown = ", ".join(f"{value:.4f}" for value in predictions)
        print(f"lopt-predict: {path.name}: predicted {predictor.target_name} {shown}")
    summary = {
        "predictor": run_relative(predictor_dir, run_dir),
        "kind": predictor.fitted.kind,
        "target": predictor.target_name,
        "scores": rows,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "scores.json", summary)
    return summary


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Runs ``cfg.mode``: ``train`` (the default) or ``score``."""
    if cfg.mode not in MODES:
        raise ValueError(f"unknown mode {cfg.mode!r}; expected one of {MODES}")
    return train(cfg, run_dir) if cfg.mode == "train" else score(cfg, run_dir)


def main() -> None:
    """Entry point of ``lopt-predict``: registers the ``--help`` resolver, then Hydra composes
    and runs."""
    cli_help.register_help_resolver()
    run_from_config()


@hydra.main(version_base="1.3", config_path="pkg://lopt.configs", config_name="predict")
def run_from_config(cfg: DictConfig) -> float | None:
    """The run of the composed config (Hydra's task function)."""
    errors = (ZooFormatError, SavedPredictorError, FileNotFoundError, ValueError)
    summary = run_in_output_dir("lopt-predict", run, cfg, errors)
    return summary.get("kendall_tau")


if __name__ == "__main__":
    main()
