"""Trains a small slice of a configured zoo, to time it and to see its networks' metrics.

    python scripts/zoo_slice.py rnn_paper --networks 16 --steps 100
    python scripts/zoo_slice.py rnn_paper --networks 64 --steps 2000 4000 8000
    python scripts/zoo_slice.py rnn_paper --set options.hidden_size=128 --steps 4000

Reads ``configs/zoo/<name>.yaml`` (without Hydra: ``defaults`` naming other configs of
the group are merged under it, as Hydra does with ``_self_`` last),
trains ``--networks`` networks in one vmapped call (the zoo's own programs,
:func:`lopt.zoo.make_zoo_trainer`) for each ``--steps`` (every network that many steps;
the config's other ranges as they are), and prints per run: the compile and training time,
seconds per network, the extrapolation to the config's count and steps (training time is
linear in both: every network runs the same program), and the spread of each metric with
the share of networks whose target reaches 0.5 and 0.9.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
import yaml

from lopt.zoo import HyperparameterRanges, make_problem, make_zoo_trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "zoo"


def read_config(name: str) -> dict:
    """``configs/zoo/<name>.yaml`` with the configs its ``defaults`` name merged under it."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    merged: dict = {}
    for parent in config.pop("defaults", []):
        if parent != "_self_":
            merged |= read_config(parent)
    return merged | config


def slice_run(config: dict, networks: int, steps: int, seed: int) -> dict:
    """Trains ``networks`` of the zoo ``config`` for ``steps`` steps each; times and metrics."""
    ranges = {key: tuple(value) for key, value in config["ranges"].items()}
    ranges["steps"] = (steps, steps)
    problem = make_problem(config["problem"], **config["options"])
    trainer = make_zoo_trainer(problem, HyperparameterRanges(**ranges), networks)
    start = time.perf_counter()
    _, _, metrics = jax.block_until_ready(trainer.train(seed, np.arange(networks)))
    seconds = time.perf_counter() - start
    config_steps = max(config["ranges"]["steps"])
    per_network = seconds / networks * config_steps / steps
    target = np.asarray(metrics[config["target"]])
    return {
        "networks": networks,
        "steps": steps,
        "compile_s": round(trainer.compile_seconds, 2),
        "train_s": round(seconds, 2),
        "s_per_network_at_config_steps": round(per_network, 4),
        "config_steps": config_steps,
        "extrapolated_s": {
            str(count): round(per_network * count) for count in (config["count"], 10_000)
        },
        "metrics": {
            name: [round(float(q), 4) for q in np.quantile(np.asarray(v), [0.1, 0.5, 0.9])]
            for name, v in metrics.items()
        },
        "target_at_least_0.5": round(float(np.mean(target >= 0.5)), 3),
        "target_at_least_0.9": round(float(np.mean(target >= 0.9)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("zoo", help="a config of configs/zoo, e.g. rnn_paper")
    parser.add_argument("--networks", type=int, default=16, help="networks in the slice")
    parser.add_argument("--steps", type=int, nargs="+", help="steps per network (default: max)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set", nargs="*", default=[], help="overrides KEY.SUB=VALUE (VALUE read as YAML)"
    )
    args = parser.parse_args()
    config = read_config(args.zoo)
    for item in args.set:
        key, _, value = item.partition("=")
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = yaml.safe_load(value)
    device = jax.devices()[0]
    for steps in args.steps or [max(config["ranges"]["steps"])]:
        result = slice_run(config, args.networks, steps, args.seed)
        header = {"zoo": args.zoo, "set": args.set, "device": str(device)}
        print(json.dumps({**header, **result}), flush=True)


if __name__ == "__main__":
    main()
