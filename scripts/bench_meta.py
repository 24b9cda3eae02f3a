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

With ``--breakdown`` it instead splits one PES outer step of the shipped setting (16
particles, truncations of 50 steps) into its parts, each jitted alone, vmapped over the
particles and scanned over the truncation: the training batch (sampling and augmentation),
the inner task's forward and backward pass, the rule's features, the rule's network, the
whole inner step, and the estimator's bookkeeping (the outer step less its inner steps).
Each part gets XLA's FLOP estimate and its achieved rate beside a square float32 matmul
timed in the same run (and a large elementwise pass for the memory bandwidth), and the
share of a 60-minute run that meta-validation takes with the task's shipped experiment
settings (``lopt-train experiment=<name>``: ``validation.every``, the validation runs, the
reference Adam's sweep; each ``--val-*`` option overrides one).

    python scripts/bench_meta.py
    python scripts/bench_meta.py --tasks mlp_digits --optimizer deepsets --rounds 3
    python scripts/bench_meta.py --breakdown --tasks cnn_augmented_digits rnn_text
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import NamedTuple

import hydra
import jax
import jax.numpy as jnp
import optax

import lopt.cli.schema
import lopt.learned as learned
import lopt.meta as meta
import lopt.tasks as tasks
from lopt.bench.timing import jax_platform, parse_timing_args, xla_gflop
from lopt.learned import features as feats
from lopt.learned.nf_optimizer import build_network
from lopt.meta.base import broadcast_theta
from lopt.meta.population import train_step

TASKS = ("mlp_digits", "transformer_text")
SHIPPED = {
    "mlp_augmented_digits": "mlp",
    "cnn_augmented_digits": "cnn",
    "rnn_text": "rnn",
    "transformer_text": "transformer",
}
"""The shipped experiments' tasks, and the experiment of each."""
SHIPPED_TASKS = tuple(SHIPPED)
RUN_SECONDS = 3600.0
LAYER_WIDTH = 32
LAYER_INTENSITY = 2 * LAYER_WIDTH**2 / (2 * LAYER_WIDTH * 4)
"""FLOP per byte of a ``LAYER_WIDTH`` -> ``LAYER_WIDTH`` pointwise layer that reads its input
and writes its output (float32): the rules' hidden layers at their default width."""
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


def scanned(body, carry, steps: int):
    """The jitted, compiled ``steps``-fold scan of ``body`` from ``carry``, vmapped over its
    leading axis, and XLA's GFLOP estimate of one call.

    The estimate is one vmapped body's, compiled alone, times ``steps``: XLA's cost analysis
    counts a loop's body once, whatever its trip count, so loops inside ``body`` (an RNN's
    scan over positions) still count once and its estimate is then a lower bound.
    """

    @jax.jit
    def run(carry):
        return jax.lax.scan(lambda c, _: (jax.vmap(body)(c), None), carry, None, length=steps)[0]

    compiled = run.lower(carry).compile()
    jax.block_until_ready(compiled(carry))
    one_step = jax.jit(jax.vmap(body)).lower(carry).compile()
    return compiled, steps * xla_gflop(one_step)


def median_seconds(fn, arg, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(size: int, rounds: int) -> float:
    """GFLOP/s of a jitted ``size``-square float32 matmul on this machine."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size))
    product = jax.jit(lambda x: x @ x).lower(a).compile()
    jax.block_until_ready(product(a))
    return 2 * size**3 / median_seconds(product, a, rounds) / 1e9


def copy_rate(megabytes: int, rounds: int) -> float:
    """GB/s moved by a jitted elementwise pass over a ``megabytes`` float32 array (one read
    and one write per entry): the memory bandwidth a large streaming computation gets."""
    x = jnp.ones((megabytes * 2**18,), jnp.float32)
    scaled = jax.jit(lambda v: v * 1.0001 + 1.0).lower(x).compile()
    jax.block_until_ready(scaled(x))
    return 2 * x.nbytes / median_seconds(scaled, x, rounds) / 1e9


def layer_rate(rows: int, rounds: int) -> float:
    """GFLOP/s of a jitted ``(rows, LAYER_WIDTH) @ (LAYER_WIDTH, LAYER_WIDTH)`` product: a
    pointwise layer of the rules' width over ``rows`` entries, their networks' bulk work."""
    x = jax.random.normal(jax.random.PRNGKey(0), (rows, LAYER_WIDTH))
    w = jax.random.normal(jax.random.PRNGKey(1), (LAYER_WIDTH, LAYER_WIDTH))
    product = jax.jit(lambda a: jax.nn.relu(a @ w)).lower(x).compile()
    jax.block_until_ready(product(x))
    return 2 * rows * LAYER_WIDTH**2 / median_seconds(product, x, rounds) / 1e9


def stacked(tree, count: int):
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (count, *jnp.shape(x))), tree)


def breakdown_parts(task, opt, theta, particles: int, steps: int) -> dict[str, tuple]:
    """name -> (compiled scan, its carry, its GFLOP) for every part of one inner step."""
    keys = jax.random.split(jax.random.PRNGKey(1), particles)
    params = jax.vmap(task.init)(keys)
    batch = jax.vmap(lambda k: task.batch(k, "train"))(keys)
    grads = jax.vmap(jax.grad(task.loss))(params, batch)
    state = jax.vmap(opt.init)(params)
    momenta = jax.vmap(feats.init_feature_momenta)(params)
    config = opt.config
    network = build_network(config["name"], task.spec, config["hidden"], config["depth"])
    inputs = jax.vmap(lambda p, g, m: feats.entry_features(p, g, m, config["clip"]))(
        params, grads, momenta
    )
    timed = config.get("time", "absolute") == "absolute"

    def sample(carry):
        key, total = carry
        key, sub = jax.random.split(key)
        drawn = task.batch(sub, "train")
        return key, total + sum(jnp.sum(x).astype(jnp.float32) for x in jax.tree.leaves(drawn))

    def forward_backward(carry):
        params, batch = carry
        grads = jax.grad(task.loss)(params, batch)
        return jax.tree_util.tree_map(lambda p, g: p - 1e-7 * g, params, grads), batch

    def features(carry):
        params, grads, momenta, count = carry
        momenta = feats.update_feature_momenta(momenta, grads)
        x = feats.entry_features(params, grads, momenta, config["clip"])
        # feeds every channel back, so that none is dead code
        momenta = jax.tree_util.tree_map(
            lambda m, f: m + 1e-9 * jnp.sum(f, axis=-1, keepdims=True), momenta, x
        )
        total = count + jnp.sum(feats.time_features(count)) if timed else count
        return params, grads, momenta, total

    # Every particle has its own (perturbed) theta, as in the estimator's unroll.
    thetas = jax.tree_util.tree_map(jnp.array, stacked(theta, particles))

    def apply_network(carry):
        x, count, theta = carry
        context = feats.time_features(count) if timed else None
        out = network.apply({"params": theta["network"]}, x, context)
        return jax.tree_util.tree_map(lambda a, f: a + 1e-6 * f, x, out), count + 1, theta

    def inner_step(carry):
        params, state, key, theta = carry
        key, sub = jax.random.split(key)
        params, state, _ = train_step(task, opt, theta, params, state, sub)
        return params, state, key, theta

    count = jnp.zeros((particles,), jnp.float32)
    carries = {
        "batch": (keys, count),
        "task fwd+bwd": (params, batch),
        "features": (params, grads, momenta, count),
        "network": (inputs, count, thetas),
        "inner step": (params, state, keys, thetas),
    }
    bodies = {
        "batch": sample,
        "task fwd+bwd": forward_backward,
        "features": features,
        "network": apply_network,
        "inner step": inner_step,
    }
    return {name: (*scanned(bodies[name], carries[name], steps), carries[name]) for name in bodies}


class ValidationCost(NamedTuple):
    """How often and how much a run validates: every ``every`` outer steps, ``seeds`` runs of
    ``steps`` inner steps, after a reference Adam sweep of ``sweep`` learning rates."""

    every: int
    seeds: int
    steps: int
    sweep: int


def shipped_validation(task_name: str, args) -> ValidationCost:
    """The validation of the task's shipped experiment (``lopt-train experiment=<name>``),
    each entry replaced by its ``--val-*`` option when given."""
    every, seeds, steps, sweep = 100, 4, 2000, 8
    if task_name in SHIPPED:
        lopt.cli.schema.register_configs()
        with hydra.initialize_config_module("lopt.configs", version_base="1.3"):
            cfg = hydra.compose("train", overrides=[f"experiment={SHIPPED[task_name]}"])
        validation = cfg.validation
        every, seeds = validation.every, validation.num_seeds
        steps = validation.num_steps or cfg.schedule.max_length
        sweep = len(validation.adam_learning_rates)
    given = (args.val_every, args.val_seeds, args.val_steps, args.val_sweep)
    chosen = (every, seeds, steps, sweep)
    return ValidationCost(*(c if g is None else g for g, c in zip(given, chosen, strict=True)))


def validation_share(
    task, opt, theta, cost: ValidationCost, outer_seconds: float, rounds: int
) -> tuple[float, float, float]:
    """``(seconds per validation, start-up seconds, share of a 60-minute run)``.

    A validation trains ``cost.seeds`` runs for ``cost.steps`` steps; the start-up tunes Adam
    over ``cost.sweep`` learning rates on those runs (all rates and seeds vmapped in one
    program, as the sweep runs them) and scores theta0 once. Compiles are left out.
    """
    seeds, steps = cost.seeds, cost.steps
    chunk = min(steps, 100)

    def learned_step(carry):
        params, state, key = carry
        key, sub = jax.random.split(key)
        params, state, _ = train_step(task, opt, theta, params, state, sub)
        return params, state, key

    adam = learned.make_optimizer("adam")
    adam_theta = adam.init_meta(jax.random.PRNGKey(0))

    def adam_step(carry):
        params, state, key = carry
        key, sub = jax.random.split(key)
        params, state, _ = train_step(task, adam, adam_theta, params, state, sub)
        return params, state, key

    per_program = []
    for optimizer, body, runs in (
        (opt, learned_step, seeds),
        (adam, adam_step, seeds * cost.sweep),
    ):
        keys = jax.random.split(jax.random.PRNGKey(2), runs)
        params = jax.vmap(task.init)(keys)
        carry = (params, jax.vmap(optimizer.init)(params), keys)
        compiled, _ = scanned(body, carry, chunk)
        per_program.append(median_seconds(compiled, carry, rounds) * steps / chunk)
    validation, sweep = per_program
    startup = sweep + validation
    cycle = cost.every * outer_seconds + validation
    # the validations due in the run, and the one at its last step
    validations = math.floor(max(RUN_SECONDS - startup, 0.0) / cycle) + 1
    return validation, startup, (startup + validations * validation) / RUN_SECONDS


def breakdown_task(name: str, args, rate: float) -> list[str]:
    """The rows of one task's outer-step breakdown."""
    task = tasks.get_task(name)
    opt = learned.make_optimizer(args.optimizer, task.spec)
    theta = opt.init_meta(jax.random.PRNGKey(0), task.init(jax.random.PRNGKey(0)))
    particles, steps = 2 * args.pairs, args.truncation
    parts = breakdown_parts(task, opt, theta, particles, steps)
    trainer = meta.make_meta_trainer(
        task, opt, meta.pes(args.pairs, steps, args.sigma), optax.adam(1e-3), schedule=args.episode
    )
    state = trainer.init(jax.random.PRNGKey(0), theta)
    state, _ = jax.block_until_ready(trainer.step(state))

    seconds = {part: [] for part in parts}
    outer = []
    for _ in range(args.rounds):
        for part, (compiled, _, carry) in parts.items():
            seconds[part].append(median_seconds(compiled, carry, 1))
        start = time.perf_counter()
        state, metrics = trainer.step(state)
        jax.block_until_ready(metrics)
        outer.append(time.perf_counter() - start)
    outer_seconds = statistics.median(outer)
    rows = []
    for part, (_, gflop, _) in parts.items():
        part_seconds = statistics.median(seconds[part])
        rows.append(breakdown_row(name, part, part_seconds, gflop, outer_seconds, rate))
    inner = statistics.median(seconds["inner step"])
    rows.append(breakdown_row(name, "bookkeeping", outer_seconds - inner, 0.0, outer_seconds, rate))
    rows.append(breakdown_row(name, "outer step", outer_seconds, math.nan, outer_seconds, rate))
    cost = shipped_validation(name, args)
    validation, startup, share = validation_share(task, opt, theta, cost, outer_seconds, 3)
    rows.append(
        f"{name:<22}validation: {cost.seeds} x {cost.steps} steps, {validation:.1f} s each "
        f"every {cost.every} outer steps, sweep of {cost.sweep} rates; "
        f"{startup:.0f} s at the start; {100 * share:.1f}% of a 60-minute run; "
        f"{particles * steps / outer_seconds:.0f} inner steps/s"
    )
    return rows


def breakdown_row(
    task: str, part: str, seconds: float, gflop: float, outer: float, rate: float
) -> str:
    achieved = gflop / seconds if seconds > 0 else math.nan
    return (
        f"{task:<22}{part:<14}{seconds * 1e3:>10.1f}{100 * seconds / outer:>8.1f}"
        f"{gflop:>10.3f}{achieved:>10.2f}{100 * achieved / rate:>8.1f}"
    )


def breakdown(args) -> None:
    rate = matmul_rate(args.matmul_size, 10)
    bandwidth = copy_rate(args.copy_megabytes, 10)
    layer = layer_rate(args.layer_rows, 10)
    print(
        f"{jax_platform()}; optimizer {args.optimizer}; PES {2 * args.pairs} particles x "
        f"{args.truncation} steps per outer step; median of {args.rounds} rounds\n"
        f"{args.matmul_size}-square float32 matmul: {rate:.1f} GFLOP/s; streaming "
        f"{args.copy_megabytes} MB: {bandwidth:.1f} GB/s (a {LAYER_WIDTH}-channel pointwise "
        f"layer, {LAYER_INTENSITY:.0f} FLOP per byte read and written, could reach "
        f"{LAYER_INTENSITY * bandwidth:.1f} GFLOP/s from memory); a {LAYER_WIDTH}-channel "
        f"pointwise layer (matmul and ReLU) over {args.layer_rows:,} entries: {layer:.1f} "
        f"GFLOP/s ({100 * layer / rate:.0f}% mm)"
    )
    print(
        f"{'task':<22}{'part':<14}{'ms':>10}{'% outer':>8}{'GFLOP':>10}{'GFLOP/s':>10}{'% mm':>8}"
    )
    for name in args.tasks:
        for row in breakdown_task(name, args, rate):
            print(row, flush=True)
    print(
        "ms: one call of the part over all particles and the truncation's steps; % outer: of "
        "the PES outer step; % mm: achieved rate / the matmul's. The parts run alone, so "
        "their sum exceeds the inner step by what XLA fuses across them; bookkeeping = outer "
        "step - inner steps (perturbations, the estimate, the outer update)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", nargs="+", help=f"default: {TASKS}; with --breakdown {SHIPPED_TASKS}"
    )
    parser.add_argument("--optimizer", default="unf", choices=sorted(learned.LEARNED))
    parser.add_argument(
        "--estimators",
        nargs="+",
        default=list(ESTIMATORS),
        choices=ESTIMATORS,
    )
    parser.add_argument("--pairs", type=int, default=8, help="antithetic pairs P")
    parser.add_argument(
        "--truncation", type=int, help="inner steps K per estimate (default 20; --breakdown 50)"
    )
    parser.add_argument("--sigma", type=float, default=0.01)
    parser.add_argument("--episode", type=int, default=200, help="episode length (PES, TBPTT)")
    parser.add_argument("--full-episode", type=int, default=20, help="episode length (full ES)")
    parser.add_argument("--rounds", type=int, default=7, help="timed outer steps per estimator")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="split one PES outer step into its parts (defaults: the shipped tasks, P=16, K=50)",
    )
    shipped = "(breakdown; default: the task's shipped experiment's)"
    parser.add_argument("--val-seeds", type=int, help=f"validation runs {shipped}")
    parser.add_argument("--val-steps", type=int, help=f"their length {shipped}")
    parser.add_argument("--val-every", type=int, help=f"outer steps per validation {shipped}")
    parser.add_argument("--val-sweep", type=int, help=f"Adam learning rates tuned {shipped}")
    parser.add_argument("--matmul-size", type=int, default=1024)
    parser.add_argument(
        "--copy-megabytes", type=int, default=256, help="array streamed for the bandwidth"
    )
    parser.add_argument(
        "--layer-rows", type=int, default=2**20, help="entries of the pointwise layer timed"
    )
    args = parse_timing_args(parser)
    if args.breakdown:
        args.tasks = args.tasks or list(SHIPPED_TASKS)
        args.truncation = args.truncation or 50
        breakdown(args)
        return
    args.tasks = args.tasks or list(TASKS)
    args.truncation = args.truncation or 20
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
