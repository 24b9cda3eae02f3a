"""``lopt-zoo``: generate a model zoo (a Hydra app, like ``lopt-train``).

    lopt-zoo zoo=rnn                     # 2,000 GRU adders into zoos/rnn
    lopt-zoo zoo=cnn                     # 1,000 small CNNs on the 8x8 digits into zoos/cnn
    lopt-zoo -m zoo=rnn,cnn              # both

Rerunning with a larger ``zoo.count`` appends shards; other changed settings are refused.
The zoo directory gets ``manifest.json`` and ``shard_*.npz`` (see :mod:`lopt.zoo.storage`);
the run directory gets ``summary.json`` (size, compile and training time, metric spread; the
zoo's path relative to the run directory).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
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
from lopt.zoo import (
    HyperparameterRanges,
    ZooFormatError,
    ZooSettings,
    generate_zoo,
    load_zoo,
    make_problem,
)


def settings_from_config(zoo_cfg: DictConfig) -> ZooSettings:
    """The :class:`ZooSettings` a ``zoo`` config group describes."""
    ranges: dict[str, Any] = OmegaConf.to_container(zoo_cfg.ranges, resolve=True)
    return ZooSettings(
        count=int(zoo_cfg.count),
        shard_size=int(zoo_cfg.shard_size),
        chunk_size=int(zoo_cfg.chunk_size),
        ranges=HyperparameterRanges(**{key: tuple(value) for key, value in ranges.items()}),
    )


def metric_spread(values: np.ndarray) -> dict[str, float]:
    """Mean, deviation and quantiles of one metric over a zoo."""
    quantiles = np.quantile(values, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    names = ("min", "q10", "q25", "median", "q75", "q90", "max")
    return {"mean": float(np.mean(values)), "std": float(np.std(values))} | {
        name: float(q) for name, q in zip(names, quantiles, strict=True)
    }


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Generates (or resumes) the configured zoo and writes ``summary.json``."""
    options = OmegaConf.to_container(cfg.zoo.options, resolve=True)
    problem = make_problem(cfg.zoo.problem, **options)
    directory = Path(to_absolute_path(cfg.zoo.path))
    start, context = time.perf_counter(), start_context()
    manifest = generate_zoo(
        directory,
        problem,
        settings_from_config(cfg.zoo),
        int(cfg.seed),
        progress=bool(cfg.progress),
    )
    zoo = load_zoo(directory)
    summary = {
        "zoo": run_relative(directory, run_dir),
        "networks": zoo.size,
        "seconds_this_run": round(time.perf_counter() - start, 1),
        "seconds_all_shards": round(sum(s["seconds"] for s in zoo.manifest["shards"]), 1),
        "timing_this_run": manifest.get("timing"),
        "metrics": {
            name: metric_spread(values[np.isfinite(values)]) for name, values in zoo.metrics.items()
        },
        "non_finite": {name: int((~np.isfinite(v)).sum()) for name, v in zoo.metrics.items()},
        "environment": finish_context(context),
        "config": to_container(cfg),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "summary.json", summary)
    print(f"lopt-zoo: {zoo.size} networks in {directory} ({summary['seconds_this_run']} s)")
    return summary


def main() -> None:
    """Entry point of ``lopt-zoo``: registers the ``--help`` resolver, then Hydra composes
    and runs."""
    cli_help.register_help_resolver()
    run_from_config()


@hydra.main(version_base="1.3", config_path="pkg://lopt.configs", config_name="zoo")
def run_from_config(cfg: DictConfig) -> None:
    """The run of the composed config (Hydra's task function)."""
    run_in_output_dir("lopt-zoo", run, cfg, (ZooFormatError, ValueError))


if __name__ == "__main__":
    main()
