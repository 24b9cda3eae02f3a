"""``lopt-tasks``: the registered inner tasks, their size options and their data.

    lopt-tasks                 # every task: options (the task.* keys of lopt-train/eval)
    lopt-tasks --sizes         # also build the embedded tasks: parameters, tensors, data

The options are the keyword arguments of each task's factory, with their defaults; they are
the keys a ``task=<name>`` config takes (``task.width=64``).
"""

from __future__ import annotations

import argparse
import inspect
import math

import jax

from lopt.tasks import EMBEDDED_TASKS, get_task, task_factory, task_names


def describe(name: str, sizes: bool) -> list[str]:
    """Lines describing one task."""
    factory = task_factory(name)
    summary = (inspect.getdoc(factory) or "").split("\n")[0]
    options = ", ".join(
        f"{p.name}={p.default!r}"
        for p in inspect.signature(factory).parameters.values()
        if p.default is not inspect.Parameter.empty
    )
    data = "embedded" if name in EMBEDDED_TASKS else "tensorflow-datasets (prepare once)"
    lines = [f"{name}: {summary}", f"    options: {options}", f"    data: {data}"]
    if sizes and name in EMBEDDED_TASKS:
        task = get_task(name)
        shapes = jax.tree.leaves(jax.eval_shape(task.init, jax.random.key(0)))
        count = sum(math.prod(leaf.shape) for leaf in shapes)
        lines.append(
            f"    model: {count:,} parameters in {len(shapes)} tensors; {task.num_classes} "
            f"classes; splits train {task.split_size('train'):,}, valid "
            f"{task.split_size('valid'):,}, test {task.split_size('test'):,} (examples, or "
            f"tokens for text)"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lopt-tasks``."""
    parser = argparse.ArgumentParser(prog="lopt-tasks", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", action="store_true", help="build the embedded tasks and show their sizes"
    )
    args = parser.parse_args(argv)
    for name in task_names():
        print("\n".join(describe(name, args.sizes)))


if __name__ == "__main__":
    main()
