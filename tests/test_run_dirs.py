"""Refused commands leave run directories as they were; outputs suit files and other machines.

The command-line runs are subprocesses that stop at their configuration checks, a few
seconds each.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lopt.cli.common import run_relative
from lopt.cli.rundir import RunLogHandler
from lopt.loggers import progress_bar

FAST = ["experiment=smoke", "lopt.hidden=8", "lopt.depth=1", "progress=false"]


def lopt_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, "-m", "lopt.cli.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every directory (None) below ``directory``."""
    return {
        str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None
        for p in sorted(directory.rglob("*"))
    }


def test_a_refused_run_leaves_no_run_directory(tmp_path):
    result = lopt_train([*FAST, "steps=0", "hydra.run.dir=runs/new/run"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "lopt-train: error: steps must be >= 1, got 0"
    assert list(tmp_path.iterdir()) == []  # no stub: neither runs/ nor .hydra/ nor a log


def test_a_refused_resume_changes_nothing_in_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run_dir / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    (run_dir / "train.log").write_text("the earlier run's log\n")
    before = snapshot(run_dir)
    result = lopt_train([*FAST, "hydra.run.dir=run", "resume=true", "seed=1"], tmp_path)
    assert result.returncode == 1
    assert "resume=true but there is no checkpoint" in result.stderr
    assert snapshot(run_dir) == before


def test_a_run_directory_that_is_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "taken").write_text("keep me")
    result = lopt_train([*FAST, "hydra.run.dir=taken/run"], tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("lopt-train: error: hydra.run.dir=")
    assert f"{tmp_path / 'taken'} exists and is not a directory" in lines[0]
    assert (tmp_path / "taken").read_text() == "keep me"


def test_the_log_file_is_written_only_once_the_run_is_accepted(tmp_path):
    accepted, refused = tmp_path / "accepted.log", tmp_path / "refused.log"
    for path, accept in ((accepted, True), (refused, False)):
        handler = RunLogHandler(str(path))
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.handle(logging.makeLogRecord({"msg": "before"}))
        assert not path.exists()
        handler.start() if accept else handler.drop()
        handler.handle(logging.makeLogRecord({"msg": "after"}))
        handler.close()
    assert accepted.read_text() == "before\nafter\n"
    assert not refused.exists()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "enabled", "shown"),
    [(io.StringIO(), True, False), (FakeTerminal(), True, True), (FakeTerminal(), False, False)],
)
def test_the_progress_bar_is_shown_only_on_a_terminal(stream, enabled, shown):
    bar = progress_bar(enabled=enabled, file=stream, total=3)
    assert bar.disable is not shown
    bar.update(3)
    bar.close()
    assert ("\r" in stream.getvalue()) is shown


def test_run_files_record_paths_relative_to_the_run_directory(tmp_path):
    run_dir = tmp_path / "runs" / "zoo" / "cnn"
    assert run_relative(tmp_path / "zoos" / "cnn", run_dir) == "../../../zoos/cnn"
    assert run_relative(run_dir / "optimizer", run_dir) == "optimizer"
