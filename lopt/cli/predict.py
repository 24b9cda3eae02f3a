"""``lopt-predict``: train a weight-space predictor on a zoo and report its test Kendall τ.

    lopt-predict zoo=rnn model=unf seed=0
    lopt-predict -m zoo=rnn model=unf,statnn,deepsets seed=0,1,2
    lopt-predict -m zoo=cnn model=nfn,unf,statnn,deepsets seed=0,1,2

The run directory gets ``result.json`` (τ, early-stopping epoch, settings) and
``predictions.npz`` (test predictions and true values). Returns τ to a sweeper.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from lopt.predict import FitSettings, run_prediction
from lopt.zoo import ZooFormatError, load_zoo


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Loads the zoo, trains and evaluates the predictor, writes the results."""
    zoo = load_zoo(to_absolute_path(cfg.zoo.path))
    if cfg.zoo.target not in zoo.metrics:
        raise ValueError(f"zoo has no metric {cfg.zoo.target!r}; it has {sorted(zoo.metrics)}")
    model = OmegaConf.to_container(cfg.model, resolve=True)
    kind = model.pop("kind")
    model["head"] = tuple(model["head"])
    fit = FitSettings(**OmegaConf.to_container(cfg.fit, resolve=True))
    start = time.perf_counter()
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
        "target": cfg.zoo.target,
        "model": kind,
        "seed": int(cfg.seed),
        "kendall_tau": result.tau,
        "best_epoch": result.best_epoch,
        "networks_used": result.kept,
        "test_networks": len(result.targets),
        "seconds": round(time.perf_counter() - start, 1),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "result.json").write_text(json.dumps(summary, indent=1))
    np.savez(run_dir / "predictions.npz", predictions=result.predictions, targets=result.targets)
    return summary


@hydra.main(version_base="1.3", config_path="pkg://lopt.configs", config_name="predict")
def main(cfg: DictConfig) -> float:
    """Entry point of ``lopt-predict``."""
    try:
        summary = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ZooFormatError, ValueError) as err:
        print(f"lopt-predict: {err}", file=sys.stderr)
        sys.exit(2)
    print(
        f"{summary['zoo']} {summary['model']} seed {summary['seed']}: "
        f"Kendall tau {summary['kendall_tau']:.4f} (best epoch {summary['best_epoch']})"
    )
    return summary["kendall_tau"]


if __name__ == "__main__":
    main()
