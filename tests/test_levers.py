"""The lever table of the results pages: read from run directories, and the same from the
copies ``scripts/results_page.py`` publishes of them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

import lopt
from lopt.evaluation.levers import recorded_overrides, table
from lopt.evaluation.validation import MEASURES, Reference, ValidationScores

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "results_page.py"


def results_page():
    spec = importlib.util.spec_from_file_location("results_page", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(run_dir: Path, overrides: list[str], scores: list[float], finished: bool) -> Path:
    """A run directory as ``lopt-train`` leaves it: its overrides, validated records, the
    validation reference, and (when finished) its summary and best optimizer."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    records = [
        {"step": 10 * (i + 1), "val_final_loss_gmean": s, "val_vs_adam": s / 0.5}
        | {"val_final_loss": s, "val_valid_loss": s + 0.1}
        for i, s in enumerate(scores)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    level = lambda loss: ValidationScores(*(np.full(2, loss) for _ in MEASURES))
    reference = Reference(level(0.4), level(0.5), 0.01, (0.01, 0.03), (0.5, 0.6))
    (run_dir / "validation").mkdir()
    (run_dir / "validation" / "reference.json").write_text(json.dumps(reference.to_json()))
    if finished:
        opt = lopt.learned.make_optimizer("sgdm", None, learning_rate=0.05)
        lopt.save_optimizer(run_dir / "optimizer", opt, opt.init_meta(jax.random.key(0)))
        best = min(range(len(scores)), key=scores.__getitem__)
        validation = {
            "best_step": 10 * (best + 1),
            "best_final_loss_gmean": scores[best],
            "best_vs_theta0": scores[best] / 0.4,
            "best_vs_adam": scores[best] / 0.5,
        }
        summary = {"steps": 10 * len(scores), "wall_time_sec": 12.5, "validation": validation}
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_the_table_reads_the_same_from_the_runs_and_their_published_copies(tmp_path):
    shared = ["experiment=mlp", "lopt=unf"]
    runs = [
        fake_run(tmp_path / "runs" / "base", shared, [0.41, 0.39], finished=True),
        fake_run(tmp_path / "runs" / "tail", [*shared, "objective.tail=0.2"], [0.38], False),
    ]
    from_runs = table(runs)
    assert "Shared overrides: `experiment=mlp lopt=unf`" in from_runs
    lines = from_runs.splitlines()
    assert lines[4].startswith("| base | (shared only) | 20 |")
    assert "learning_rate 0.05" in lines[4]
    assert lines[5].startswith("| tail | objective.tail=0.2 | 10 (stopped) |")
    assert "0.38 (10)" in lines[5]  # the stopped run's best validation, from its records

    page = results_page()
    copies = []
    for run in runs:
        copy = tmp_path / "docs" / run.name
        page.publish(run, copy, ("summary.json", "metrics.jsonl", "validation/reference.json"))
        assert not (copy / ".hydra").exists()
        assert recorded_overrides(copy) == recorded_overrides(run)
        copies.append(copy)
    assert table(copies) == from_runs
    # A copy published again from itself is left as it is.
    page.publish(copies[0], copies[0], ("summary.json",))
    assert table(copies) == from_runs
    with pytest.raises(FileNotFoundError):
        recorded_overrides(tmp_path / "nowhere")
