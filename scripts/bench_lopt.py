"""Times one inner training step (batch, loss + gradient, optimizer update, apply) per task.

Every optimizer runs the same jitted step, ``--steps`` of them unrolled with ``lax.scan``
per call so dispatch overhead does not count; calls of all optimizers are interleaved
round by round so that load from other processes affects them alike. Prints the median
time per step and the ratios to Adam and of UNF to Deep Sets.

    python scripts/bench_lopt.py                      # all four tasks
    python scripts/bench_lopt.py --tasks mlp_digits --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

import lopt.learned as learned
import lopt.tasks as tasks
from lopt.bench.timing import jax_platform, parse_timing_args
from lopt.meta.population import train_step

TASKS = ("mlp_digits", "cnn_digits", "rnn_text", "transformer_text")
OPTIMIZERS = ("adam", "deepsets", "nfn", "unf")


def make_run(task, opt, steps):
    """A jitted function running ``steps`` inner steps from ``(params, state)``."""

    def step(carry, key):
        theta, params, state = carry
        params, state, loss = train_step(task, opt, theta, params, state, key)
        return (theta, params, state), loss

    @jax.jit
    def run(theta, params, state, key):
        (_, params, state), losses = jax.lax.scan(
            step, (theta, params, state), jax.random.split(key, steps)
        )
        return params, state, losses

    return run


def bench_task(name, optimizers, steps, rounds):
    """Median seconds per step of each optimizer on one task."""
    task = tasks.get_task(name)
    params = task.init(jax.random.key(0))
    runs = {}
    for opt_name in optimizers:
        opt = learned.make_optimizer(opt_name, task.spec)
        theta = opt.init_meta(jax.random.key(1), params)
        state = opt.init(params)
        run = make_run(task, opt, steps)
        jax.block_until_ready(run(theta, params, state, jax.random.key(2)))  # compile
        runs[opt_name] = (run, (theta, params, state))
    times = {opt_name: [] for opt_name in optimizers}
    for index in range(rounds):
        for opt_name, (run, args) in runs.items():
            key = jax.random.key(100 + index)
            start = time.perf_counter()
            jax.block_until_ready(run(*args, key))
            times[opt_name].append((time.perf_counter() - start) / steps)
    size = sum(leaf.size for leaf in jax.tree.leaves(params))
    return size, {opt_name: statistics.median(values) for opt_name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    parser.add_argument("--steps", type=int, default=20, help="inner steps per timed call")
    parser.add_argument("--rounds", type=int, default=15, help="timed calls per optimizer")
    args = parse_timing_args(parser)
    print(f"{jax_platform()}; median of {args.rounds} calls of {args.steps} scanned steps")
    header = (
        f"{'task':<18}{'params':>8}"
        + "".join(f"{o + ' ms':>12}" for o in args.optimizers)
        + "".join(f"{o + '/adam':>15}" for o in args.optimizers if o != "adam")
    )
    has_pair = "unf" in args.optimizers and "deepsets" in args.optimizers
    if has_pair:
        header += f"{'unf/deepsets':>14}"
    print(header)
    for name in args.tasks:
        size, seconds = bench_task(name, args.optimizers, args.steps, args.rounds)
        row = f"{name:<18}{size:>8}" + "".join(
            f"{seconds[o] * 1e3:>12.3f}" for o in args.optimizers
        )
        if "adam" in seconds:
            row += "".join(
                f"{seconds[o] / seconds['adam']:>15.2f}" for o in args.optimizers if o != "adam"
            )
        if has_pair:
            row += f"{seconds['unf'] / seconds['deepsets']:>14.2f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
