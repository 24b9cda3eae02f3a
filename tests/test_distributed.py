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


def test_the_scenario_has_resets_inside_truncations_and_non_finite_particles(one_device):
    for name in ("pes", "tbptt"):
        ended = [one_device[f"{name}/metrics/{s}/num_episodes_ended"] for s in range(4)]
        nonfinite = [one_device[f"{name}/metrics/{s}/num_nonfinite"] for s in range(4)]
        assert sum(map(int, ended)) > 0 and sum(map(int, nonfinite)) > 0, name


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
