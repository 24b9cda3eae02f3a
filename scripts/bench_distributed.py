"""Benchmark: PES outer-step time against the number of devices the population is split over.

For each device count it starts a process with that many forced host devices
(``--xla_force_host_platform_device_count``), builds the same meta-trainer (one learned
optimizer, one task, a fixed population) on a one-axis mesh, and reports

* the compile time and the median time of one outer step, and its ratio to one device;
* the collectives in the compiled outer step (read off its HLO): how many of each kind and
  the bytes each moves, i.e. what crosses devices (and, on a cluster, the network) per step.

Forced host devices share this machine's cores: on 2 cores the time cannot fall below what 2
cores give, so the table shows the overhead of sharding, not a speed-up. The collectives are
what a real mesh of that size would exchange.

Last, an estimate for a real cluster from those collectives: with the particles per device
held fixed (the population grows with the devices; the collectives are θ-sized whatever the
population), one outer step costs a device's compute time plus the collectives, each a ring
all-reduce of ``2 (n - 1) / n`` times its bytes over the link and ``2 (n - 1)`` hops of
latency, none overlapped with compute. The link bandwidth, the hop latency and the compute
times are assumptions (flags), printed with the table.

    python scripts/bench_distributed.py
    python scripts/bench_distributed.py --devices 1 2 4 8 --pairs 8 --task mlp_digits
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1}
SHAPE = re.compile(r"\b(" + "|".join(BYTES) + r")\[([0-9,]*)\]")


def collectives(hlo: str) -> dict[str, tuple[int, int]]:
    """``kind -> (count, bytes of their results)`` for the collectives of an HLO module."""
    found: dict[str, list[int]] = {}
    for line in hlo.splitlines():
        for kind in COLLECTIVES:
            if f" {kind}(" in line or f" {kind}-start(" in line:
                result = line.split("=", 1)[1].split(kind, 1)[0]
                size = 0
                for dtype, dims in SHAPE.findall(result):
                    count = 1
                    for d in filter(None, dims.split(",")):
                        count *= int(d)
                    size += count * BYTES[dtype]
                entry = found.setdefault(kind, [0, 0])
                entry[0] += 1
                entry[1] += size
    return {kind: (c, b) for kind, (c, b) in found.items()}


def child(args: argparse.Namespace) -> None:
    import jax
    import optax

    import lopt.learned as learned
    import lopt.meta as meta
    import lopt.tasks as tasks
    from lopt.distributed import particle_mesh

    task = tasks.get_task(args.task)
    opt = learned.make_optimizer(args.optimizer, task.spec)
    mesh = particle_mesh(args.child, "particles")
    trainer = meta.make_meta_trainer(
        task,
        opt,
        meta.pes(args.pairs, args.truncation, 0.01),
        optax.adam(1e-4),
        schedule=args.episode,
        mesh=mesh,
    )
    state = trainer.init(jax.random.PRNGKey(0))
    start = time.perf_counter()
    compiled = trainer.step.lower(state).compile()
    compile_s = time.perf_counter() - start
    state, metrics = trainer.step(state)  # the jitted call's own compilation, untimed
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = trainer.step(state)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    theta_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.theta))
    print(
        json.dumps(
            {
                "devices": args.child,
                "compile_s": compile_s,
                "step_s": statistics.median(times),
                "theta_bytes": int(theta_bytes),
                "collectives": collectives(compiled.as_text()),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--task", default="mlp_digits")
    parser.add_argument("--optimizer", default="unf")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--truncation", type=int, default=50)
    parser.add_argument("--episode", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10, help="timed outer steps per count")
    parser.add_argument("--link-gbps", type=float, default=100.0, help="link, Gbit/s")
    parser.add_argument("--hop-us", type=float, default=10.0, help="latency per ring hop, µs")
    parser.add_argument(
        "--compute-s",
        type=float,
        nargs="+",
        default=[0.01, 0.05, 0.2],
        help="assumed compute time of one outer step on one accelerator, seconds",
    )
    parser.add_argument("--cluster", type=int, nargs="+", default=[8, 64], help="accelerators")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return
    rows = []
    for count in args.devices:
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
        command = [sys.executable, __file__, *sys.argv[1:], "--child", str(count)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"{count} devices failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]["step_s"]
    print(
        f"task {args.task}, optimizer {args.optimizer}, PES {args.pairs} pairs x truncation "
        f"{args.truncation}; theta {rows[0]['theta_bytes']:,} bytes; {os.cpu_count()} cores\n"
    )
    print("| devices | pairs per device | compile s | outer step s | ÷ 1 device | collectives |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        moved = ", ".join(
            f"{count} {kind} ({size:,} B)" for kind, (count, size) in row["collectives"].items()
        )
        print(
            f"| {row['devices']} | {args.pairs / row['devices']:g} | {row['compile_s']:.1f} | "
            f"{row['step_s']:.3f} | {row['step_s'] / base:.2f} | {moved or 'none'} |"
        )
    print_cluster_estimate(rows[-1]["collectives"], args)


def collective_seconds(collectives: dict, devices: int, link_gbps: float, hop_us: float) -> float:
    """Seconds for ``collectives`` (``kind -> (count, bytes)``) as ring all-reduces over
    ``devices`` accelerators: ``2 (n - 1) / n`` of the bytes over the link, ``2 (n - 1)`` hops
    of latency each."""
    count = sum(c for c, _ in collectives.values())
    moved = sum(b for _, b in collectives.values())
    hops = 2 * (devices - 1)
    bandwidth = link_gbps * 1e9 / 8
    return hops / devices * moved / bandwidth + count * hops * hop_us * 1e-6


def print_cluster_estimate(collectives: dict, args: argparse.Namespace) -> None:
    """Prints the expected efficiency (compute / (compute + collectives)) per cluster size
    and assumed compute time of an outer step."""
    count = sum(c for c, _ in collectives.values())
    moved = sum(b for _, b in collectives.values())
    print(
        f"\nCluster estimate, {args.pairs / args.devices[-1]:g} pair(s) per accelerator "
        f"(as at {args.devices[-1]} devices here) held fixed: {count} collectives of "
        f"{moved:,} B per outer step as ring all-reduces, {args.link_gbps:g} Gbit/s links, "
        f"{args.hop_us:g} µs per hop, no overlap\n"
    )
    header = " | ".join(f"{n} accelerators" for n in args.cluster)
    print(f"| compute per outer step | {header} |")
    print("|---|" + "---|" * len(args.cluster))
    for compute in args.compute_s:
        cells = []
        for devices in args.cluster:
            exchange = collective_seconds(collectives, devices, args.link_gbps, args.hop_us)
            cells.append(f"{compute / (compute + exchange):.1%} ({exchange * 1e3:.2f} ms)")
        print(f"| {compute:g} s | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
