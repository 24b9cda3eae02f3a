"""The command-line tools: config composition, end-to-end runs, sweeps, resume, export."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import lopt.cli.schema
from lopt.checkpoint import Checkpointer
from lopt.cli.common import RunError, build_parts, outer_optimizer, to_container
from lopt.cli.export import main as export_main
from lopt.cli.train import train
from lopt.evaluation.sweep import DEFAULT_GRIDS, tune_interior
from lopt.evaluation.validation import ValidationSettings
from lopt.learned import load_optimizer
from lopt.meta import MetaObjective, default_outer_optimizer
from lopt.run import RunSettings, tuned_step_size, with_step_size
from lopt.tasks import EMBEDDED_TASKS, get_task

CONFIGS = Path(lopt.cli.schema.__file__).parents[2] / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
GROUPS = {
    group: sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))
    for group in ("task", "lopt", "estimator", "outer_opt", "logger")
}
TFDS_TASKS = ("mlp_fashion_mnist", "cnn_cifar10", "rnn_lm1b", "transformer_lm1b")
# A small update network keeps compilation short in the subprocess runs.
FAST = ["experiment=smoke", "lopt.hidden=8", "lopt.depth=1", "progress=false"]


def composed(overrides: list[str]) -> dict:
    with initialize_config_module(config_module="lopt.configs", version_base="1.3"):
        return to_container(compose(config_name="train", overrides=overrides))


def script(name: str) -> list[str]:
    installed = Path(sys.executable).parent / name
    if installed.exists():
        return [str(installed)]
    module = {"lopt-train": "lopt.cli.train", "lopt-export": "lopt.cli.export"}[name]
    return [sys.executable, "-m", module]


def environment(tmp: Path) -> dict:
    """The subprocesses' environment: the run's compilation cache (tests/conftest.py) is in
    ``os.environ``; wandb's files stay in the test's directory."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", HYDRA_FULL_ERROR="0")
    env.pop("WANDB_MODE", None)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        env[name] = str(tmp / "wandb_home")
    return env


def run(args: list[str], cwd: Path, timeout: float = 240, name: str = "lopt-train"):
    return subprocess.run(
        script(name) + args,
        cwd=cwd,
        env=environment(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_train(args: list[str], cwd: Path) -> subprocess.Popen:
    """``lopt-train args`` in the background (stderr captured), to signal or kill."""
    return subprocess.Popen(
        script("lopt-train") + args,
        cwd=cwd,
        env=environment(cwd),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def final_leaves(run_dir: Path) -> tuple[int, list[np.ndarray]]:
    with Checkpointer(run_dir / "checkpoints") as checkpoints:
        step = checkpoints.latest_step()
        return step, checkpoints.restore_leaves(step)[0]


# -- composition (fast, no training) ----------------------------------------------------


def test_config_groups_are_complete():
    assert set(EXPERIMENTS) >= {"mlp", "cnn", "rnn", "transformer", "smoke", "demo"}
    assert {p.stem for p in (CONFIGS / "recipe").glob("*.yaml")} == {"tuned", "paper"}
    assert set(GROUPS["lopt"]) == {"unf", "unf_deep", "nfn", "deepsets", "sgdm", "adam"}
    assert set(GROUPS["estimator"]) == {"pes", "tbptt", "es"}
    # Every registered task has its config, and no config names an unregistered one.
    assert set(GROUPS["task"]) == {*EMBEDDED_TASKS, *TFDS_TASKS}


def test_a_task_family_builds_its_members_from_the_task_config():
    config = composed(["experiment=smoke", "task_family=[{width: 16}, {batch_size: 8}]"])
    parts = build_parts(config)
    assert [m.config["width"] for m in parts.family] == [16, parts.task.config["width"]]
    assert parts.family[1].config["batch_size"] == 8
    scaled = build_parts(composed(["experiment=smoke", "task_family=[{param_scale: 10.0}]"]))
    assert scaled.family[0].param_scale == 10.0 and scaled.task.param_scale == 1.0
    with pytest.raises(RunError, match="param_scale must be a positive finite number"):
        build_parts(composed(["experiment=smoke", "task.param_scale=0"]))
    for bad, message in (("[3]", "task_family.0. must be a mapping"), ("[{widht: 3}]", "widht")):
        with pytest.raises(RunError, match=message):
            build_parts(composed(["experiment=smoke", f"task_family={bad}"]))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment):
    config = composed([f"experiment={experiment}"])
    assert config["name"] == experiment
    assert set(config["objective"]) == {
        "split",
        "reduction",
        "transform",
        "clip",
        "max_loss_factor",
        "tail",
    }
    assert config["estimator"]["truncation_length"] == config["truncation_length"]
    assert config["estimator"]["num_pairs"] * 2 == config["population"]
    parts = build_parts(config)
    assert parts.task.name == config["task"]["_target_"].rsplit(".", 1)[1]
    assert parts.opt.config["name"] == config["lopt"]["name"]
    assert parts.estimator.config["name"] == "pes"
    assert parts.schedule.max_length == config["schedule"]["max_length"]
    bound = config["objective"]["max_loss_factor"] * parts.task.chance_loss
    assert parts.objective.max_loss == pytest.approx(bound)


@pytest.mark.parametrize("lopt", ["unf", "deepsets", "sgdm"])
def test_recipes_set_the_method_and_paper_is_the_papers_setting(lopt):
    paper = composed(["experiment=mlp", f"lopt={lopt}", "recipe=paper"])
    assert (paper["population"], paper["truncation_length"], paper["sigma"]) == (16, 50, 0.01)
    assert paper["objective"]["transform"] == "none" and not paper["start_at_tuned"]
    assert paper["outer_opt"]["learning_rate"] == 1e-3
    assert paper["outer_opt"]["scalar_learning_rate"] is None
    tuned = composed(["experiment=mlp", f"lopt={lopt}"])
    assert tuned["start_at_tuned"] and tuned["objective"]["transform"] == "log"
    if lopt != "sgdm":
        parts = build_parts(paper)
        assert {k: parts.opt.config[k] for k in ("base", "alpha", "beta", "gamma0")} == {
            "base": "sgdm",
            "alpha": 0.1,
            "beta": 0.001,
            "gamma0": 0.9,
        }
        assert build_parts(tuned).opt.config["base"] == "adam"
        assert build_parts(tuned).opt.config["zero_output"]
    else:
        assert build_parts(tuned).opt.config["name"] == "sgdm"


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g, options in GROUPS.items() for o in options]
)
def test_every_group_option_composes(group, option):
    config = composed([f"{group}={option}"])
    section = config[group]
    assert "_target_" in section
    if group == "task":
        assert section["_target_"].endswith(option)
    elif group == "lopt":
        assert section["name"] == option
    if group in ("estimator", "outer_opt") or (group == "task" and option not in TFDS_TASKS):
        build_parts(config)  # every embedded task and every estimator builds


def test_estimator_sizes_follow_the_population():
    config = composed(["estimator=tbptt", "population=6", "truncation_length=7"])
    assert config["estimator"]["num_particles"] == 6
    assert config["estimator"]["truncation_length"] == 7
    config = composed(["estimator=es", "population=6", "sigma=0.1"])
    assert config["estimator"] == {"_target_": "lopt.meta.full_es", "num_pairs": 3, "sigma": 0.1}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("steps=many", "steps"),
        ("task.widht=3", "widht"),
        ("lopt.hiden=3", "hiden"),
        ("objective.split=tset", "tset"),
        ("estimator.sigma=wide", "sigma"),
        ("lopt=unff", "unff"),
        ("experiment=smok", "smok"),
        ("resume=maybe", "resume"),
    ],
)
def test_bad_overrides_fail_while_composing(override, message):
    with pytest.raises(Exception, match=message):
        composed([override])


def test_invalid_values_fail_before_any_work():
    with pytest.raises(Exception, match="even"):
        composed(["population=3"])
    with pytest.raises(RunError, match=r"lopt.*hidden"):
        build_parts(composed(["lopt.hidden=0"]))
    with pytest.raises(RunError, match=r"cannot build task.*width must be an int >= 1, got 0"):
        build_parts(composed(["task=mlp_digits", "task.width=0"]))
    with pytest.raises(RunError, match="schedule"):
        build_parts(composed(["schedule.min_length=50", "schedule.max_length=10"]))


def test_the_schemas_take_the_library_settings_and_their_defaults():
    plain = lambda value: getattr(value, "value", value)  # a config's enum: its choice
    objective = {
        k: plain(v) for k, v in dataclasses.asdict(lopt.cli.schema.ObjectiveConfig()).items()
    }
    # The config states the divergence bound in units of the chance-level loss.
    assert objective.pop("max_loss_factor") == 10.0
    library = MetaObjective()._asdict()
    del library["max_loss"]
    assert objective == library and list(objective) == list(library)
    train = dataclasses.asdict(lopt.cli.schema.TrainConfig())
    # validation and reference_cache are groups of the config, built into settings.
    run = dataclasses.asdict(RunSettings())
    shared = set(run) & set(train) - {"validation", "reference_cache"}
    assert len(shared) == 11
    assert {key: train[key] for key in shared} == {key: run[key] for key in shared}
    with pytest.raises(TypeError, match="max_los"):
        lopt.cli.schema.settings_schema("Bad", MetaObjective, rename={"max_los": "factor"})


def test_default_outer_optimizer_matches_the_library_default():
    theta = {"w": np.linspace(-1.0, 1.0, 5, dtype=np.float32)}
    ours, library = outer_optimizer("adam", 1e-3, 100, 1.0), default_outer_optimizer()
    state_a, state_b = ours.init(theta), library.init(theta)
    for k in range(3):
        grad = {"w": np.float32(10.0 * (k + 1)) * theta["w"]}
        update_a, state_a = ours.update(grad, state_a, theta)
        update_b, state_b = library.update(grad, state_b, theta)
        np.testing.assert_array_equal(update_a["w"], update_b["w"])


def test_scalar_meta_parameters_get_their_own_outer_learning_rate():
    outer = outer_optimizer("adam", 1e-3, warmup_steps=0, scalar_learning_rate=0.1)
    theta = {"log_alpha": jnp.zeros(()), "network": {"w": jnp.zeros((3,))}}
    grads = {"log_alpha": jnp.asarray(0.01), "network": {"w": jnp.asarray([0.01, -0.02, 0.03])}}
    updates, _ = outer.update(grads, outer.init(theta), theta)
    # Adam's first step moves every coordinate by its learning rate.
    assert float(updates["log_alpha"]) == pytest.approx(-0.1, rel=1e-4)
    np.testing.assert_allclose(updates["network"]["w"], [-1e-3, 1e-3, -1e-3], rtol=1e-4)
    with pytest.raises(ValueError, match="scalar_learning_rate must be positive"):
        outer_optimizer("adam", 1e-3, scalar_learning_rate=0.0)


def test_start_at_tuned_sets_theta0_to_the_tuned_rate_of_its_base():
    config = composed(["experiment=smoke", "lopt=unf", "lopt.base=sgdm", "lopt.gamma0=0.9"])
    parts = build_parts(config)
    settings = ValidationSettings(num_seeds=2, num_steps=20, num_test_batches=1)
    baseline, rate = tuned_step_size(parts, settings, reference=None)
    sweep = tune_interior(
        parts.task,
        "sgdm",
        DEFAULT_GRIDS["sgdm"],
        settings.seeds,
        20,
        hyperparameters={"momentum": 0.9},
    )
    assert baseline == "sgdm" and rate == sweep.best_learning_rate
    theta = with_step_size(parts.opt.init_meta(jax.random.key(0)), rate)
    assert float(jnp.exp(theta["log_alpha"])) == pytest.approx(rate, rel=1e-6)
    # An adam base on a warmup-cosine schedule starts at tuned Adam with warmup-cosine.
    scheduled = ["experiment=smoke", "lopt=unf", "lopt.base=adam", "lopt.schedule=warmup_cosine"]
    baseline, rate = tuned_step_size(build_parts(composed(scheduled)), settings, reference=None)
    sweep = tune_interior(
        parts.task,
        "adam_cosine",
        DEFAULT_GRIDS["adam_cosine"],
        settings.seeds,
        20,
        hyperparameters={"b1": 0.9, "warmup_fraction": 0.05},
    )
    assert baseline == "adam_cosine" and rate == sweep.best_learning_rate
    sgdm_scheduled = [*scheduled, "lopt.base=sgdm"]
    with pytest.raises(RunError, match="no baseline to tune for base 'sgdm'"):
        tuned_step_size(build_parts(composed(sgdm_scheduled)), settings, reference=None)
    sgdm = build_parts(composed(["experiment=smoke", "lopt=sgdm"])).opt
    theta = with_step_size(sgdm.init_meta(jax.random.key(0)), 0.3)
    assert float(jnp.exp(theta["log_learning_rate"])) == pytest.approx(0.3, rel=1e-6)
    with pytest.raises(RunError, match="start_at_tuned needs validation"):
        with initialize_config_module(config_module="lopt.configs", version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=[*FAST, "start_at_tuned=true", "validation.every=0"],
            )
        train(cfg, Path("/nonexistent/never-written"))


def test_bad_override_on_the_command_line(tmp_path):
    result = run(["task.widht=3"], tmp_path, timeout=120)
    assert result.returncode != 0
    assert "widht" in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started


@pytest.mark.parametrize(
    "extra", [["+mesh=4", "+gpus=4"], ["+task.foo=1"], ["+validation.every_other=2"]]
)
def test_keys_added_with_plus_are_rejected_not_ignored(extra, tmp_path):
    with initialize_config_module(config_module="lopt.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*FAST, *extra])
    names = sorted(o.split("=")[0].lstrip("+") for o in extra)
    with pytest.raises(RunError, match="unknown config keys") as error:
        train(cfg, tmp_path / "run")
    assert all(name in str(error.value) for name in names)
    assert not (tmp_path / "run").exists()


# -- end-to-end runs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One small run with the wandb logger (offline), from an unrelated directory."""
    cwd = tmp_path_factory.mktemp("smoke")
    result = run([*FAST, "logger=wandb", "hydra.run.dir=run"], cwd)
    assert result.returncode == 0, result.stderr[-4000:]
    return cwd / "run", result


def test_smoke_run_leaves_optimizer_plot_summary_and_metrics(smoke_run):
    run_dir, result = smoke_run
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "loss.png", "summary.json"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["optimizer"] == "unf"
    assert np.isfinite(summary["final_meta_loss"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    # Validation every 10 steps: its columns are filled on those steps only.
    validated = {r["step"]: r["val_final_loss_gmean"] for r in records if r["val_final_loss"]}
    assert sorted(validated) == [10, 20] and all(r["val_vs_adam"] for r in records[1::2])
    reference = json.loads((run_dir / "validation" / "reference.json").read_text())
    # The best theta is chosen on the geometric mean of the validation runs' final losses.
    geometric = lambda losses: float(np.exp(np.mean(np.log(losses))))
    theta0 = geometric(reference["theta0"]["final_loss"])
    best = summary["validation"]
    assert best["metric"] == "final_loss"
    scores = {0: theta0, **validated}
    assert best["best_step"] == min(scores, key=lambda step: (scores[step], step))
    assert best["best_score"] == pytest.approx(scores[best["best_step"]], rel=1e-6)
    assert best["best_final_loss_gmean"] == pytest.approx(best["best_score"], rel=1e-6)
    assert best["theta0_final_loss_gmean"] == pytest.approx(theta0)
    assert best["best_vs_adam"] == pytest.approx(
        scores[best["best_step"]] / geometric(reference["adam"]["final_loss"]), rel=1e-6
    )
    assert best["best_valid_loss"] > 0 and best["theta0_valid_loss"] > 0
    assert "verdict" in best and best["adam_learning_rate"] in reference["adam_grid"]
    # Validation's wall time: each validation's in its record, the run's total and share
    # (the reference levels included) in the summary.
    seconds = [r["val_seconds"] for r in records if r["step"] in validated]
    assert all(s > 0 for s in seconds)
    assert best["seconds"] > sum(seconds)
    wall = summary["wall_time_sec"]  # rounded to 0.1 s
    assert best["share_of_wall_time"] == pytest.approx(best["seconds"] / wall, rel=1e-2)
    assert 0 < best["share_of_wall_time"] < 1
    for name in ("optimizer", "optimizer_last"):
        assert (run_dir / name / "theta.msgpack").is_file()
    assert (run_dir / "metrics.csv").read_text().splitlines()[0].startswith("step,")
    config = OmegaConf.load(run_dir / "config.yaml")
    assert config.lopt.hidden == 8 and config.estimator.num_pairs == 2
    assert "logger=wandb" in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    assert "meta-training unf" in (run_dir / "train.log").read_text()
    # Paths relative to the run directory: the summary holds none of this machine's.
    assert summary["optimizer_dir"] == "optimizer"
    assert str(run_dir.parent) not in (run_dir / "summary.json").read_text()
    assert "summary" in result.stderr + result.stdout
    # wandb ran offline, without an account, and was given the optimizer artifact.
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    assert (run_dir / "wandb_id").read_text().strip() in offline[0].name


def test_exported_optimizer_trains_in_a_plain_optax_loop(smoke_run, tmp_path, capsys):
    run_dir, _ = smoke_run
    export_main([str(run_dir), "-o", str(tmp_path / "exported")])
    exported = (tmp_path / "exported" / "theta.msgpack").read_bytes()
    assert exported == (run_dir / "optimizer" / "theta.msgpack").read_bytes()
    export_main([str(run_dir), "-o", str(tmp_path / "last"), "--theta", "last"])
    (tmp_path / "a_file").write_text("keep me")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_dir" / "notes.txt").write_text("keep me")
    for target, message in (("a_file", "is not a directory"), ("a_dir", "non-empty directory")):
        with pytest.raises(SystemExit) as exit_info:
            export_main([str(run_dir), "-o", str(tmp_path / target)])
        assert exit_info.value.code == 1
        assert message in capsys.readouterr().err
    assert (tmp_path / "a_file").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "a_dir").iterdir()) == ["notes.txt"]
    last = (tmp_path / "last" / "theta.msgpack").read_bytes()
    assert last == (run_dir / "optimizer_last" / "theta.msgpack").read_bytes()
    with pytest.raises(SystemExit):  # the best theta over the last: only when asked
        export_main([str(run_dir), "-o", str(tmp_path / "last")])
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "last" / "theta.msgpack").read_bytes() == last
    export_main([str(run_dir), "-o", str(tmp_path / "last"), "--overwrite"])
    assert (tmp_path / "last" / "theta.msgpack").read_bytes() == exported

    task = get_task("mlp_digits", width=16, batch_size=64)  # another width: theta transfers
    optimizer = load_optimizer(tmp_path / "exported", task.spec)
    params = task.init(jax.random.key(0))
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, key):
        loss, grads = jax.value_and_grad(task.loss)(params, task.batch(key))
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for i in range(30):
        params, state, loss = step(params, state, jax.random.key(i))
        losses.append(float(loss))
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < losses[0]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    skip = ("wandb",)  # Hydra's .hydra/ and train.log included: a refusal leaves them too
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and not str(p.relative_to(run_dir)).startswith(skip)
    }


def test_incompatible_or_corrupt_checkpoint_is_refused_without_changes(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    before = snapshot(run_dir)
    with initialize_config_module(config_module="lopt.configs", version_base="1.3"):
        different = compose(config_name="train", overrides=[*FAST, "resume=true", "task.width=16"])
        fresh = compose(config_name="train", overrides=FAST)
    with pytest.raises(RunError, match=r"different configuration(.|\n)*task.width: 32 -> 16"):
        train(different, run_dir)
    with pytest.raises(RunError, match=r"already holds checkpoints.*resume=true"):
        train(fresh, run_dir)
    assert snapshot(run_dir) == before

    with Checkpointer(run_dir / "checkpoints") as checkpoints:
        latest = checkpoints.latest_step()
    files = [p for p in (run_dir / "checkpoints" / str(latest) / "state").rglob("*") if p.is_file()]
    data = max(files, key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    before = snapshot(run_dir)
    result = run([*FAST, f"hydra.run.dir={run_dir}", "resume=true", "steps=30"], tmp_path)
    assert result.returncode == 1
    assert "corrupt" in result.stderr and str(latest) in result.stderr
    assert snapshot(run_dir) == before
    assert (run_dir / ".hydra" / "overrides.yaml").is_file() and (run_dir / "train.log").is_file()


def test_a_diverging_optimizer_is_reported_not_saved_silently(tmp_path, caplog):
    with initialize_config_module(config_module="lopt.configs", version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "experiment=smoke",
                "progress=false",
                "lopt=sgdm",
                "lopt.learning_rate=1e6",
                "start_at_tuned=false",
                "steps=4",
                "log_every=2",
            ],
        )
    with caplog.at_level("WARNING", logger="lopt.train"):
        summary = train(cfg, tmp_path / "run")
    assert summary["num_nonfinite"] > 0
    assert not summary["validation"]["improved_on_theta0"]
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "particle groups diverged" in messages and "loss above 23" in messages
    assert "initial theta diverges" in messages and "never improved" in messages
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["meta_loss"] < 23.1 for r in records)  # exploding particles are left out


@pytest.mark.slow  # an end-to-end run of several processes; CI runs it
def test_multirun_sweep_gives_each_run_its_directory(tmp_path):
    result = run(
        [
            "-m",
            "lopt=unf,deepsets",
            *FAST,
            "steps=4",
            "log_every=2",
            "validation.every=0",
            "start_at_tuned=false",
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for number, name in enumerate(("unf", "deepsets")):
        run_dir = tmp_path / "sweep" / str(number)
        assert OmegaConf.load(run_dir / "config.yaml").lopt.name == name
        assert json.loads((run_dir / "optimizer" / "config.json").read_text())["name"] == name
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["steps"] == 4 and "validation" not in summary
        assert not (run_dir / "optimizer_last").exists()  # no validation: optimizer/ is last


@pytest.mark.slow  # an end-to-end run of several processes; CI runs it
def test_run_killed_with_sigkill_resumes_bit_for_bit(tmp_path):
    steps = 40
    common = [*FAST, "logger=none", "checkpoint_every=5", "log_every=5", "keep_checkpoints=2"]
    straight = run([*common, f"steps={steps}", "hydra.run.dir=straight"], tmp_path)
    assert straight.returncode == 0, straight.stderr[-4000:]

    # The same run, with a longer budget so it is still going when killed.
    killed_dir = tmp_path / "killed"
    process = start_train([*common, "steps=100000", f"hydra.run.dir={killed_dir}"], tmp_path)
    deadline = time.monotonic() + 240
    try:
        while not (killed_dir / "checkpoints" / "5" / "_CHECKPOINT_METADATA").exists():
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at, _ = final_leaves(killed_dir)
    assert 5 <= killed_at < steps, killed_at

    resumed = run(
        [*common, f"steps={steps}", f"hydra.run.dir={killed_dir}", "resume=true"], tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    step_a, leaves_a = final_leaves(tmp_path / "straight")
    step_b, leaves_b = final_leaves(killed_dir)
    assert step_a == step_b == steps
    assert len(leaves_a) == len(leaves_b)
    for a, b in zip(leaves_a, leaves_b, strict=True):  # theta, outer and estimator state
        np.testing.assert_array_equal(a, b)
    theta = "optimizer/theta.msgpack"
    assert (tmp_path / "straight" / theta).read_bytes() == (killed_dir / theta).read_bytes()
    summary = json.loads((killed_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] == killed_at
    records = [json.loads(x) for x in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(5, steps + 1, 5))
    # Validation ran on both (the checkpoints hold the best theta): the same scores, the
    # same best step, the same best and last optimizers.
    straight_records = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    validation = lambda rs: [(r["step"], r["val_final_loss"]) for r in rs if r["val_final_loss"]]
    assert validation(records) == validation(map(json.loads, straight_records))
    assert len(validation(records)) == steps // 10
    straight_summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    # The validation's seconds are each process's own wall time, not part of the result.
    timing = ("seconds", "share_of_wall_time")
    results = lambda s: {k: v for k, v in s["validation"].items() if k not in timing}
    assert results(summary) == results(straight_summary)
    assert all(summary["validation"][k] > 0 for k in timing)
    last = "optimizer_last/theta.msgpack"
    assert (tmp_path / "straight" / last).read_bytes() == (killed_dir / last).read_bytes()


@pytest.mark.slow  # an end-to-end run of several processes; CI runs it
def test_ctrl_c_finishes_the_step_checkpoints_and_prints_the_resume_command(tmp_path):
    common = [*FAST, "logger=none", "log_every=5", "validation.every=0", "start_at_tuned=false"]
    process = start_train([*common, "steps=100000", "checkpoint_every=100000"], tmp_path)
    metrics = lambda: list(tmp_path.glob("runs/smoke/*/metrics.jsonl"))
    deadline = time.monotonic() + 240
    while not (metrics() and metrics()[0].read_text()):  # the loop is running
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run never logged"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    run_dir = metrics()[0].parent
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted_by"] == "SIGINT"
    step, _ = final_leaves(run_dir)
    assert step == summary["steps"] > 0  # a checkpoint of the step it stopped at
    command = stderr.strip().splitlines()[-1].split()
    assert command[0] == "lopt-train" and "resume=true" in command
    assert f"hydra.run.dir={run_dir}" in command
    resumed = run([*command[1:], f"steps={step + 3}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == step + 3


def test_a_signal_while_starting_exits_with_one_line(tmp_path):
    process = start_train([*FAST, "logger=none", "hydra.run.dir=run"], tmp_path)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "config.yaml").exists():  # started, not yet trained
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("lopt-train: interrupted while starting")


def test_lopt_tasks_lists_every_task_with_its_options_and_data(capsys):
    from lopt.cli.tasks import describe
    from lopt.cli.tasks import main as tasks_main

    tasks_main([])
    listing = capsys.readouterr().out
    for name in GROUPS["task"]:
        assert f"{name}: " in listing
    assert "options: width=32, depth=1, batch_size=128" in listing
    assert "tensorflow-datasets" in listing and "embedded" in listing
    sized = "\n".join(describe("mlp_digits", sizes=True))
    params = sum(x.size for x in jax.tree.leaves(get_task("mlp_digits").init(jax.random.key(0))))
    assert f"{params:,} parameters in 4 tensors; 10 classes" in sized
