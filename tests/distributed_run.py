"""A meta-training run over a global device mesh, for tests/test_distributed.py.

    python tests/distributed_run.py OUT.npz --devices 4 [--processes 2 --process-id 0 --port P]

Runs PES and TBPTT on the quadratic problem for a few outer steps, with episodes shorter
than a truncation (resets inside it) and initialisations that overflow (non-finite
particles), and writes every leaf of the final states and the metrics (process 0 only).
``--devices 1`` is the plain one-device path. The forced host device count must be set in
``XLA_FLAGS`` by the caller, before JAX starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from test_meta_problems import LearnedMomentum, QuadraticTask

from lopt.distributed import (
    DistributedSettings,
    initialize,
    is_main_process,
    particle_mesh,
    to_host,
)
from lopt.meta import make_meta_trainer, pes, tbptt

OUTER_STEPS = 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.processes > 1:
        initialize(DistributedSettings(f"localhost:{args.port}", args.processes, args.process_id))
    mesh = particle_mesh(args.devices, "particles")
    results: dict[str, np.ndarray] = {}
    for name, estimator in (("pes", pes(4, 3, 0.1)), ("tbptt", tbptt(8, 3))):
        trainer = make_meta_trainer(
            QuadraticTask(blowup_fraction=0.2), LearnedMomentum(), estimator, schedule=5, mesh=mesh
        )
        state = trainer.init(jax.random.PRNGKey(0))
        for step in range(OUTER_STEPS):
            state, metrics = trainer.step(state)
            for key, value in to_host(metrics).items():
                results[f"{name}/metrics/{step}/{key}"] = np.asarray(value)
        for index, leaf in enumerate(jax.tree.leaves(to_host(state))):
            results[f"{name}/state/{index}"] = np.asarray(leaf)
    if is_main_process():
        np.savez(args.out, **results)


if __name__ == "__main__":
    main()
