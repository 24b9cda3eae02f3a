"""Benchmark of meta-training: outer-step time per estimator and its overhead over inner steps.

For each task and estimator (PES, truncated backprop, full-horizon ES) it builds the
meta-trainer of one learned optimizer and reports

* the compile time of the outer step (first call),
* the median time of one outer step and the particle-steps per second it achieves,
* for PES, the *overhead ratio*: outer-step time ÷ (2·P·K × the time of one jitted inner
  step of the same optimizer on one particle, measured alone). Below 1 means vmapping the
  population is cheaper than running its particles one by one.

The single-particle reference runs K scanned inner steps per call (dispatch excluded);
calls of every configuration are interleaved round by round so that machine noise hits
them alike.

    python scripts/bench_meta.py
    python scripts/bench_meta.py --tasks mlp_digits --optimizer deepsets --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import optax

import lopt.learned as learned
import lopt.meta as meta
import lopt.tasks as tasks
from lopt.bench.timing import jax_platform, parse_timing_args
from lopt.meta.base import broadcast_theta

TASKS = ("mlp_digits", "transformer_text")
ESTIMATORS = ("pes", "tbptt", "full_es")


def estimators(pairs: int, truncation: int, sigma: float) -> dict[str, meta.Estimator]:
    return {
        "pes": meta.pes(pairs, truncation, sigma),
        "tbptt": meta.tbptt(2 * pairs, truncation),
        "full_es": meta.full_es(pairs, sigma),
    }


def single_particle_run(unroller, theta, steps: int):
    """A jitted call advancing one particle ``steps`` inner steps (no resets)."""
    population = unroller.init_population(jax.random.PRNGKey(3), 1, 1, False)
    thetas = broadcast_theta(theta, 1)

    @jax.jit
    def run(population):
        population, record = unroller.unroll(thetas, population, steps, reset=False)
        return population, record.loss

    return run, population


def timed(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def bench_task(name: str, args) -> list[str]:
    task = tasks.get_task(name)
    opt = learned.make_optimizer(args.optimizer, task.spec)
    rows = []
    trainers, states, compile_times = {}, {}, {}
    chosen = estimators(args.pairs, args.truncation, args.sigma)
    for est_name, estimator in ((name, chosen[name]) for name in args.estimators):
        schedule = args.full_episode if est_name == "full_es" else args.episode
        trainer = meta.make_meta_trainer(task, opt, estimator, optax.adam(1e-3), schedule=schedule)
        state = trainer.init(jax.random.PRNGKey(0))
        start = time.perf_counter()
        state, _ = jax.block_until_ready(trainer.step(state))
        compile_times[est_name] = time.perf_counter() - start
        trainers[est_name], states[est_name] = trainer, state

    reference_unroller = trainers["pes"].unroller
    run, particle = single_particle_run(reference_unroller, states["pes"].theta, args.truncation)
    jax.block_until_ready(run(particle))

    times = {est_name: [] for est_name in trainers}
    single = []
    for _ in range(args.rounds):
        for est_name, trainer in trainers.items():
            start = time.perf_counter()
            states[est_name], metrics = trainer.step(states[est_name])
            jax.block_until_ready(metrics)
            times[est_name].append(time.perf_counter() - start)
        single.append(timed(run, particle) / args.truncation)

    inner_step = statistics.median(single)
    for est_name, trainer in trainers.items():
        outer = statistics.median(times[est_name])
        steps = trainer.inner_steps_per_step
        overhead = outer / (steps * inner_step)
        rows.append(
            f"{name:<18}{est_name:<9}{steps:>7}{compile_times[est_name]:>12.2f}"
            f"{outer * 1e3:>12.1f}{steps / outer:>14.0f}{overhead:>11.2f}"
        )
    rows.append(
        f"{'':<18}{'1 step':<9}{1:>7}{'':>12}{inner_step * 1e3:>12.3f}"
        f"{1 / inner_step:>14.0f}{'':>11}"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--optimizer", default="unf", choices=sorted(learned.LEARNED))
    parser.add_argument(
        "--estimators",
        nargs="+",
        default=list(ESTIMATORS),
        choices=ESTIMATORS,
    )
    parser.add_argument("--pairs", type=int, default=8, help="antithetic pairs P")
    parser.add_argument("--truncation", type=int, default=20, help="inner steps K per estimate")
    parser.add_argument("--sigma", type=float, default=0.01)
    parser.add_argument("--episode", type=int, default=200, help="episode length (PES, TBPTT)")
    parser.add_argument("--full-episode", type=int, default=20, help="episode length (full ES)")
    parser.add_argument("--rounds", type=int, default=7, help="timed outer steps per estimator")
    args = parse_timing_args(parser)
    print(
        f"{jax_platform()}; optimizer {args.optimizer}, "
        f"P={args.pairs} pairs, K={args.truncation}; median of {args.rounds} outer steps"
    )
    print(
        f"{'task':<18}{'est.':<9}{'steps':>7}{'compile s':>12}{'outer ms':>12}"
        f"{'inner steps/s':>14}{'overhead':>11}"
    )
    for name in args.tasks:
        for row in bench_task(name, args):
            print(row, flush=True)
    print(
        "steps: particle-steps per outer step (full ES: 2P x episode); overhead: outer time "
        "/ (steps x the single-particle step time on the '1 step' row)"
    )


if __name__ == "__main__":
    main()
