"""Meta-training over many devices and processes equals the one-device run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lopt.distributed import (
    DistributedSettings,
    check_population_divides,
    particle_mesh,
    settings_from,
)

RUN = Path(__file__).parent / "distributed_run.py"


def launch(out: Path, devices: int, local_devices: int, processes: int = 1, **extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
    command = [sys.executable, str(RUN), str(out), "--devices", str(devices)]
    if processes == 1:
        return [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)]
    port = extra["port"]
    return [
        subprocess.Popen(
            [*command, "--processes", str(processes), "--process-id", str(i), "--port", str(port)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]


def finish(processes) -> None:
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run.npz"
    finish(launch(out, devices=1, local_devices=1))
    return dict(np.load(out))


def assert_same_run(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        # Reductions over particles run in another order over several devices.
        np.testing.assert_allclose(got[key], want[key], rtol=2e-6, atol=1e-7, err_msg=key)


@pytest.mark.slow  # a run launched in its own process (the one-device run above); CI runs it
def test_the_scenario_has_resets_inside_truncations_and_non_finite_particles(one_device):
    for name in ("pes", "tbptt"):
        ended = [one_device[f"{name}/metrics/{s}/num_episodes_ended"] for s in range(4)]
        nonfinite = [one_device[f"{name}/metrics/{s}/num_nonfinite"] for s in range(4)]
        assert sum(map(int, ended)) > 0 and sum(map(int, nonfinite)) > 0, name


@pytest.mark.slow  # two runs, each launched in its own process; CI runs it
def test_four_devices_equal_one_device(one_device, tmp_path):
    out = tmp_path / "run.npz"
    finish(launch(out, devices=4, local_devices=4))
    assert_same_run(dict(np.load(out)), one_device)


@pytest.mark.slow  # two processes joined by gloo over localhost
def test_two_processes_of_two_devices_equal_one_device(one_device, tmp_path):
    out = tmp_path / "run.npz"
    finish(launch(out, devices=4, local_devices=2, processes=2, port=free_port()))
    assert_same_run(dict(np.load(out)), one_device)


def test_settings_come_from_config_then_environment():
    assert settings_from({"enabled": "auto"}, environ={}) is None
    assert settings_from({"enabled": False, "num_processes": 4}, environ={}) is None
    env = {"JAX_COORDINATOR_ADDRESS": "head:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    assert settings_from({}, environ=env) == DistributedSettings("head:1234", 4, 2)
    assert settings_from({"process_id": 3}, environ=env) == DistributedSettings("head:1234", 4, 3)
    slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}
    assert settings_from({}, environ=slurm) == DistributedSettings(None, None, None)
    assert settings_from({}, environ={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert settings_from({"num_processes": 1}, environ={}) is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"enabled": "yes"}, "enabled must be auto, true or false"),
        ({"num_processes": 0}, "at least 1"),
        ({"num_processes": 2, "process_id": 2}, r"process_id 2 is outside \[0, 2\)"),
        ({"num_processes": "two"}, "must be an integer"),
    ],
)
def test_bad_settings_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        settings_from(config, environ={})


def test_a_population_that_does_not_split_is_refused_before_any_work():
    mesh = SimpleNamespace(shape={"particles": 4})
    check_population_divides(8, mesh, "particles", "population=16 (8 pairs)")
    with pytest.raises(ValueError, match=r"population=12 \(6 pairs\) does not split over 4 "):
        check_population_divides(6, mesh, "particles", "population=12 (6 pairs)")


def test_more_devices_than_there_are_is_refused():
    assert particle_mesh(1, "particles") is None
    with pytest.raises(ValueError, match="devices=64 but there are"):
        particle_mesh(64, "particles")
    with pytest.raises(ValueError, match="positive count or 'all'"):
        particle_mesh(0, "particles")


@pytest.mark.slow  # four lopt-train processes
def test_lopt_train_on_two_devices_resumes_bit_for_bit_and_refuses_other_topologies(tmp_path):
    from test_cli import FAST, final_leaves

    def train(*args: str, devices: int = 2):
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        command = [sys.executable, "-m", "lopt.cli.train", *FAST, "logger=none", *args]
        return subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    common = ["devices=2", "checkpoint_every=5", "log_every=5"]
    straight = train(*common, "steps=10", "hydra.run.dir=straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = train(*common, "steps=5", "hydra.run.dir=resumed")
    assert first.returncode == 0, first.stderr[-3000:]
    other = train("devices=1", "steps=10", "hydra.run.dir=resumed", "resume=true", devices=1)
    assert other.returncode == 1
    assert "split over 2 device(s) in 1 process(es), this run has 1 in 1" in other.stderr
    assert final_leaves(tmp_path / "resumed")[0] == 5  # the refused resume changed nothing
    second = train(*common, "steps=10", "hydra.run.dir=resumed", "resume=true")
    assert second.returncode == 0, second.stderr[-3000:]
    (step_a, leaves_a), (step_b, leaves_b) = (
        final_leaves(tmp_path / name) for name in ("straight", "resumed")
    )
    assert step_a == step_b == 10
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(a, b)
    uneven = train("devices=3", "hydra.run.dir=uneven", devices=3)
    assert uneven.returncode == 1
    assert "population=4 (2 pairs) does not split over 3 devices" in uneven.stderr
    assert not (tmp_path / "uneven" / "checkpoints").exists()


def test_lopt_train_refuses_more_devices_than_there_are(tmp_path):
    from hydra import compose, initialize_config_module
    from test_cli import FAST

    from lopt.cli.common import RunError
    from lopt.cli.train import train

    with initialize_config_module(config_module="lopt.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*FAST, "logger=none", "devices=8"])
    with pytest.raises(RunError, match="devices=8 but there are 1"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def lopt_train_command() -> list[str]:
    """A short ``lopt-train`` run of 4 antithetic pairs (a multiple of 4 devices)."""
    from test_cli import FAST

    return [sys.executable, "-m", "lopt.cli.train", *FAST, "logger=none", "population=8"]


def lopt_train_processes(cwd: Path, *args: str, processes: int = 2, local_devices: int = 2):
    """Runs ``lopt-train`` as ``processes`` processes joined over localhost; their results."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
    command = lopt_train_command()
    port = free_port()
    joined = [
        "devices=all",
        f"distributed.coordinator_address=localhost:{port}",
        f"distributed.num_processes={processes}",
    ]
    running = [
        subprocess.Popen(
            [*command, *joined, f"distributed.process_id={i}", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    results = []
    for process in running:
        stdout, stderr = process.communicate(timeout=300)
        results.append(
            subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        )
    return results


def lopt_train_four_devices(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Runs ``lopt-train`` as one process over 4 forced host devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    return subprocess.run(
        [*lopt_train_command(), "devices=4", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_succeeded(results) -> None:
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow  # five lopt-train runs of two processes joined by gloo
def test_lopt_train_in_two_processes_equals_one_process_and_resumes_bit_for_bit(tmp_path):
    from test_cli import final_leaves

    common = ["checkpoint_every=5", "log_every=5", "validation.every=5"]
    single = lopt_train_four_devices(tmp_path, *common, "steps=10", "hydra.run.dir=single")
    assert single.returncode == 0, single.stderr[-3000:]
    assert_succeeded(lopt_train_processes(tmp_path, *common, "steps=10", "hydra.run.dir=straight"))
    assert_succeeded(lopt_train_processes(tmp_path, *common, "steps=5", "hydra.run.dir=resumed"))
    resumed = lopt_train_processes(
        tmp_path, *common, "steps=10", "hydra.run.dir=resumed", "resume=true"
    )
    assert_succeeded(resumed)
    # Process 0 alone logs: the other's output holds no record of the run.
    assert "summary" in resumed[0].stdout and "summary" not in resumed[1].stdout
    (step_a, straight), (step_b, again) = (
        final_leaves(tmp_path / name) for name in ("straight", "resumed")
    )
    assert step_a == step_b == 10
    for a, b in zip(straight, again, strict=True):
        np.testing.assert_array_equal(a, b)
    step_c, one_process = final_leaves(tmp_path / "single")
    assert step_c == 10
    for a, b in zip(straight, one_process, strict=True):
        # The cross-process reductions add in another order than one process's.
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)
    for name in ("summary.json", "optimizer", "optimizer_last", "metrics.jsonl", "loss.png"):
        assert (tmp_path / "resumed" / name).exists(), name

    refused = lopt_train_four_devices(
        tmp_path, *common, "steps=15", "hydra.run.dir=resumed", "resume=true"
    )
    assert refused.returncode == 1
    assert "split over 4 device(s) in 2 process(es), this run has 4 in 1" in refused.stderr
    assert final_leaves(tmp_path / "resumed")[0] == 10

    apart = lopt_train_processes(
        tmp_path, "steps=5", "hydra.run.dir=apart_${distributed.process_id}"
    )
    for result in apart:
        assert result.returncode == 1
        assert "the processes disagree on the run directory" in result.stderr
        assert "same hydra.run.dir" in result.stderr
    assert not any((tmp_path / f"apart_{i}" / "checkpoints").exists() for i in range(2))
