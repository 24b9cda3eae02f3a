"""Ships a meta-trained optimizer in the package: its saved files, its card and metadata.

    python scripts/ship_pretrained.py mlp_unf runs/r25/mlp/unf \\
        runs/r25/eval/mlp/horizon runs/r25/eval/mlp/horizon_2x runs/r25/eval/mlp/width_2x

``RUN_DIR`` is an ``lopt-train`` run directory; its chosen optimizer (``summary.json``'s
``optimizer_dir``) is copied, byte for byte, into ``lopt/pretrained/NAME/``. Each
``EVAL_DIR`` is an ``lopt-eval`` output directory whose ``results.json`` evaluates that run
(the optimizer whose meta-training ``run_dir`` is ``RUN_DIR``): one check each (at the
horizon, at twice the horizon, on a wider model, ...).

Written beside the optimizer's files, from the run's own files and nothing else:

* ``card.md``: the task and architecture, the meta-training budget (outer steps, inner
  steps, wall time; the commit), the optimizer against every other at every check (paired
  tests), where it fails (every optimizer it does not beat significantly, failed seeds,
  what was not checked), and each check's table;
* ``meta.json``: the numbers :func:`lopt.pretrained.load` reads (task, architecture,
  horizon, steps checked) and the provenance (commit, budget, hash of ``theta.msgpack``).

The directory is replaced as a whole: a card is generated, never edited by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

import jax
import yaml

from lopt.evaluation.levers import fmt_number
from lopt.evaluation.report import HELD_OUT_METRICS, SIGNIFICANCE, load_summary, verdict
from lopt.learned.nf_optimizer import needs_run_length
from lopt.learned.serialization import load_learned_optimizer, read_config, read_weight_space
from lopt.nf import matching
from lopt.persistence import sha256
from lopt.pretrained import CARD_FILE, DEFAULT_TIME_INPUT, META_FILE, OPTIMIZER_FILES
from lopt.tasks import get_task, task_factory

ROOT = Path(__file__).resolve().parents[1]
DESTINATION = ROOT / "lopt" / "pretrained"
NAME = re.compile(r"[a-z][a-z0-9_]*")
INNER_STEPS = re.compile(r"(\d+) inner steps per outer step")
KIND_WORDS = {"hidden": "hidden", "by_choice": "by choice", "spatial": "spatial", "fixed": "fixed"}


# -- reading the run and its evaluations -------------------------------------------------


def read_run(run_dir: Path) -> dict[str, Any]:
    """The run's config, summary and inner steps per outer step (from ``train.log``)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    match = INNER_STEPS.search((run_dir / "train.log").read_text())
    if match is None:
        raise SystemExit(f"{run_dir / 'train.log'} does not say how many inner steps per step")
    if summary.get("interrupted_by"):
        raise SystemExit(f"{run_dir} was interrupted ({summary['interrupted_by']}): not shipped")
    return {"config": config, "summary": summary, "inner_per_outer": int(match.group(1))}


def task_options(config: dict[str, Any]) -> dict[str, Any]:
    """The task's options in the run's config (its Hydra target and unset options left out)."""
    return {k: v for k, v in config["task"].items() if k != "_target_" and v is not None}


def read_check(eval_dir: Path, run_dir: Path) -> dict[str, Any]:
    """One evaluation: its ``results.json`` and the label of the optimizer from ``run_dir``.

    Raises:
        SystemExit: no optimizer of the evaluation was meta-trained in ``run_dir``.
    """
    summary = load_summary(eval_dir)
    for label, entry in summary["optimizers"].items():
        trained = entry.get("meta_training") or {}
        if trained.get("run_dir") and (eval_dir / trained["run_dir"]).resolve() == run_dir:
            if label not in summary.get("paired", {}):
                raise SystemExit(f"{eval_dir}: no paired tests for {label!r}")
            return {"name": eval_dir.name, "label": label, "summary": summary}
    raise SystemExit(
        f"{eval_dir / 'results.json'} evaluates no optimizer meta-trained in {run_dir}"
    )


def architecture(task_name: str, options: dict[str, Any], space: dict) -> tuple[Any, list[dict]]:
    """The task's spec and its parameter tensors (path, shape, kind of each axis), checked
    to have the structure of the saved optimizer's weight space."""
    task = get_task(task_name, **options)
    matching.match_tensors(space, task.spec)  # the saved rule was trained on this model
    shapes = jax.eval_shape(task.init, jax.random.key(0))
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    described = matching.describe_weight_space(task.spec)["tensors"]
    paths = [jax.tree_util.keystr(key_path) for key_path, _ in flat]
    if paths != [tensor["path"] for tensor in described]:
        raise SystemExit(f"the params of {task_name!r} and its spec list other tensors")
    tensors = [
        {
            "path": jax.tree_util.keystr(key_path),
            "shape": list(leaf.shape),
            "axes": [kind for kind, _ in tensor["axes"]],
        }
        for (key_path, leaf), tensor in zip(flat, described, strict=True)
    ]
    return task.spec, tensors


# -- formatting ---------------------------------------------------------------------------


def fmt_p(value: float | None) -> str:
    """A p-value to two significant digits (``< 1e-4`` below that)."""
    if value is None:
        return "—"
    return f"{value:.2g}" if value >= 1e-4 else "< 1e-4"


def display(summary: dict, label: str, own: str) -> str:
    """An optimizer's label in a table: a tuned baseline with its learning rate."""
    entry = summary["optimizers"][label]
    if label == own:
        return f"**{label}** (this optimizer)"
    if entry["kind"] == "baseline":
        return f"{label} (tuned, lr {entry['config']['learning_rate']:g})"
    return f"{label} (meta-trained)"


def describe_check(check: dict) -> str:
    """A check in words: its length, the horizon ratio, what changed in the task."""
    summary, label = check["summary"], check["label"]
    entry = summary["optimizers"][label]
    general = entry.get("generalization") or {}
    parts = [f"{summary['settings']['num_steps']} steps"]
    if general.get("horizon_ratio") is not None:
        parts.append(f"{general['horizon_ratio']:g}× the meta-training horizon")
    same_task = general.get("same_task", True)
    if not same_task:
        parts.append(f"task `{summary['task']['name']}`")
    changes = [
        f"{key} {before} → {after}"
        for key, (before, after) in (general.get("task_changes") or {}).items()
    ]
    parts += changes or (["the meta-training task unchanged"] if same_task else [])
    return ", ".join(parts)


def cell(entry: dict | None) -> str:
    """A paired test in one table cell: ratio, p, seeds won, verdict."""
    if entry is None or entry.get("ratio") is None:
        return "—"
    seeds = entry["wins"] + entry["losses"] + entry["ties"]
    shown = verdict(entry)
    shown = f"**{shown}**" if shown != "not significant" else shown
    p = fmt_p(entry["p_value"])
    return f"×{entry['ratio']:.3g} (p {p}, wins {entry['wins']}/{seeds}): {shown}"


def others_of(checks: list[dict]) -> list[str]:
    """Every optimizer compared with the shipped one, in the order the checks list them."""
    others: list[str] = []
    for check in checks:
        paired = check["summary"]["paired"][check["label"]]
        others += [name for name in paired if name not in others]
    return others


# -- the card -----------------------------------------------------------------------------


def comparison_section(checks: list[dict]) -> list[str]:
    """The shipped optimizer against every other, one column per check."""
    lines = [
        "## Against the other optimizers",
        "",
        "Its final training loss against each other optimizer's, paired over the evaluation "
        "seeds in log space: the geometric mean of the per-seed ratios (below 1: lower), the "
        "two-sided p-value of the paired t-test on the log10 differences, and the seeds it "
        f"wins; **lower** / **higher** where p < {SIGNIFICANCE:g}.",
        "",
        "| against | " + " | ".join(check["name"] for check in checks) + " |",
        "|---|" + "---|" * len(checks),
    ]
    for other in others_of(checks):
        cells = [cell(c["summary"]["paired"][c["label"]].get(other)) for c in checks]
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return lines


def failures_section(checks: list[dict], steps_checked: int, name: str) -> list[str]:
    """Where it fails, from the numbers: every optimizer it does not beat significantly at
    some check, its failed seeds, and what was not checked."""
    worse, level = [], []
    for other in others_of(checks):
        found = {"higher": [], "not significant": []}
        for check in checks:
            entry = check["summary"]["paired"][check["label"]].get(other)
            if entry is None:
                continue
            shown = verdict(entry)
            if shown != "lower":
                p = fmt_p(entry["p_value"])
                ratio = "—" if entry["ratio"] is None else f"×{entry['ratio']:.3g}"
                found[shown].append(f"{check['name']} ({ratio}, p {p})")
        if found["higher"]:
            worse.append(f"- **{other}**: higher final loss at " + ", ".join(found["higher"]))
        if found["not significant"]:
            level.append(
                f"- **{other}**: no significant difference at "
                + ", ".join(found["not significant"])
            )
    lines = ["## Where it fails", ""]
    lines += [f"Significantly worse than (p < {SIGNIFICANCE:g}):", ""]
    lines += worse or ["- none"]
    lines += ["", "Not significantly better than:", ""]
    lines += level or ["- none"]
    failed = [
        f"{c['name']} ({entry['final_train_loss']['num_failed']}/"
        f"{len(c['summary']['settings']['seeds'])})"
        for c in checks
        if (entry := c["summary"]["optimizers"][c["label"]])["final_train_loss"]["num_failed"]
    ]
    lines += [
        "",
        "Failed seeds (a non-finite final loss, or above 10× the same seed's tuned Adam): "
        + (", ".join(failed) if failed else "none at any check")
        + ".",
        "",
        f"Not checked: runs longer than {steps_checked} steps (`lopt.pretrained.load("
        f'"{name}", spec, num_steps=...)` warns), other tasks and other architectures than '
        "those in the checks above.",
    ]
    return lines


def check_section(check: dict) -> list[str]:
    """One evaluation: how it was measured, its table and the paired tests."""
    summary, own = check["summary"], check["label"]
    settings = summary["settings"]
    seeds = settings["seeds"]
    options = ", ".join(f"{k}={v}" for k, v in summary["task"]["config"].items() if k != "name")
    metrics = [
        m
        for m in HELD_OUT_METRICS
        if any(m in o["held_out"] for o in summary["optimizers"].values())
    ]
    header = ["optimizer", "final train loss: geometric mean", "median", "IQM", "failed"]
    header += ["held-out loss", *[f"held-out {m}" for m in metrics]]
    lines = [
        f"### {check['name']}: {describe_check(check)}",
        "",
        f"`{summary['task']['name']}` ({options}); {settings['num_steps']} steps from "
        f"{len(seeds)} evaluation seeds ({seeds[0]}–{seeds[-1]}); final loss = "
        f"{settings['final_loss']}; {settings['log_space']}. Baselines tuned on "
        f"{len(settings['tuning_seeds'])} other seeds. Held-out: the test split, mean ± "
        "standard error over seeds. Measured at commit "
        f"{summary['environment'].get('commit', '—')} on {summary['environment']['backend']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for label, entry in summary["optimizers"].items():
        final = entry["final_train_loss"]
        row = [display(summary, label, own), fmt_number(final["geometric_mean"])]
        row += [fmt_number(final["median"]), fmt_number(final["iqm"])]
        row.append(f"{final['num_failed']}/{len(seeds)}")
        for metric in ("loss", *metrics):
            held = entry["held_out"].get(metric)
            row.append(
                "—"
                if held is None
                else f"{fmt_number(held['mean'], 4)} ± {fmt_number(held['se'], 2)}"
            )
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"{own} paired over seeds against each other optimizer (ratio: geometric mean of its "
        "final training loss ÷ the other's, per seed):",
        "",
        "| against | ratio | t | p | wins / losses / ties | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for other, entry in summary["paired"][own].items():
        ratio = "—" if entry["ratio"] is None else f"{entry['ratio']:.3g}"
        t = "—" if entry["t"] is None else f"{entry['t']:.3g}"
        counts = f"{entry['wins']} / {entry['losses']} / {entry['ties']}"
        lines.append(
            f"| {display(summary, other, own)} | {ratio} | {t} | {fmt_p(entry['p_value'])} | "
            f"{counts} | {verdict(entry)} |"
        )
    return lines


def architecture_section(meta: dict) -> list[str]:
    """The tensors it was trained on and which models it fits."""
    tensors = meta["architecture"]["tensors"]
    fixed = [
        f"axis {position} of {t['path']} (length {t['shape'][position]})"
        for t in tensors
        for position, kind in enumerate(t["axes"])
        if kind == "fixed"
    ]
    lines = [
        "## Trained on",
        "",
        f"Task `{meta['task']}` ("
        + ", ".join(f"{k}={v}" for k, v in meta["task_options"].items())
        + f"): {meta['task_description']}",
        "",
        "| parameter tensor | shape | axes |",
        "|---|---|---|",
    ]
    for t in tensors:
        kinds = ", ".join(KIND_WORDS[kind] for kind in t["axes"])
        lines.append(f"| `{t['path']}` | {tuple(t['shape'])} | {kinds} |")
    lines += [
        "",
        "It fits any model whose permutation spec has this structure: as many tensors, of "
        "the same forms, joined by the same permutations (`hidden`: a neuron symmetry; `by "
        "choice`: an input or output axis permuted by modelling choice), whatever the "
        "length of a permuted axis, the module names or the layer order. Axes of fixed "
        "length: " + ("; ".join(fixed) if fixed else "none") + ".",
    ]
    return lines


def budget_section(meta: dict, config: dict) -> list[str]:
    """The meta-training budget and the update rule's settings."""
    budget = meta["meta_training"]
    estimator = ", ".join(f"{k} {v}" for k, v in budget["estimator_options"].items())
    rule = ", ".join(f"{k} {v}" for k, v in sorted(config.items()) if k != "name")
    wall = budget["wall_time_sec"]
    return [
        "## Meta-training",
        "",
        "| | |",
        "|---|---|",
        f"| estimator | {budget['estimator']} ({estimator}) |",
        f"| outer steps | {budget['outer_steps']} |",
        f"| inner steps | {budget['inner_steps']:,} ({budget['inner_steps_per_outer_step']} "
        "per outer step) |",
        f"| wall time | {fmt_number(wall, 4)} s ({wall / 60:.0f} min) on "
        f"{budget['device_count']} {budget['backend']} device(s), "
        f"{fmt_number(budget['inner_steps_per_sec'])} inner steps/s |",
        f"| horizon | {meta['horizon']} inner steps |",
        f"| θ shipped | {budget['theta_chosen']} |",
        f"| commit | {meta['commit']} (jax {budget['jax']}) |",
        f"| update rule | `{meta['backbone']}`: {rule}; time input {meta['time_input']} |",
        f"| `theta.msgpack` SHA-256 | `{meta['theta_sha256']}` |",
    ]


def chosen_theta(summary: dict) -> str:
    """Which θ the run saved as its optimizer, in words."""
    validation = summary.get("validation") or {}
    if validation.get("best_step") is None:
        return "the last"
    return (
        f"the best on the run's validation seeds, at outer step {validation['best_step']} of "
        f"{summary['steps']} (validation {validation.get('metric', 'loss')}: "
        f"{fmt_number(validation.get('best_vs_theta0'))}× θ0's, "
        f"{fmt_number(validation.get('best_vs_adam'))}× tuned Adam's)"
    )


def make_meta(
    name: str, run: dict, tensors: list[dict], checks: list[dict], theta_sha256: str
) -> dict[str, Any]:
    """``meta.json``: what :func:`lopt.pretrained.load` reads, and the provenance."""
    config, summary = run["config"], run["summary"]
    horizons = {c["summary"]["optimizers"][c["label"]]["meta_training"]["horizon"] for c in checks}
    if len(horizons) != 1:
        raise SystemExit(f"the evaluations disagree on the meta-training horizon: {horizons}")
    environment = summary.get("environment") or {}
    estimator = {k: v for k, v in config["estimator"].items() if k != "_target_"}
    saved = read_config(run["optimizer_dir"])
    return {
        "name": name,
        "backbone": saved["name"],
        "task": summary["task"],
        "task_options": task_options(config),
        "task_description": get_task_doc(summary["task"]),
        "architecture": {"tensors": tensors},
        "time_input": saved.get("time", DEFAULT_TIME_INPUT),
        "horizon": horizons.pop(),
        "steps_checked": max(c["summary"]["settings"]["num_steps"] for c in checks),
        "checks": {
            c["name"]: {
                "num_steps": c["summary"]["settings"]["num_steps"],
                "task": c["summary"]["task"]["name"],
                "task_changes": (
                    c["summary"]["optimizers"][c["label"]].get("generalization") or {}
                ).get("task_changes", {}),
                "commit": c["summary"]["environment"].get("commit"),
            }
            for c in checks
        },
        "commit": environment.get("commit"),
        "meta_training": {
            "estimator": summary["estimator"],
            "estimator_options": estimator,
            "outer_steps": summary["steps"],
            "resumed_from_step": summary.get("resumed_from_step"),
            "inner_steps_per_outer_step": run["inner_per_outer"],
            "inner_steps": summary["steps"] * run["inner_per_outer"],
            "wall_time_sec": summary["wall_time_sec"],
            "inner_steps_per_sec": summary["inner_steps_per_sec"],
            "backend": environment.get("backend"),
            "device_count": environment.get("device_count"),
            "jax": environment.get("jax"),
            "seed": summary.get("seed"),
            "theta_chosen": chosen_theta(summary),
        },
        "theta_sha256": theta_sha256,
    }


def get_task_doc(task_name: str) -> str:
    """The registered task's one-line description."""
    return " ".join((task_factory(task_name).__doc__ or "").split())


def make_card(meta: dict, config: dict, checks: list[dict], command: str) -> str:
    """The card's Markdown."""
    name = meta["name"]
    run_length = (
        ", num_steps=T)  # T: the run's length"
        if needs_run_length(config.get("time", DEFAULT_TIME_INPUT), config.get("schedule"))
        else ")"
    )
    lines = [
        f"# `{name}`: a `{meta['backbone']}` learned optimizer for `{meta['task']}`",
        "",
        f"Generated by `{command}` from the meta-training run's files and its evaluations; "
        "do not edit by hand.",
        "",
        "```python",
        "# spec = lopt.derive_spec(...)",
        f'optimizer = lopt.pretrained.load("{name}", spec{run_length}',
        "opt_state = optimizer.init(params)",
        "updates, opt_state = optimizer.update(grads, opt_state, params)",
        "```",
        "",
        f"Meta-trained at a horizon of {meta['horizon']} steps; checked up to "
        f"{meta['steps_checked']} steps.",
        "",
        *architecture_section(meta),
        "",
        *budget_section(meta, config),
        "",
        *comparison_section(checks),
        "",
        *failures_section(checks, meta["steps_checked"], name),
        "",
        "## Evaluations",
        "",
    ]
    for check in checks:
        lines += [*check_section(check), ""]
    return "\n".join(lines).rstrip() + "\n"


# -- shipping -----------------------------------------------------------------------------


def ship(name: str, run_dir: Path, eval_dirs: list[Path], destination: Path, command: str) -> Path:
    """Copies the run's optimizer into ``destination / name`` and writes its card."""
    if not NAME.fullmatch(name):
        raise SystemExit(f"name {name!r}: use lowercase letters, digits and underscores")
    run_dir = run_dir.resolve()
    run = read_run(run_dir)
    run["optimizer_dir"] = run_dir / run["summary"].get("optimizer_dir", "optimizer")
    space = read_weight_space(run["optimizer_dir"])
    if space is None:
        raise SystemExit(f"{run['optimizer_dir']} records no weight space: save it again first")
    spec, tensors = architecture(run["summary"]["task"], task_options(run["config"]), space)
    load_learned_optimizer(run["optimizer_dir"], spec)  # it loads for its own task
    checks = [read_check(eval_dir, run_dir) for eval_dir in eval_dirs]
    if len({check["name"] for check in checks}) != len(checks):
        raise SystemExit("the evaluation directories must have distinct names (one per check)")

    target = destination / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for file in OPTIMIZER_FILES:
        shutil.copyfile(run["optimizer_dir"] / file, target / file)
    config = read_config(target)
    load_learned_optimizer(target, spec)  # the copy checks against its recorded hash
    meta = make_meta(name, run, tensors, checks, sha256(target / OPTIMIZER_FILES[1]))
    (target / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (target / CARD_FILE).write_text(make_card(meta, config, checks, command))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the optimizer's name in lopt.pretrained")
    parser.add_argument("run_dir", type=Path, help="the lopt-train run directory")
    parser.add_argument("eval_dirs", nargs="+", type=Path, help="lopt-eval output directories")
    parser.add_argument(
        "--destination", type=Path, default=DESTINATION, help="default: lopt/pretrained"
    )
    args = parser.parse_args()
    command = " ".join(["python scripts/ship_pretrained.py", *sys.argv[1:]])
    target = ship(args.name, args.run_dir, args.eval_dirs, args.destination, command)
    print(f"wrote {target}")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    if f"lopt.pretrained.{args.name}" not in setuptools["packages"]:
        print(
            f"add lopt.pretrained.{args.name} to [tool.setuptools] packages in pyproject.toml "
            "so that its files are installed with the package"
        )


if __name__ == "__main__":
    main()
