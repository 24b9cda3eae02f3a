"""Where a meta-training run's metrics go: files in the run directory, console, wandb.

A :class:`Logger` is three functions; the factories (:func:`null_logger`,
:func:`console_logger`, :func:`wandb_logger`) take their options as keywords plus the run's
context (``run_dir``, ``run_config``, ``name``, ``resume``), so a Hydra ``logger`` config
instantiates them directly. :class:`MetricsFiles` always writes ``metrics.jsonl`` and
``metrics.csv`` next to them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from tqdm import std as tqdm_std
from tqdm.auto import tqdm

Metrics = Mapping[str, float]


class Logger(NamedTuple):
    """A metrics sink.

    Attributes:
        log_metrics: ``(step, metrics) -> None``, called once per log interval.
        log_optimizer: ``(path) -> None``, called with the exported optimizer's directory.
        finish: ``(summary) -> None``, called once at the end of the run.
    """

    log_metrics: Callable[[int, Metrics], None]
    log_optimizer: Callable[[Path], None]
    finish: Callable[[Mapping[str, Any]], None]


def _nothing(*args: Any) -> None:
    del args


def null_logger(**context: Any) -> Logger:
    """Logs nothing (the run directory's metric files are written regardless)."""
    del context
    return Logger(_nothing, _nothing, _nothing)


def format_metrics(step: int, metrics: Metrics) -> str:
    """One console line, e.g. ``step 100  meta_loss 0.4123  grad_norm 1.2 ...``."""
    parts = [f"step {step}"]
    for name, value in metrics.items():
        if name == "step" or (isinstance(value, float) and math.isnan(value)):
            continue  # nan: not measured at this step (e.g. validation columns)
        if isinstance(value, float) and not value.is_integer():
            parts.append(f"{name} {value:.4g}")
        else:
            parts.append(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}")
    return "  ".join(parts)


def progress_bar(*, enabled: bool = True, file: TextIO | None = None, **options: Any) -> tqdm:
    """A tqdm progress bar on ``file`` (default: stderr), shown only when ``enabled`` and
    ``file`` is a terminal (or the bar is a notebook's widget).

    Redirected to a file, a text bar's carriage returns would run into the log lines.

    Args:
        enabled: whether the caller wants a bar at all.
        file: the stream to draw on.
        **options: further keywords of ``tqdm`` (``total``, ``initial``, ``unit``, ...).
    """
    stream = sys.stderr if file is None else file
    shown = enabled and (_is_terminal(stream) or tqdm.display is not tqdm_std.tqdm.display)
    return tqdm(file=stream, disable=not shown, **options)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def console_logger(**context: Any) -> Logger:
    """Prints one line of metrics per log interval (above the progress bar, if any)."""
    del context

    def log_metrics(step: int, metrics: Metrics) -> None:
        tqdm.write(format_metrics(step, metrics))

    return Logger(log_metrics, _nothing, _nothing)


def wandb_logger(
    *,
    project: str = "lopt",
    entity: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    mode: str | None = None,
    log_optimizer: bool = True,
    run_dir: str | os.PathLike,
    run_config: Mapping[str, Any] | None = None,
    name: str | None = None,
    resume: bool = False,
) -> Logger:
    """Logs to Weights & Biases. ``wandb`` is imported only here.

    Args:
        project, entity, group, tags: the wandb run's placement.
        mode: ``"offline"``, ``"online"`` or ``"disabled"``; ``None`` takes ``$WANDB_MODE``
            and falls back to ``"offline"``, which needs no account or network (``wandb
            sync`` uploads an offline run later).
        log_optimizer: upload the exported optimizer as an artifact at the end.
        run_dir: the run directory; wandb writes under it, and the wandb run id is kept in
            ``run_dir/wandb_id`` so a resumed run continues the same wandb run.
        run_config: the resolved run config, logged as the wandb config.
        name: the wandb run name.
        resume: this process continues an earlier run.
    """
    import wandb

    run_dir = Path(run_dir)
    mode = mode or os.environ.get("WANDB_MODE") or "offline"
    id_file = run_dir / "wandb_id"
    if resume and id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
    run = wandb.init(
        project=project,
        entity=entity,
        group=group,
        tags=list(tags),
        name=name,
        config=dict(run_config or {}),
        dir=str(run_dir),
        mode=mode,
        id=run_id,
        resume="allow",
        settings=wandb.Settings(console="off", silent=True),
    )

    def log_metrics(step: int, metrics: Metrics) -> None:
        measured = lambda v: not (isinstance(v, float) and math.isnan(v))
        run.log({k: v for k, v in metrics.items() if k != "step" and measured(v)}, step=step)

    def log_artifact(path: Path) -> None:
        if not log_optimizer:
            return
        artifact = wandb.Artifact(f"optimizer-{run.id}", type="learned_optimizer")
        artifact.add_dir(str(path))
        run.log_artifact(artifact)

    def finish(summary: Mapping[str, Any]) -> None:
        run.summary.update({k: v for k, v in summary.items() if _is_scalar(v)})
        run.finish()

    return Logger(log_metrics, log_artifact, finish)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float | str | bool) or value is None


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsFiles:
    """Appends metric records to ``metrics.jsonl`` and ``metrics.csv`` in a directory.

    Every record is a flat dict with a ``step`` key; the CSV's columns are those of the
    first record (later records must have the same keys). Non-finite values are written as
    ``null`` (JSON) and empty cells (CSV). Lines are flushed as written.

    Args:
        directory: the run directory.
        resume_step: when continuing a run from a checkpoint of this step, records of later
            steps (written after that checkpoint by the interrupted process) are dropped
            first; ``None`` starts new files.
        write: false keeps the records in :attr:`records` alone and touches no file (the
            processes of a multi-process run other than the first).
    """

    JSONL = "metrics.jsonl"
    CSV = "metrics.csv"

    def __init__(
        self, directory: str | os.PathLike, resume_step: int | None = None, write: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.jsonl_path = self.directory / self.JSONL
        self.csv_path = self.directory / self.CSV
        self.records: list[dict[str, Any]] = []
        self._writes = write
        if not write:
            return
        kept = (
            []
            if resume_step is None
            else [r for r in read_metrics(self.jsonl_path) if r.get("step", 0) <= resume_step]
        )
        self._columns: list[str] | None = None
        self._jsonl = open(self.jsonl_path, "w")  # noqa: SIM115 - closed by close()
        self._csv_file = open(self.csv_path, "w", newline="")  # noqa: SIM115
        self._csv: Any = None
        for record in kept:
            self.write(record)

    def write(self, record: Mapping[str, Any]) -> None:
        """Appends one record."""
        record = dict(record)
        if not self._writes:
            self.records.append(record)
            return
        if self._columns is None:
            self._columns = list(record)
            self._csv = csv.DictWriter(self._csv_file, fieldnames=self._columns)
            self._csv.writeheader()
        clean = {k: _json_value(v) for k, v in record.items()}
        self._jsonl.write(json.dumps(clean) + "\n")
        self._jsonl.flush()
        self._csv.writerow({k: ("" if v is None else v) for k, v in clean.items()})
        self._csv_file.flush()
        self.records.append(record)

    def close(self) -> None:
        """Closes both files."""
        if not self._writes:
            return
        self._jsonl.close()
        self._csv_file.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (``[]`` if it does not exist); a last line
    cut off by a crash is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [{k: (math.nan if v is None else v) for k, v in r.items()} for r in records]
