"""Regenerates docs/results.md and docs/results/<task>/ from finished runs, never by hand.

    python scripts/results_page.py docs/results/manifest.yaml

The manifest names, per task, the ``lopt-train`` run directories (by label), the
``lopt-eval`` output directories (by label) and the lever-study runs:

    title: ...
    intro: ...                # a paragraph of context (budgets, machine, what ran at once)
    tasks:
      mlp_digits:
        notes: ...            # optional paragraph under the task's heading
        targets_for: [unf]    # optional: the learned optimizers the targets table is for
        meta_training: {unf: runs/final/mlp/unf, deepsets: runs/final/mlp/deepsets}
        evaluations: {horizon: runs/final/eval/mlp}
        levers: [runs/levers/mlp/E2, ...]

Everything else comes from the runs' own files: the commands (``.hydra/overrides.yaml``),
the source commit and budgets (``summary.json``, ``results.json``), the validation curves
(``loss.png``), the evaluation tables (``results.md``) and paired differences, and the
learned scalars (``optimizer/theta.msgpack``). Each task's files are copied into
docs/results/<task>/ (the command's record as ``overrides.yaml``) so the page stands on its
own: a manifest may name those copies instead of the runs, and the page is regenerated from
them alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml

from lopt.evaluation.levers import fmt_number, recorded_overrides, scalars, table
from lopt.evaluation.report import SIGNIFICANCE, verdict
from lopt.learned.serialization import read_theta

DOCS = Path("docs")


OVERRIDES = "overrides.yaml"
"""A published copy's record of the command line (Hydra's ``.hydra/overrides.yaml``)."""


def command(directory: Path, program: str) -> str:
    """The command that made a run or evaluation directory, or its published copy."""
    overrides = recorded_overrides(directory)
    return " ".join([program, *(f"'{o}'" if "[" in o else o for o in overrides)])


def publish(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Copies ``names`` (those that exist) and the command's record from a run or evaluation
    directory into its published copy ``target``; nothing when ``source`` is that copy, so
    the page can be regenerated from docs/results alone."""
    target.mkdir(parents=True, exist_ok=True)
    if source.resolve() == target.resolve():
        return
    for name in names:
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)
    if (source / "optimizer").is_dir():
        shutil.copytree(source / "optimizer", target / "optimizer", dirs_exist_ok=True)
    recorded = source / ".hydra" / OVERRIDES
    shutil.copy2(recorded if recorded.is_file() else source / OVERRIDES, target / OVERRIDES)


def meta_training_section(task: str, runs: dict[str, str], out: Path) -> list[str]:
    lines = [
        "| optimizer | outer steps | wall time (s) | inner steps/s | best θ at step | "
        "validation ÷ θ0 | validation ÷ Adam | valid loss: best θ / θ0 / Adam | "
        "learned scalars (best θ) | commit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    commands, figures = [], []
    for label, path in runs.items():
        run = Path(path)
        summary = json.loads((run / "summary.json").read_text())
        validation = summary.get("validation") or {}
        learned = scalars(read_theta(run / "optimizer"))
        lines.append(
            f"| {label} | {summary['steps']} | {fmt_number(summary['wall_time_sec'], 4)} | "
            f"{fmt_number(summary['inner_steps_per_sec'])} | {validation.get('best_step', '—')} | "
            f"{fmt_number(validation.get('best_vs_theta0'))} | "
            f"{fmt_number(validation.get('best_vs_adam'))} | "
            + " / ".join(
                fmt_number(validation.get(key))
                for key in ("best_valid_loss", "theta0_valid_loss", "adam_valid_loss")
            )
            + " | "
            + ", ".join(f"{k} {fmt_number(v)}" for k, v in learned.items())
            + f" | {(summary.get('environment') or {}).get('commit', '—')} |"
        )
        commands.append(command(run, "lopt-train"))
        publish(
            run,
            out / f"{label}_training",
            ("loss.png", "summary.json", "metrics.jsonl", "config.yaml"),
        )
        figures.append(f"![{label} meta-training](results/{task}/{label}_training/loss.png)")
    return [*lines, "", "```bash", *commands, "```", "", *figures]


def evaluation_section(task: str, evaluations: dict[str, str], out: Path) -> list[str]:
    lines: list[str] = []
    for label, path in evaluations.items():
        directory = Path(path)
        publish(directory, out / label, ("results.md", "curves.png", "results.json"))
        report = (directory / "results.md").read_text().split("\n", 2)[2]  # drop the title
        lines += [
            f"#### {label}",
            "",
            "```bash",
            command(directory, "lopt-eval"),
            "```",
            "",
            report.strip(),
            "",
            f"![{task} {label}](results/{task}/{label}/curves.png)",
            "",
        ]
    return lines


def targets_section(evaluations: dict[str, str], learned: str = "unf") -> list[str]:
    """For each evaluation, ``learned``'s final training loss against every other optimizer,
    paired over seeds in log space: the geometric mean ratio, the paired t-test's p-value and
    the seeds won, and whether it is significantly lower."""
    rows, others = [], []
    for label, path in evaluations.items():
        summary = json.loads((Path(path) / "results.json").read_text())
        paired = summary.get("paired", {}).get(learned)
        if paired is None:
            continue
        others += [name for name in paired if name not in others]
        rows.append((label, paired))
    if not rows:
        return []
    lines = [
        f"{learned}'s final training loss against each other optimizer's, paired over the "
        "evaluation seeds in log space: the geometric mean of the per-seed ratios, the "
        "two-sided p-value of the paired t-test on the log differences, and the seeds "
        f"{learned} wins of all; **lower** / **higher** where p < {SIGNIFICANCE:g}.",
        "",
        "| check | " + " | ".join(others) + " |",
        "|---|" + "---|" * len(others),
    ]
    for label, paired in rows:
        cells = []
        for other in others:
            entry = paired.get(other)
            if entry is None or entry["ratio"] is None:
                cells.append("—")
                continue
            p = "—" if entry["p_value"] is None else f"{entry['p_value']:.2g}"
            seeds = entry["wins"] + entry["losses"] + entry["ties"]
            shown = verdict(entry)
            shown = f"**{shown}**" if shown != "not significant" else shown
            cells.append(f"×{entry['ratio']:.3g} (p {p}, wins {entry['wins']}/{seeds}): {shown}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def task_section(task: str, entry: dict) -> list[str]:
    out = DOCS / "results" / task
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"## {task}", ""]
    if entry.get("notes"):
        lines += [entry["notes"].strip(), ""]
    if entry.get("meta_training"):
        lines += [
            "### Meta-training",
            "",
            *meta_training_section(task, entry["meta_training"], out),
        ]
    if entry.get("evaluations"):
        lines += ["", "### Against the targets", ""]
        for number, learned in enumerate(entry.get("targets_for", ["unf"])):
            lines += ([""] if number else []) + targets_section(entry["evaluations"], learned)
        lines += ["", "### Evaluation on held-out seeds", ""]
        lines += evaluation_section(task, entry["evaluations"], out)
    if entry.get("levers"):
        runs = []
        for path in map(Path, entry["levers"]):
            if not (path / "metrics.jsonl").is_file():
                raise SystemExit(f"lever run {path} has no metrics.jsonl")
            copy = out / "levers" / path.name
            names = ("summary.json", "metrics.jsonl", "validation/reference.json")
            publish(path, copy, names)
            runs.append(copy)
        lever_text = table(runs)
        (out / "levers.md").write_text(lever_text)
        lines += [
            "### Levers tried (validation on the validation seeds, not the evaluation's)",
            "",
            lever_text,
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path)
    args = parser.parse_args()
    manifest = yaml.safe_load(args.manifest.read_text())
    lines = [f"# {manifest['title']}", "", manifest.get("intro", "").strip(), ""]
    lines.append(
        "Generated by `python scripts/results_page.py "
        f"{args.manifest}` from the runs' own files; do not edit by hand."
    )
    lines.append("")
    for task, entry in manifest["tasks"].items():
        lines += task_section(task, entry)
    (DOCS / "results.md").write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {DOCS / 'results.md'}")


if __name__ == "__main__":
    main()
