"""A table of meta-training runs and what their validation found, one row per run directory.

It compares the levers tried on a task (runs that differ in a few overrides) on the
results pages. Each row reads the run's own files: the overrides it was started with
(``.hydra/overrides.yaml``, or ``overrides.yaml`` in a published copy of the run),
``summary.json`` (steps, wall time, the validation's best step and its ratios to theta0
and the reference Adam), ``validation/reference.json`` and every validation record of
``metrics.jsonl``; and the learned step size, scale and momentum of the best theta
(``optimizer/theta.msgpack``). A run stopped before its end (no summary) is shown from its
records and reference alone. Nothing is typed in by hand.

>>> print(table([Path("runs/levers/mlp/E1"), Path("runs/levers/mlp/E2")]))
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import yaml

from lopt.evaluation.validation import Reference
from lopt.learned.serialization import read_theta


def fmt_number(value: float | None, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits; "—" for None or a non-finite number."""
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


def recorded_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides a run was started with: Hydra's record in the run
    directory, or the ``overrides.yaml`` a published copy of the run keeps."""
    recorded = run_dir / ".hydra" / "overrides.yaml"
    if not recorded.is_file():
        recorded = run_dir / "overrides.yaml"
    return yaml.safe_load(recorded.read_text())


def row(run_dir: Path, baseline: list[str]) -> dict[str, str]:
    """One table row; ``baseline`` holds the overrides every run shares (left out)."""
    overrides = recorded_overrides(run_dir)
    changed = [o for o in overrides if o not in baseline and not o.startswith("hydra.")]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    validated = [r for r in records if r.get("val_final_loss_gmean") is not None]
    curve = [f"{r['step']}:{fmt_number(r['val_vs_adam'], 2)}" for r in validated]
    finished = (run_dir / "summary.json").is_file()
    if finished:
        summary = json.loads((run_dir / "summary.json").read_text())
        validation = summary.get("validation") or {}
        learned = scalars(read_theta(run_dir / "optimizer"))
    else:  # stopped early: what its records and reference say
        summary = {"steps": f"{records[-1]['step']} (stopped)", "wall_time_sec": None}
        validation = partial_validation(run_dir, validated)
        learned = {}
    return {
        "run": run_dir.name,
        "overrides": " ".join(changed) or "(shared only)",
        "steps": str(summary["steps"]),
        "wall s": fmt_number(summary["wall_time_sec"], 4),
        "θ0 val": fmt_number(validation.get("theta0_final_loss_gmean")),
        "Adam val (lr)": f"{fmt_number(validation.get('adam_final_loss_gmean'))} "
        f"({fmt_number(validation.get('adam_learning_rate'), 2)})",
        "best val (step)": f"{fmt_number(validation.get('best_final_loss_gmean'))} "
        f"({validation.get('best_step', '—')})",
        "valid loss θ0 / Adam / best": " / ".join(
            fmt_number(validation.get(key))
            for key in ("theta0_valid_loss", "adam_valid_loss", "best_valid_loss")
        ),
        "best ÷ θ0": fmt_number(validation.get("best_vs_theta0")),
        "best ÷ Adam": fmt_number(validation.get("best_vs_adam")),
        "val ÷ Adam by step": " ".join(curve),
        "learned scalars": ", ".join(f"{k} {fmt_number(v)}" for k, v in learned.items()) or "—",
    }


def partial_validation(run_dir: Path, validated: list[dict]) -> dict:
    """The validation summary of a run stopped before its end, from its own records."""
    reference = Reference.from_json(
        json.loads((run_dir / "validation" / "reference.json").read_text())
    )
    theta0, adam = reference.theta0.score(), reference.adam.score()
    out = {
        "theta0_final_loss_gmean": theta0,
        "adam_final_loss_gmean": adam,
        "theta0_valid_loss": reference.theta0.score("valid_loss"),
        "adam_valid_loss": reference.adam.score("valid_loss"),
        "adam_learning_rate": reference.adam_learning_rate,
    }
    best = min(validated, key=lambda r: r["val_final_loss_gmean"], default=None)
    if best is not None and best["val_final_loss_gmean"] < theta0:
        out.update(
            best_final_loss_gmean=best["val_final_loss_gmean"],
            best_valid_loss=best["val_valid_loss"],
            best_step=best["step"],
            best_vs_theta0=best["val_final_loss_gmean"] / theta0,
            best_vs_adam=best["val_final_loss_gmean"] / adam,
        )
    return out


def table(run_dirs: list[Path]) -> str:
    """The markdown table of the runs (overrides they all share are listed above it)."""
    all_overrides = [recorded_overrides(d) for d in run_dirs]
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
