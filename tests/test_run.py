"""The run layer from Python, without the command line: settings, records, resume, the best
theta's location in a checkpoint."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from lopt.checkpoint import Checkpointer, leaf_infos, nested_dict
from lopt.evaluation.validation import ValidationSettings
from lopt.learned import load_optimizer, make_optimizer, read_theta
from lopt.meta import MetaObjective, constant_length, default_outer_optimizer, pes
from lopt.run import (
    OPTIMIZER_DIR,
    REFERENCE_FILE,
    RunError,
    RunParts,
    RunSettings,
    RunState,
    run_record,
    theta_location,
    train,
)
from lopt.run import reference as run_reference
from lopt.tasks import get_task


@pytest.fixture(scope="module")
def parts():
    task = get_task("mlp_digits", width=8, batch_size=16)
    return RunParts(
        task=task,
        opt=make_optimizer("sgdm", task.spec),
        estimator=pes(2, 5, 0.01),
        outer_opt=default_outer_optimizer(),
        schedule=constant_length(10),
        objective=MetaObjective(),
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"checkpoint_every": -1}, "checkpoint_every must be >= 0"),
        ({"validate_every": -2}, "validation.every must be >= 0"),
        ({"validate_every": 5}, "validation settings go with"),
        ({"start_at_tuned": True}, "start_at_tuned needs validation"),
    ],
)
def test_settings_refuse_what_cannot_run(options, message):
    with pytest.raises(RunError, match=message):
        RunSettings(**options)


def test_a_derived_record_holds_every_setting_in_json_types():
    validation = ValidationSettings(num_seeds=2, num_steps=10)
    record = run_record(RunSettings(steps=3, validation=validation, validate_every=2))
    assert record["steps"] == 3 and record["validation"]["every"] == 2
    assert record["validation"]["adam_learning_rates"] == list(validation.adam_learning_rates)
    assert json.loads(json.dumps(record)) == record
    given = {"steps": 3, "anything": [1]}
    assert run_record(RunSettings(steps=3, record=given)) == given


def test_the_best_theta_location_names_a_field_of_the_run_state():
    assert theta_location({"validation": {"every": 5}}) == f".{RunState._fields[1]}"
    assert theta_location({"validation": {"every": 0}}) == ".meta.theta"
    assert theta_location({"validation": {"every": 5}}, "last") == ".meta.theta"
    with pytest.raises(ValueError, match="which theta"):
        theta_location({}, "first")


def test_train_from_python_writes_the_run_and_resumes_only_the_same_run(parts, tmp_path):
    run_dir = tmp_path / "run"
    settings = RunSettings(name="py", steps=2, log_every=1, checkpoint_every=1, progress=False)
    summary = train(settings, parts, run_dir)
    assert summary["steps"] == 2 and summary["interrupted_by"] is None
    assert json.loads((run_dir / "summary.json").read_text())["name"] == "py"
    saved = read_theta(run_dir / OPTIMIZER_DIR)
    with Checkpointer(run_dir / "checkpoints") as checkpoints:
        leaves, meta = checkpoints.restore_leaves(2)
    assert meta["config"]["run"] == run_record(settings)
    last = nested_dict(leaves, leaf_infos(meta), theta_location(meta["config"]["run"]))
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(last), strict=True):
        np.testing.assert_array_equal(a, b)
    load_optimizer(run_dir / OPTIMIZER_DIR)

    with pytest.raises(RunError, match="already holds checkpoints"):
        train(settings, parts, run_dir)
    other = RunSettings(name="py", steps=3, seed=1, resume=True, progress=False)
    with pytest.raises(RunError, match="seed: 0 -> 1"):
        train(other, parts, run_dir)
    more = RunSettings(name="py", steps=3, log_every=1, resume=True, progress=False)
    assert train(more, parts, run_dir)["resumed_from_step"] == 2


@pytest.mark.slow  # three runs end to end; CI runs it
def test_runs_of_one_task_share_the_tuned_reference_adam(parts, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(run_reference, "source_commit", lambda: "0123456789ab")
    validation = ValidationSettings(num_seeds=2, num_steps=10, adam_learning_rates=(1e-2, 1e-1))
    cache = tmp_path / "cache"

    def run(name, opt):
        settings = RunSettings(
            name=name,
            steps=1,
            validation=validation,
            validate_every=1,
            progress=False,
            reference_cache=cache,
        )
        train(settings, parts._replace(opt=opt), tmp_path / name)
        return json.loads((tmp_path / name / REFERENCE_FILE).read_text())

    with caplog.at_level("INFO", logger="lopt.train"):
        first = run("sgdm", parts.opt)
        assert len(list(cache.glob("*.json"))) == 1
        assert "tuned by an earlier run" not in caplog.text
        second = run("adam", make_optimizer("adam", parts.task.spec))
    assert "tuned by an earlier run" in caplog.text
    for key in ("adam", "adam_learning_rate", "adam_grid", "adam_grid_scores"):
        assert second[key] == first[key]
    assert second["theta0"] != first["theta0"]  # each run scores its own theta0
    # Code with uncommitted changes shares nothing: its results need not match a commit's.
    monkeypatch.setattr(run_reference, "source_commit", lambda: "0123456789ab+")
    assert run_reference.adam_cache_key(parts.task, validation) is None


def test_a_task_family_run_resumes_bit_for_bit(parts, tmp_path):
    family = parts._replace(family=(get_task("mlp_digits", width=12, batch_size=16),))
    straight = RunSettings(name="family", steps=3, log_every=1, checkpoint_every=1, progress=False)
    summary = train(straight, family, tmp_path / "straight")
    assert summary["steps"] == 3
    first = RunSettings(name="family", steps=2, log_every=1, checkpoint_every=1, progress=False)
    train(first, family, tmp_path / "resumed")
    again = RunSettings(
        name="family", steps=3, log_every=1, checkpoint_every=1, resume=True, progress=False
    )
    assert train(again, family, tmp_path / "resumed")["resumed_from_step"] == 2
    one, other = (read_theta(tmp_path / name / OPTIMIZER_DIR) for name in ("straight", "resumed"))
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(other), strict=True):
        np.testing.assert_array_equal(a, b)
    records = [json.loads(line) for line in (tmp_path / "straight/metrics.jsonl").open()]
    assert len(records) == 3


def test_a_setting_added_since_the_checkpoint_and_left_empty_does_not_block_resume():
    from lopt.run.resume import check_compatible

    saved = {"steps": 10, "validation": {"every": 5}, "task": {"width": 8}}
    check_compatible(saved, {**saved, "task_family": [], "validation": {"every": 5, "x": None}})
    with pytest.raises(RunError, match=r"task_family: \(absent\) -> \[\{'width': 16\}\]"):
        check_compatible(saved, {**saved, "task_family": [{"width": 16}]})
    with pytest.raises(RunError, match=r"task.width: 8 -> 9"):
        check_compatible(saved, {**saved, "task": {"width": 9}})
