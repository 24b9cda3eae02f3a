"""Times plain Adam training of each inner task, alone and vmapped over independent runs.

For every task at its default size, one jitted call runs ``--steps`` Adam steps (batch
drawn inside jit, loss + gradient, update) with ``lax.scan`` so dispatch does not count.
The same function vmapped over ``--runs`` independent runs (own init key, own data keys)
gives run-steps/s; the vectorisation speed-up is vmapped run-steps/s over single steps/s.
Single and vmapped calls are interleaved round by round (alternating which goes first) so
load from other processes affects both alike; medians are reported.

It also times compiling (lowering + XLA compile) the single-run function with the task
passed as a jit *argument* versus *closed over* (its data arrays then become constants of
the program), for each task and for an RNN task whose training stream is replaced by
``--big-text-mb`` MB of random bytes (the order of a real LM1B byte budget).

    python scripts/bench_tasks.py                              # all four tasks
    python scripts/bench_tasks.py --tasks mlp_digits --rounds 5 --big-text-mb 0
    python scripts/bench_tasks.py --tasks cnn_digits --unroll 20   # see make_run
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt.tasks as tasks
from lopt.bench.timing import jax_platform, parse_timing_args

TASKS = ("mlp_digits", "cnn_digits", "rnn_text", "transformer_text")
LEARNING_RATE = 1e-3

PyTree = Any
Run = Callable[[tasks.Task, PyTree, PyTree, jax.Array], tuple[PyTree, PyTree, jax.Array]]


def make_run(opt: optax.GradientTransformation, steps: int, unroll: int = 1) -> Run:
    """``run(task, params, state, key)``: ``steps`` Adam steps, one data key per step.

    ``unroll`` is passed to ``lax.scan``: on XLA:CPU a convolution's kernel gradient inside
    a loop body runs ~30x slower than outside one (jax-ml/jax#12868), which unrolling
    (``unroll=steps``) avoids.
    """

    def run(task: tasks.Task, params: PyTree, state: PyTree, key: jax.Array):
        def step(carry, step_key):
            params, state = carry
            loss, grads = jax.value_and_grad(task.loss)(params, task.batch(step_key))
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        keys = jax.random.split(key, steps)
        (params, state), losses = jax.lax.scan(step, (params, state), keys, unroll=unroll)
        return params, state, losses

    return run


def timed_call(fn: Callable[..., Any], *args: Any) -> float:
    """Wall-clock seconds of one call, waiting for its results."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def bench_throughput(
    task: tasks.Task, steps: int, rounds: int, runs: int, unroll: int = 1
) -> tuple[int, float, float]:
    """Parameter count, median single steps/s and median vmapped run-steps/s of one task."""
    opt = optax.adam(LEARNING_RATE)
    run = make_run(opt, steps, unroll)
    single = jax.jit(run)
    vmapped = jax.jit(jax.vmap(run, in_axes=(None, 0, 0, 0)))

    params = jax.jit(task.init)(jax.random.key(0))
    state = opt.init(params)
    many_params = jax.jit(jax.vmap(task.init))(jax.random.split(jax.random.key(1), runs))
    many_state = jax.vmap(opt.init)(many_params)

    def single_args(index: int) -> tuple:
        return task, params, state, jax.random.key(1000 + index)

    def vmapped_args(index: int) -> tuple:
        keys = jax.random.split(jax.random.key(2000 + index), runs)
        return task, many_params, many_state, keys

    timed_call(single, *single_args(-1))  # compile
    timed_call(vmapped, *vmapped_args(-1))
    single_times, vmapped_times = [], []
    for index in range(rounds):
        calls = [(single, single_args(index), single_times)]
        calls.append((vmapped, vmapped_args(index), vmapped_times))
        if index % 2:
            calls.reverse()
        for fn, args, times in calls:
            jax.block_until_ready(args)
            times.append(timed_call(fn, *args))
    size = sum(leaf.size for leaf in jax.tree.leaves(params))
    return (
        size,
        steps / statistics.median(single_times),
        runs * steps / statistics.median(vmapped_times),
    )


def compile_seconds(task: tasks.Task, steps: int, repeats: int) -> tuple[float, float]:
    """Median seconds to lower and compile the single run, task as argument vs closed over.

    Every repeat builds a fresh function, so nothing is served from jax's caches.
    """
    opt = optax.adam(LEARNING_RATE)
    params = jax.jit(task.init)(jax.random.key(0))
    state = opt.init(params)
    key = jax.random.key(3)
    as_argument, closed_over = [], []
    for _ in range(repeats):
        run = make_run(opt, steps)
        start = time.perf_counter()
        jax.jit(run).lower(task, params, state, key).compile()
        as_argument.append(time.perf_counter() - start)

        run = make_run(opt, steps)
        closure = jax.jit(lambda params, state, key, run=run: run(task, params, state, key))
        start = time.perf_counter()
        closure.lower(params, state, key).compile()
        closed_over.append(time.perf_counter() - start)
    return statistics.median(as_argument), statistics.median(closed_over)


def with_big_text(task: tasks.Task, megabytes: int) -> tasks.Task:
    """``task`` with its training stream replaced by ``megabytes`` MB of random bytes."""
    tokens = np.random.default_rng(0).integers(0, 256, megabytes << 20, dtype=np.uint8)
    data = {"train": {"tokens": jnp.asarray(tokens)}, "test": task.data["test"]}
    return dataclasses.replace(task, name=f"{task.name}+{megabytes}MB", data=data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--steps", type=int, default=20, help="Adam steps per timed call")
    parser.add_argument("--rounds", type=int, default=15, help="timed calls of each variant")
    parser.add_argument("--runs", type=int, default=8, help="independent runs under vmap")
    parser.add_argument("--unroll", type=int, default=1, help="lax.scan unroll of the steps")
    parser.add_argument("--compile-repeats", type=int, default=3, help="compiles per variant")
    parser.add_argument(
        "--big-text-mb", type=int, default=64, help="MB of tokens for the closure test; 0 skips"
    )
    args = parse_timing_args(parser)
    print(
        f"{jax_platform()}; median of {args.rounds} "
        f"interleaved calls of {args.steps} scanned Adam steps (unroll {args.unroll}); vmap over "
        f"{args.runs} runs"
    )
    vmap_label = f"run-steps/s x{args.runs}"
    print(f"{'task':<18}{'params':>8}{'steps/s':>12}{vmap_label:>20}{'speed-up':>10}")
    built = {}
    for name in args.tasks:
        task = built[name] = tasks.get_task(name)
        size, single, vmapped = bench_throughput(
            task, args.steps, args.rounds, args.runs, args.unroll
        )
        print(f"{name:<18}{size:>8}{single:>12.0f}{vmapped:>20.0f}{vmapped / single:>10.2f}")

    print(f"\ncompile seconds (lower + compile, median of {args.compile_repeats})")
    print(f"{'task':<18}{'data MB':>8}{'argument':>12}{'closed over':>14}{'difference':>12}")
    compile_tasks = list(built.values())
    if args.big_text_mb > 0:
        compile_tasks.append(
            with_big_text(built.get("rnn_text") or tasks.get_task("rnn_text"), args.big_text_mb)
        )
    for task in compile_tasks:
        megabytes = sum(leaf.nbytes for leaf in jax.tree.leaves(task)) / 2**20
        argument, closed = compile_seconds(task, args.steps, args.compile_repeats)
        print(
            f"{task.name:<18}{megabytes:>8.2f}{argument:>12.3f}{closed:>14.3f}"
            f"{closed - argument:>+12.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
