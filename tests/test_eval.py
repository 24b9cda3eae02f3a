"""Evaluation: statistics, seeds, the vmapped runner, baseline sweeps, loading, lopt-eval."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import lopt.learned as L
import lopt.tasks as tasks
from lopt.evaluation import (
    EVAL_SEED_OFFSET,
    TUNING_SEED_OFFSET,
    EvalSettings,
    OptimizerLoadError,
    check_disjoint,
    evaluation_seeds,
    final_loss,
    find_saved_optimizer,
    load_for_task,
    load_summary,
    markdown_table,
    plot_curves,
    run_seeds,
    seed_keys,
    standard_error,
    steps_to_reach,
    summarize,
    summarize_log,
    tail_steps,
    trailing_mean,
    tune_learning_rate,
    tuning_seeds,
)
from lopt.evaluation.stats import (
    block_means,
    failures,
    geometric_mean_curve,
    interquartile_mean,
    log_losses,
    paired_log_test,
)
from lopt.evaluation.sweep import choose


@pytest.fixture(scope="module")
def tiny_task():
    return tasks.get_task("mlp_digits", width=8)


def save_fresh(path, task, name="unf"):
    opt = L.make_optimizer(name, task.spec)
    theta = opt.init_meta(jax.random.key(0), jax.eval_shape(task.init, jax.random.key(0)))
    return L.save_optimizer(path, opt, theta)


# --- statistics -----------------------------------------------------------------------


def test_standard_error_matches_formula():
    values = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [4.0, 10.0]])
    # std(ddof=1) of 1..4 is sqrt(5/3); divided by sqrt(4)
    np.testing.assert_allclose(standard_error(values), [np.sqrt(5 / 3) / 2, 0.0])
    # non-finite entries are skipped; fewer than two finite values leave it undefined (nan)
    ragged = np.array([[1.0, np.nan, np.nan], [3.0, 5.0, np.inf]])
    np.testing.assert_allclose(standard_error(ragged), [1.0, np.nan, np.nan])
    assert np.isnan(summarize(np.array([0.3])).se)
    summary = summarize(np.array([2.0, 4.0, np.nan]))
    assert (summary.mean, summary.count, summary.num_nonfinite) == (3.0, 2, 1)
    assert summary.se == pytest.approx(np.sqrt(2.0) / np.sqrt(2.0))


def test_final_loss_trailing_mean_and_steps_to_reach():
    curve = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 1.0])
    assert tail_steps(6, 0.3) == 2 and tail_steps(6, 0.01) == 1
    np.testing.assert_allclose(final_loss(curve[None], 2), [1.0])
    np.testing.assert_allclose(trailing_mean(curve, 2), [5.0, 4.5, 3.5, 2.5, 1.5, 1.0])
    # the smoothed curve first reaches 2.5 after 3 updates; 1.0 only at the end
    assert steps_to_reach(curve, 2.5, window=2) == 3
    assert steps_to_reach(curve, 1.0, window=2) == 5
    assert steps_to_reach(curve, 0.5, window=2) is None
    assert steps_to_reach(curve, float("nan"), window=2) is None
    with pytest.raises(ValueError, match="tail_fraction"):
        tail_steps(10, 0.0)


def test_log_space_summary_against_hand_computed_values():
    # Seed 0 underflowed to float32 zero, seed 3 diverged.
    finals = np.array([0.0, 1e-2, 1e-4, np.nan, 1e-3])
    logs = log_losses(finals)
    np.testing.assert_allclose(logs, [-8.0, -2.0, -4.0, np.inf, -3.0])
    adam = np.array([1e-3, 5e-4, 1e-3, 1e-3, 1e-4])
    failed = failures(finals, adam)
    # NaN fails; 1e-2 > 10 x 5e-4 fails; 1e-3 = 10 x 1e-4 is not above the threshold
    np.testing.assert_array_equal(failed, [False, True, False, True, False])
    summary = summarize_log(finals, failed)
    assert summary.geometric_mean == pytest.approx(10 ** ((-8 - 2 - 4 - 3) / 4))
    assert summary.median == pytest.approx(1e-3)  # sorted: -8 -4 -3 -2 inf
    assert summary.iqm == pytest.approx(10 ** ((-4 - 3 - 2) / 3))  # one dropped at each end
    assert summary.log_se == pytest.approx(np.std([-8, -2, -4, -3], ddof=1) / 2)
    assert (summary.count, summary.num_nonfinite, summary.num_failed) == (5, 1, 2)
    assert interquartile_mean(np.arange(8.0)) == pytest.approx(3.5)  # 2..5
    assert failures(finals, None).tolist() == [False, False, False, True, False]


def test_paired_log_test_against_hand_computed_values():
    from scipy import stats as scipy_stats

    a = np.array([1e-3, 2e-3, 1e-4, 5e-3])
    b = np.array([1e-2, 1e-2, 1e-2, 1e-2])
    test = paired_log_test(a, b)
    difference = np.log10(a) - np.log10(b)
    se = difference.std(ddof=1) / 2
    t = difference.mean() / se
    assert test.ratio == pytest.approx(10 ** difference.mean())
    assert test.log_se == pytest.approx(se) and test.t == pytest.approx(t)
    assert test.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), 3))
    assert test.p_value == pytest.approx(scipy_stats.ttest_rel(np.log10(a), np.log10(b)).pvalue)
    assert (test.wins, test.losses, test.ties, test.count) == (4, 0, 0, 4)
    # Zeros compare at the floor: two float32 zeros tie; a zero beats a positive loss.
    zeros = paired_log_test(np.array([0.0, 0.0, 1e-3]), np.array([0.0, 1e-3, 1e-3]))
    assert (zeros.wins, zeros.losses, zeros.ties, zeros.count) == (1, 0, 2, 3)
    # A diverged seed loses its pair and leaves the t-test; one pair leaves t undefined.
    diverged = paired_log_test(np.array([np.inf, 1e-3]), np.array([1e-2, 1e-2]))
    assert (diverged.wins, diverged.losses, diverged.count) == (1, 1, 1)
    assert diverged.t is None and diverged.p_value is None and diverged.log_se is None
    same = paired_log_test(np.array([1e-3, 1e-2]), np.array([1e-3, 1e-2]))
    assert same.ratio == 1.0 and same.p_value == 1.0


def test_block_means_and_geometric_mean_curve():
    steps, means = block_means(np.arange(10.0)[None], 4)
    np.testing.assert_array_equal(steps, [2, 5, 8, 9])
    np.testing.assert_allclose(means, [[1.0, 4.0, 7.0, 9.0]])
    curves = np.array([[4.0, 2.0, 1.0], [1.0, 0.5, 0.25]])
    curve = geometric_mean_curve(curves, window=2)
    np.testing.assert_allclose(curve, [2.0, np.sqrt(3.0 * 0.75), np.sqrt(1.5 * 0.375)])


def test_choose_skips_diverged_rates():
    assert choose(np.array([np.nan, 2.0, 1.0, np.inf])) == 2
    assert choose(np.array([3.0, 1.0, 1.0])) == 1  # ties: the smaller rate
    with pytest.raises(ValueError, match="diverged"):
        choose(np.array([np.inf, np.nan]))


# --- seeds ------------------------------------------------------------------------------


def test_evaluation_and_tuning_seeds_are_disjoint():
    held_out, tuning = evaluation_seeds(5), tuning_seeds(3)
    assert held_out == tuple(range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + 5))
    assert tuning == tuple(range(TUNING_SEED_OFFSET, TUNING_SEED_OFFSET + 3))
    assert not set(held_out) & set(tuning)
    assert min(held_out + tuning) >= EVAL_SEED_OFFSET  # below: meta-training's seeds
    check_disjoint(held_out, tuning)
    with pytest.raises(ValueError, match="overlap at \\[20000, 20001\\]"):
        check_disjoint(evaluation_seeds(3, offset=19_999), tuning)
    with pytest.raises(ValueError, match="overlap"):
        EvalSettings(num_seeds=3, seed_offset=TUNING_SEED_OFFSET).check()
    keys = seed_keys(held_out)
    assert keys.shape == (5, 2) and len({tuple(map(int, k)) for k in keys}) == 5


# --- runner and sweep -----------------------------------------------------------------


def test_runner_matches_a_plain_optax_loop(tiny_task):
    """Each vmapped run is the optax training loop of its own seed's init and batches."""
    num_steps, seeds = 4, (10_000, 10_001)
    opt = L.make_optimizer("sgdm", tiny_task.spec, learning_rate=0.1, momentum=0.9)
    theta = opt.init_meta(jax.random.key(0))
    shared = run_seeds(tiny_task, opt, theta, seed_keys(seeds), num_steps, num_test_batches=2)
    assert shared.train_loss.shape == (2, num_steps)
    assert set(shared.test_metrics) == {"loss", "accuracy"} and shared.seconds_per_step > 0

    reference = optax.sgd(0.1, momentum=0.9)
    loss_and_grad = jax.jit(jax.value_and_grad(tiny_task.loss))
    for row, key in zip(shared.train_loss, seed_keys(seeds), strict=True):
        init_key, data_key, _ = jax.random.split(key, 3)
        params = tiny_task.init(init_key)
        state = reference.init(params)
        losses = []
        for t in range(num_steps):
            batch = tiny_task.batch(jax.random.fold_in(data_key, t), "train")
            loss, grads = loss_and_grad(params, batch)
            updates, state = reference.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            losses.append(float(loss))
        np.testing.assert_allclose(row, losses, rtol=2e-5)


def test_sweep_picks_the_best_rate(tiny_task):
    """A tiny rate barely moves, a huge one blows the loss up; 0.1 is clearly best."""
    sweep = tune_learning_rate(
        tiny_task,
        "sgdm",
        [1e3, 1e-4, 0.1],
        seeds=(20_000, 20_001),
        num_steps=30,
        hyperparameters={"momentum": 0.9},
    )
    assert sweep.learning_rates == (1e-4, 0.1, 1e3)  # sorted
    assert sweep.final_losses.shape == (3, 2)
    assert sweep.best_learning_rate == 0.1 and not sweep.at_grid_edge
    assert sweep.scores[1] < 1.8 < sweep.scores[0] < sweep.scores[2]
    geometric = np.exp(np.log(sweep.final_losses[:2]).mean(axis=1))  # the criterion
    np.testing.assert_allclose(sweep.scores[:2], geometric, rtol=1e-12)

    # the sweep's run for (0.1, seed 20_001) is the plain evaluation run of that seed
    opt = L.make_optimizer("sgdm", tiny_task.spec, learning_rate=0.1, momentum=0.9)
    single = run_seeds(tiny_task, opt, opt.init_meta(jax.random.key(0)), seed_keys([20_001]), 30)
    np.testing.assert_allclose(
        final_loss(single.train_loss, sweep.tail), sweep.final_losses[1, 1:], rtol=1e-5
    )
    with pytest.raises(ValueError, match="duplicates"):
        tune_learning_rate(tiny_task, "adam", [0.1, 0.1], seeds=(1,), num_steps=2)
    with pytest.raises(ValueError, match="cannot tune 'unf'"):
        tune_learning_rate(tiny_task, "unf", [0.1], seeds=(1,), num_steps=2)


# --- loading ------------------------------------------------------------------------------


def test_find_saved_optimizer_in_run_directories(tmp_path, tiny_task):
    run = tmp_path / "run"
    saved = save_fresh(run / "optimizer", tiny_task)
    (run / ".hydra").mkdir()
    (run / "checkpoints" / "100").mkdir(parents=True)
    assert find_saved_optimizer(run) == saved
    assert find_saved_optimizer(saved) == saved
    save_fresh(run / "optimizer_last", tiny_task, "deepsets")
    assert find_saved_optimizer(run) == saved  # a run's optimizer/ is its chosen one
    elsewhere = tmp_path / "elsewhere"
    save_fresh(elsewhere / "a", tiny_task)
    save_fresh(elsewhere / "b", tiny_task, "deepsets")
    with pytest.raises(OptimizerLoadError, match="holds 2 saved optimizers"):
        find_saved_optimizer(elsewhere)
    with pytest.raises(OptimizerLoadError, match="does not exist"):
        find_saved_optimizer(tmp_path / "missing")
    with pytest.raises(OptimizerLoadError, match="no saved optimizer"):
        find_saved_optimizer(run / "checkpoints")
    with pytest.raises(OptimizerLoadError, match="is a file"):
        find_saved_optimizer(saved / "config.json")


def test_load_for_task_wider_model_and_mismatched_architecture(tmp_path, tiny_task):
    saved = save_fresh(tmp_path / "run" / "optimizer", tiny_task)
    (tmp_path / "run" / "config.yaml").write_text(
        "task:\n  _target_: lopt.tasks.mlp_digits\n  width: 8\n"
        "schedule:\n  min_length: 10\n  max_length: 10\nseed: 0\n"
    )
    wider = load_for_task(tmp_path / "run", tasks.get_task("mlp_digits", width=16))
    assert wider.label == "run unf" and wider.directory == str(saved)
    # A lopt-train run directory (named by date and time) is labelled by its run name.
    (tmp_path / "run" / "config.yaml").write_text(
        (tmp_path / "run" / "config.yaml").read_text() + "name: mlp\n"
    )
    assert load_for_task(saved, tasks.get_task("mlp_digits", width=16)).label == "mlp unf"
    assert wider.meta_training["task"] == {"name": "mlp_digits", "config": {"width": 8}}
    assert wider.meta_training["horizon"] == 10
    with pytest.raises(OptimizerLoadError, match="does not fit task 'cnn_digits'"):
        load_for_task(saved, tasks.get_task("cnn_digits", channels=(4, 4)))


# --- the command line -------------------------------------------------------------------


def lopt_eval(*args, cwd):
    command = [sys.executable, "-c", "from lopt.cli.eval import main; main()", *args]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # lopt-eval end to end in a subprocess; CI runs it
def test_cli_writes_figure_json_and_table(tmp_path, tiny_task):
    run = tmp_path / "runs" / "tiny_unf"
    save_fresh(run / "optimizer", tiny_task)
    (run / "config.yaml").write_text(
        "task:\n  _target_: lopt.tasks.mlp_digits\n  width: 32\n  depth: 1\n"
        "schedule:\n  min_length: 10\n  max_length: 10\nseed: 0\n"
    )
    out = tmp_path / "out"
    result = lopt_eval(
        "task=mlp_digits",
        "task.width=8",
        f"optimizers=[{run}]",
        "num_seeds=2",
        "num_steps=20",
        "tuning.num_seeds=2",
        "baselines.sgdm.learning_rates=[0.01,0.1]",
        "baselines.adam.learning_rates=[0.001,0.01]",
        "baselines.adam_cosine.learning_rates=[0.01,0.03]",
        "max_grid_extensions=0",
        "tasks=[{width: 12}]",
        f"out_dir={out}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A further task in the same call: its own outputs, its own sizes.
    wider = json.loads((out / "width=12" / "results.json").read_text())
    assert wider["task"]["config"]["width"] == 12
    assert list(wider["optimizers"]) == ["tiny_unf", "sgdm", "adam", "adam_cosine"]
    summary = json.loads((out / "results.json").read_text())
    assert list(summary["optimizers"]) == ["tiny_unf", "sgdm", "adam", "adam_cosine"]
    cosine = summary["optimizers"]["adam_cosine"]["config"]
    assert cosine["total_steps"] == 20 and cosine["warmup_fraction"] == 0.05
    assert summary["task"]["config"]["width"] == 8
    seeds, tuning = summary["settings"]["seeds"], summary["settings"]["tuning_seeds"]
    assert seeds == [10_000, 10_001] and not set(seeds) & set(tuning)
    for name, grid in (("sgdm", [0.01, 0.1]), ("adam", [0.001, 0.01])):
        sweep = summary["sweeps"][name]
        assert sweep["learning_rates"] == grid and len(sweep["final_losses"]) == 2
        best = grid[int(np.argmin(sweep["scores"]))]
        assert sweep["best_learning_rate"] == best
        assert summary["optimizers"][name]["config"]["learning_rate"] == best
    trained = summary["optimizers"]["tiny_unf"]
    assert np.asarray(trained["train_loss"]).shape == (2, 20)  # 20 steps: blocks of one
    final = lambda name: np.asarray(summary["optimizers"][name]["final_train_loss"]["per_seed"])
    paired = summary["paired"]["tiny_unf"]
    assert set(paired) == {"sgdm", "adam", "adam_cosine"}
    difference = np.log10(final("tiny_unf")) - np.log10(final("adam"))
    assert paired["adam"]["ratio"] == pytest.approx(10 ** difference.mean(), rel=1e-9)
    se = difference.std(ddof=1) / np.sqrt(2)
    assert paired["adam"]["log10_se"] == pytest.approx(se, rel=1e-9)
    assert paired["adam"]["wins"] + paired["adam"]["losses"] + paired["adam"]["ties"] == 2
    assert "paired over seeds" in (out / "results.md").read_text()
    assert len(trained["curve_mean"]) == 20 and trained["curve_steps"][-1] == 19
    entry = trained["final_train_loss"]
    assert entry["geometric_mean"] == pytest.approx(10 ** np.log10(final("tiny_unf")).mean())
    assert entry["num_failed"] == sum(entry["failed"])
    assert set(trained["held_out"]) == {"loss", "accuracy"}
    assert trained["generalization"]["task_changes"] == {"width": [32, 8]}
    # Paths relative to the output directory: none of this machine's absolute paths.
    assert trained["source"] == "../runs/tiny_unf"
    assert trained["meta_training"]["run_dir"] == "../runs/tiny_unf"
    assert str(tmp_path) not in (out / "results.json").read_text()
    # results.json round-trips: the report and the figure are rebuilt from it alone.
    assert markdown_table(load_summary(out)) == (out / "results.md").read_text()
    plot_curves(load_summary(out / "results.json"), tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes()[:4] == b"\x89PNG"
    assert trained["generalization"]["horizon_ratio"] == 2.0
    adam = summary["optimizers"]["adam"]
    assert summary["target"]["final_train_loss"] == adam["final_train_loss"]["geometric_mean"]
    assert adam["steps_to_target"] is not None and adam["steps_to_target"] <= 19
    table = (out / "results.md").read_text()
    assert "| optimizer | final train loss: geometric mean | median | IQM | failed |" in table
    assert "tiny_unf" in table and "adam (tuned, lr" in table and "width 32 → 8" in table
    assert (out / ".hydra" / "config.yaml").is_file()


def test_cli_reports_bad_optimizer_path_and_bad_keys(tmp_path):
    missing = tmp_path / "no_such_run"
    result = lopt_eval(f"optimizers=[{missing}]", f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"lopt-eval: error: optimizer path '{missing}' does not exist" in result.stderr
    assert not (tmp_path / "out").exists()  # not even Hydra's .hydra/ and log
    typo = lopt_eval("num_seed=3", f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert typo.returncode != 0 and "num_seed" in typo.stderr


@pytest.mark.slow
def test_one_seed_leaves_standard_errors_undefined(tmp_path):
    out = tmp_path / "out"
    result = lopt_eval(
        "task=mlp_digits",
        "task.width=8",
        "num_seeds=1",
        "num_steps=10",
        "tuning.num_seeds=2",
        "~baselines.sgdm",
        "~baselines.adam_cosine",
        "baselines.adam.learning_rates=[0.001,0.01,0.1]",
        "max_grid_extensions=0",
        f"out_dir={out}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "num_seeds=1: a standard error needs two seeds or more" in result.stdout + result.stderr
    adam = json.loads((out / "results.json").read_text())["optimizers"]["adam"]
    assert adam["final_train_loss"]["se"] is None and adam["held_out"]["loss"]["se"] is None
    assert adam["final_train_loss"]["log10_se"] is None
    assert "± —" in (out / "results.md").read_text()


def test_an_evaluation_on_a_member_of_the_training_family_says_so(tmp_path):
    from types import SimpleNamespace

    from lopt.evaluation.evaluate import generalization
    from lopt.evaluation.loading import read_meta_training
    from lopt.evaluation.report import generalization_note

    (tmp_path / "run" / "optimizer").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text(
        "task: {_target_: lopt.tasks.mlp_digits, width: 32}\n"
        "task_family: [{width: 64}, {batch_size: 8}]\n"
        "schedule: {max_length: 100}\nname: fam\nseed: 0\n"
    )
    trained = read_meta_training(tmp_path / "run" / "optimizer")
    assert trained["family"] == [{"width": 64}, {"batch_size": 8}]
    result = lambda width: SimpleNamespace(
        task_name="mlp_digits",
        task_config={"width": width},
        settings=SimpleNamespace(num_steps=200),
    )
    member = generalization(result(64), trained)
    assert member["family_member"] and member["task_changes"] == {"width": [32, 64]}
    assert not generalization(result(128), trained)["family_member"]
    entry = {"generalization": member, "meta_training": trained}
    note = generalization_note("unf", entry)
    assert "task family members {width: 64}, {batch_size: 8}" in note
    assert "this task is one of them" in note


def test_further_tasks_get_their_own_directories_and_bad_entries_are_named(tmp_path):
    from lopt.cli.eval import EvalConfigError, evaluated_tasks

    config = {"task": {"_target_": "lopt.tasks.mlp_digits", "width": 32}}
    config["tasks"] = [{"width": 64}, {"width": 16, "batch_size": 8}]
    found = evaluated_tasks(config, tmp_path)
    assert [d.relative_to(tmp_path).as_posix() for d, _ in found] == [
        ".",
        "width=64",
        "width=16,batch_size=8",
    ]
    assert found[2][1] == {"_target_": "lopt.tasks.mlp_digits", "width": 16, "batch_size": 8}
    for bad, message in (([3], r"tasks\[0\] must be a mapping"), ([{"width": 8}] * 2, "twice")):
        with pytest.raises(EvalConfigError, match=message):
            evaluated_tasks({**config, "tasks": bad}, tmp_path)
