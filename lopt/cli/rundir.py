"""Run directories that a refused command leaves as they were.

Hydra, left to itself, creates a job's run directory, writes ``.hydra/`` (the config, its
own config and the overrides) and opens the job's log file before the app runs, so every
refused command would leave a stub directory, and a refused resume would rewrite the
``.hydra/`` of the run it refused to touch. The tools' configs therefore set

* ``hydra.output_subdir: null``: :func:`accept` writes ``.hydra/`` instead, once the run has
  passed its checks;
* ``hydra.job_logging.handlers.file.class: lopt.cli.rundir.RunLogHandler``: the log file is
  created, with the records so far, only by :func:`accept`;
* ``hydra.callbacks.run_dir._target_: lopt.cli.rundir.RunDirGuard``: records which
  directories the command is about to create (and refuses a run directory that is a file,
  in one line), so that :func:`discard` removes them again, when still empty, after a
  refusal.

A tool runs its work inside :func:`run_directory`, which accepts the directory when the work
returns and discards it when the work raises before :func:`accept` was called.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lopt.persistence import write_text

HYDRA_SUBDIR = ".hydra"


@dataclasses.dataclass
class _RunDirState:
    """What this process knows about its command's directories.

    Attributes:
        created: the directories that did not exist when the command started.
        accepted: whether the current job's run was accepted.
    """

    created: set[Path] = dataclasses.field(default_factory=set)
    accepted: bool = False


_STATE = _RunDirState()


class RunLogHandler(logging.FileHandler):
    """Hydra's job log file, created only once the run is accepted.

    Until :meth:`start` the records are kept in memory; :meth:`drop` forgets them and turns
    the handler off, so a refused command leaves no log file behind.
    """

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None) -> None:
        super().__init__(filename, mode, encoding, delay=True)
        self.pending: list[logging.LogRecord] | None = []
        self.dropped = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.dropped:
            return
        if self.pending is not None:
            self.pending.append(record)
            return
        super().emit(record)

    def start(self) -> None:
        """Creates the file (if needed) and writes the records kept so far."""
        pending, self.pending = self.pending or [], None
        if self.dropped:
            return
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        for record in pending:
            super().emit(record)

    def drop(self) -> None:
        """Forgets the records kept so far and writes none from now on."""
        self.pending, self.dropped = None, True


class RunDirGuard(Callback):
    """Hydra callback: before Hydra creates the run (or sweep) directory, refuses one that
    is a file and records the directories the command is about to create."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        del kwargs
        _guard(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        del kwargs
        _guard(config, "hydra.sweep.dir")


def _guard(config: DictConfig, key: str) -> None:
    tool = OmegaConf.select(config, "hydra.help.app_name", default="lopt")
    directory = Path(str(OmegaConf.select(config, key))).absolute()
    missing = []
    for path in (directory, *directory.parents):
        if path.is_dir():
            break
        if path.exists() or path.is_symlink():
            print(
                f"{tool}: error: {key}={directory}: {path} exists and is not a directory; "
                "choose another directory",
                file=sys.stderr,
            )
            raise SystemExit(1)
        missing.append(path)
    _STATE.created = set(missing)


def _created_by_this_command(path: Path) -> bool:
    """Whether ``path`` did not exist when this command started (it or a directory above
    it was recorded as missing by :class:`RunDirGuard`)."""
    path = Path(path).absolute()
    return any(p in _STATE.created for p in (path, *path.parents))


def _log_handlers() -> list[RunLogHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, RunLogHandler)]


def accept(run_dir: str | Path, cfg: DictConfig | None = None, *, write: bool = True) -> None:
    """Marks the run as started: writes ``.hydra/`` and the log file into ``run_dir``.

    Outside a Hydra app (the tools' functions called from Python) only the mark is set.

    Args:
        run_dir: the run directory.
        cfg: the app's config (for ``.hydra/config.yaml``).
        write: False on a process that writes nothing (a multi-process run's others): the
            log records kept so far are dropped instead.
    """
    if _STATE.accepted:
        return
    _STATE.accepted = True
    for handler in _log_handlers():
        (handler.start if write else handler.drop)()
    if not write or not HydraConfig.initialized():
        return
    hydra_dir = Path(run_dir) / HYDRA_SUBDIR
    hydra_dir.mkdir(parents=True, exist_ok=True)
    if cfg is not None:
        write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    hydra = HydraConfig.instance().cfg
    write_text(hydra_dir / "hydra.yaml", OmegaConf.to_yaml(hydra))
    write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(hydra.hydra.overrides.task))


def discard(run_dir: str | Path) -> None:
    """Undoes what Hydra did for a refused command: drops the log records kept so far and
    removes ``run_dir`` and the directories above it that this command created, while they
    are empty (a directory holding anything is left alone)."""
    for handler in _log_handlers():
        handler.drop()
    path = Path(run_dir).absolute()
    for directory in (path, *path.parents):
        if not _created_by_this_command(directory) or not directory.is_dir():
            break
        try:
            directory.rmdir()
        except OSError:  # not empty: it holds something this command did not refuse
            break


@contextlib.contextmanager
def run_directory(run_dir: str | Path, cfg: DictConfig | None = None) -> Iterator[None]:
    """Runs a tool's work: :func:`accept` when it returns (if not accepted already), and
    :func:`discard` when it raises before being accepted."""
    _STATE.accepted = False  # each job of a sweep is accepted on its own
    try:
        yield
    except BaseException:
        if not _STATE.accepted:
            discard(run_dir)
        raise
    accept(run_dir, cfg)
