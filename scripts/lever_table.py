"""A table of meta-training runs and what their validation found, one row per run directory.

    python scripts/lever_table.py runs/levers/mlp/*          # markdown on stdout
    python scripts/lever_table.py runs/levers/mlp/* -o docs/results/levers_mlp.md

Each row reads the run's own files: the overrides it was started with
(``.hydra/overrides.yaml``), ``summary.json`` (steps, wall time, the validation's best step
and its ratios to theta0 and the reference Adam), ``validation/reference.json`` and every
validation record of ``metrics.jsonl``; and the learned step size, scale and momentum of
the best theta (``optimizer/theta.msgpack``). Nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import yaml

from lopt.learned.serialization import read_theta


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


def scalars(theta: dict) -> dict[str, float]:
    """The learned scalars of a theta, by their meaning (α, β, γ0 or a baseline's)."""
    out = {}
    for key, value in theta.items():
        if key.startswith("log_"):
            out[key[4:]] = float(np.exp(value))
        elif key.startswith("logit_"):
            out[key[6:]] = float(1 / (1 + np.exp(-value)))
    return out


def row(run_dir: Path, baseline: list[str]) -> dict[str, str]:
    """One table row; ``baseline`` holds the overrides every run shares (left out)."""
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    changed = [o for o in overrides if o not in baseline and not o.startswith("hydra.")]
    summary = json.loads((run_dir / "summary.json").read_text())
    validation = summary.get("validation") or {}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [
        f"{r['step']}:{_number(r['val_vs_adam'], 2)}"
        for r in records
        if r.get("val_final_loss") is not None
    ]
    learned = scalars(read_theta(run_dir / "optimizer"))
    return {
        "run": run_dir.name,
        "overrides": " ".join(changed) or "(shared only)",
        "steps": str(summary["steps"]),
        "wall s": _number(summary["wall_time_sec"], 4),
        "θ0 val": _number(validation.get("theta0_final_loss")),
        "Adam val (lr)": f"{_number(validation.get('adam_final_loss'))} "
        f"({_number(validation.get('adam_learning_rate'), 2)})",
        "best val (step)": f"{_number(validation.get('best_final_loss'))} "
        f"({validation.get('best_step', '—')})",
        "best ÷ θ0": _number(validation.get("best_vs_theta0")),
        "best ÷ Adam": _number(validation.get("best_vs_adam")),
        "val ÷ Adam by step": " ".join(curve),
        "learned scalars": ", ".join(f"{k} {_number(v)}" for k, v in learned.items()),
    }


def table(run_dirs: list[Path]) -> str:
    """The markdown table of the runs (overrides they all share are listed above it)."""
    all_overrides = [
        yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) for d in run_dirs
    ]
    shared = [o for o in all_overrides[0] if all(o in others for others in all_overrides)]
    rows = [row(d, shared) for d in run_dirs]
    columns = list(rows[0])
    lines = [
        "Shared overrides: `" + " ".join(o for o in shared if not o.startswith("hydra.")) + "`",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for entry in rows:
        lines.append("| " + " | ".join(entry[c].replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="lopt-train run directories")
    parser.add_argument("-o", "--output", type=Path, help="write the table here too")
    args = parser.parse_args()
    finished = [d for d in args.runs if (d / "summary.json").is_file()]
    skipped = sorted(set(args.runs) - set(finished))
    text = table(finished)
    if skipped:
        text += "\nNot finished (no summary.json): " + ", ".join(d.name for d in skipped) + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
