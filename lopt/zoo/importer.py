"""Importing an outside zoo stored in the Small CNN Zoo's layout into the lopt zoo format.

The accepted layout is a directory holding exactly these three files (nothing else is read):

``weights.npy``
    A NumPy array ``(N, P)`` of floats (``np.save``, no pickle): row ``i`` is network ``i``'s
    parameters, flattened and concatenated.
``layout.csv``
    A CSV file with a header row and one row per tensor. Its columns ``varname`` (the
    tensor's name; ``/`` separates nesting levels, so ``conv2d/kernel:0`` is the tensor
    ``kernel:0`` of the group ``conv2d``), ``start_idx`` and ``end_idx`` (the tensor is
    ``weights[:, start_idx:end_idx]``, end exclusive) and ``shape`` (a Python tuple of
    ints such as ``(3, 3, 1, 16)``; the slice is reshaped to it in C order, so
    ``end_idx - start_idx`` must be the product of ``shape``) are read; other columns are
    ignored. Slices may not overlap.
``metrics.csv`` (or ``metrics.csv.gz``)
    A CSV file with a header row and one row per network, in the order of the rows of
    ``weights.npy``. A column whose every cell is a number (empty cells read as NaN) is
    kept: one named ``config.<name>`` as the hyperparameter ``<name>``, any other as a
    metric under its own name. Columns holding text are skipped (the import's summary
    lists them).

The permutation spec cannot be read from these files: it is given, nested like the tensor
names (e.g. derived with :func:`lopt.tasks.derive_spec` from a model whose params carry
those names, or written by hand), and checked against the tensors' shapes.

>>> import_array_zoo("small_cnn_zoo/cifar10", "zoos/cifar10", spec, rows=final_checkpoints)
>>> zoo = load_zoo("zoos/cifar10")
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import itertools
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import lopt.nf as nf
from lopt.persistence import sha256
from lopt.zoo.storage import ShardWriter, ZooFormatError, unflatten

PyTree = Any

WEIGHTS_FILE = "weights.npy"
LAYOUT_FILE = "layout.csv"
METRICS_FILES = ("metrics.csv", "metrics.csv.gz")
LAYOUT_COLUMNS = ("varname", "start_idx", "end_idx", "shape")
HYPERPARAMETER_PREFIX = "config."


class TensorSlice(NamedTuple):
    """Where one tensor lies in a row of the weights array.

    Attributes:
        name: the tensor's name (``/`` between nesting levels).
        start: first column.
        end: one past the last column.
        shape: the tensor's shape.
    """

    name: str
    start: int
    end: int
    shape: tuple[int, ...]


class ArrayZooFiles(NamedTuple):
    """The three files of an outside zoo, read (the weights memory-mapped).

    Attributes:
        weights: ``(N, P)`` array, memory-mapped.
        layout: one :class:`TensorSlice` per tensor, in the layout file's order.
        hyperparameters: ``{name: (N,)}`` from the ``config.*`` numeric columns.
        metrics: ``{name: (N,)}`` from the other numeric columns.
        skipped: the metrics file's columns that hold text.
        metrics_path: the metrics file read.
    """

    weights: np.ndarray
    layout: list[TensorSlice]
    hyperparameters: dict[str, np.ndarray]
    metrics: dict[str, np.ndarray]
    skipped: list[str]
    metrics_path: Path


def _parse_shape(text: str, where: str) -> tuple[int, ...]:
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError) as err:
        raise ZooFormatError(f"{where}: shape {text!r} is not a tuple of ints") from err
    value = (value,) if isinstance(value, int) else value
    if not isinstance(value, tuple | list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ZooFormatError(f"{where}: shape {text!r} is not a tuple of non-negative ints")
    return tuple(value)


def read_layout(path: str | os.PathLike, columns: int) -> list[TensorSlice]:
    """Reads a layout file (see the module's docstring) for a weights array of ``columns``.

    Raises:
        ZooFormatError: a missing column, a bad row, a slice that does not fit its shape or
            the array, overlapping slices, or a name used twice.
    """
    path = Path(path)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in LAYOUT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ZooFormatError(f"{path} lacks the columns {missing}; it has {reader.fieldnames}")
        tensors = []
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            try:
                start, end = int(row["start_idx"]), int(row["end_idx"])
            except ValueError as err:
                raise ZooFormatError(f"{where}: start_idx and end_idx must be integers") from err
            shape = _parse_shape(row["shape"], where)
            if not 0 <= start <= end <= columns:
                raise ZooFormatError(
                    f"{where}: slice {start}:{end} lies outside the {columns} weight columns"
                )
            if end - start != math.prod(shape):
                raise ZooFormatError(
                    f"{where}: slice {start}:{end} holds {end - start} values, shape {shape} "
                    f"needs {math.prod(shape)}"
                )
            tensors.append(TensorSlice(row["varname"], start, end, shape))
    if not tensors:
        raise ZooFormatError(f"{path} describes no tensor")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ZooFormatError(f"{path} names a tensor twice: {sorted(names)}")
    ordered = sorted(tensors, key=lambda t: t.start)
    for before, after in itertools.pairwise(ordered):
        if after.start < before.end:
            raise ZooFormatError(f"{path}: tensors {before.name} and {after.name} overlap")
    return tensors


def _number(cell: str) -> float | None:
    if cell.strip() == "":
        return math.nan
    try:
        return float(cell)
    except ValueError:
        return None


def read_metrics(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[str], int]:
    """Reads a metrics file: its numeric columns, the skipped text columns, the row count."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    reader = csv.DictReader(io.StringIO(data.decode()))
    columns = list(reader.fieldnames or [])
    if not columns:
        raise ZooFormatError(f"{path} has no header row")
    values: dict[str, list[float]] = {name: [] for name in columns}
    skipped: set[str] = set()
    count = 0
    for row in reader:
        count += 1
        for name in columns:
            if name in skipped:
                continue
            number = _number(row.get(name) or "")
            if number is None:
                skipped.add(name)
            else:
                values[name].append(number)
    numeric = {name: np.asarray(v) for name, v in values.items() if name not in skipped}
    return numeric, [name for name in columns if name in skipped], count


def read_array_zoo(source: str | os.PathLike) -> ArrayZooFiles:
    """Reads the three files of an outside zoo (see the module's docstring).

    Raises:
        ZooFormatError: a missing file, a weights array that is not ``(N, P)`` floats, a
            bad layout, or a metrics file whose row count differs from ``N``.
    """
    source = Path(source)
    weights_path = source / WEIGHTS_FILE
    metrics_path = next((source / n for n in METRICS_FILES if (source / n).is_file()), None)
    for path in (weights_path, source / LAYOUT_FILE):
        if not path.is_file():
            raise ZooFormatError(f"{source} is not a zoo of this layout: it has no {path.name}")
    if metrics_path is None:
        raise ZooFormatError(f"{source} has no {' or '.join(METRICS_FILES)}")
    try:
        weights = np.load(weights_path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise ZooFormatError(f"{weights_path} is not a NumPy array file: {err}") from err
    if weights.ndim != 2 or not np.issubdtype(weights.dtype, np.floating):
        raise ZooFormatError(
            f"{weights_path} must hold an (N, P) float array, got {weights.dtype} {weights.shape}"
        )
    layout = read_layout(source / LAYOUT_FILE, weights.shape[1])
    columns, skipped, rows = read_metrics(metrics_path)
    if rows != weights.shape[0]:
        raise ZooFormatError(
            f"{metrics_path} has {rows} rows, {weights_path} {weights.shape[0]} networks"
        )
    hyper = {
        name.removeprefix(HYPERPARAMETER_PREFIX): v
        for name, v in columns.items()
        if name.startswith(HYPERPARAMETER_PREFIX)
    }
    metrics = {n: v for n, v in columns.items() if not n.startswith(HYPERPARAMETER_PREFIX)}
    return ArrayZooFiles(weights, layout, hyper, metrics, skipped, metrics_path)


def tensors_of(weights: np.ndarray, layout: Sequence[TensorSlice]) -> PyTree:
    """The params of the rows of ``weights`` ``(n, P)``: nested dicts, leaves ``(n, *shape)``."""
    flat = {
        t.name: np.asarray(weights[:, t.start : t.end], np.float32).reshape(-1, *t.shape)
        for t in layout
    }
    return unflatten(flat)


def import_array_zoo(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    spec: PyTree,
    *,
    rows: Sequence[int] | None = None,
    shard_size: int = 1000,
) -> dict[str, Any]:
    """Writes the outside zoo in ``source`` as a lopt zoo in ``destination``.

    Args:
        source: the directory of ``weights.npy``, ``layout.csv`` and ``metrics.csv``.
        destination: the lopt zoo directory (:func:`lopt.zoo.load_zoo` reads it); an
            interrupted import resumes, one of other files or rows is refused.
        spec: the permutation spec, nested like the tensor names.
        rows: which networks to import (row indices, in the order given), e.g. only the
            last checkpoint of each training run; all by default.
        shard_size: networks per shard file.

    Returns:
        A summary: networks, tensors, hyperparameters, metrics, skipped columns, seconds.

    Raises:
        ZooFormatError: the files do not follow the layout, or ``spec`` does not fit the
            tensors (the message names the tensor).
    """
    start = time.perf_counter()
    files = read_array_zoo(source)
    count = files.weights.shape[0]
    selected = np.arange(count) if rows is None else np.asarray(rows, np.int64)
    if selected.ndim != 1 or len(selected) == 0 or selected.min() < 0 or selected.max() >= count:
        raise ZooFormatError(f"rows must be indices of the {count} networks, got {rows!r}")
    example = tensors_of(files.weights[:1], files.layout)
    try:
        nf.validate(spec, _first(example))
    except nf.SpecError as err:
        raise ZooFormatError(f"the spec does not fit the zoo's tensors: {err}") from err
    source = Path(source)
    description = {
        "imported": {
            "layout": "weights.npy + layout.csv + metrics.csv",
            "weights_sha256": sha256(source / WEIGHTS_FILE),
            "layout_sha256": sha256(source / LAYOUT_FILE),
            "metrics_sha256": sha256(files.metrics_path),
            "rows": "all" if rows is None else sha256(selected.astype("<i8").tobytes()),
            "skipped_columns": files.skipped,
        },
        "shard_size": shard_size,
    }
    writer = ShardWriter(destination, description, spec)
    for first in range(writer.count, len(selected), shard_size):
        index = selected[first : first + shard_size]
        shard_start = time.perf_counter()
        writer.append(
            np.arange(first, first + len(index)),
            tensors_of(files.weights[index], files.layout),
            {name: v[index] for name, v in files.hyperparameters.items()},
            {name: v[index] for name, v in files.metrics.items()},
            seconds=time.perf_counter() - shard_start,
        )
    return {
        "networks": writer.count,
        "tensors": [t.name for t in files.layout],
        "hyperparameters": sorted(files.hyperparameters),
        "metrics": sorted(files.metrics),
        "skipped_columns": files.skipped,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _first(tree: PyTree) -> PyTree:
    return {k: _first(v) if isinstance(v, dict) else v[0] for k, v in tree.items()}
