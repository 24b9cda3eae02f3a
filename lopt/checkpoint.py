"""Checkpoints of whole pytrees (a meta-training run's ``MetaState``) with orbax.

A checkpoint directory holds one sub-directory per saved step, written by an
``orbax.checkpoint.CheckpointManager``: orbax writes each step into a temporary directory and
renames it into place only when complete, so a crash or ``SIGKILL`` mid-write never touches
the previous checkpoint (an unfinished step is ignored and cleaned up later). Older steps are
deleted only after a newer one is complete.

Each step has two items:

* ``state``: the pytree's leaves as numpy arrays, keyed ``leaf_00000, ...`` in flattening
  order. Typed PRNG keys are stored as their raw key data and re-wrapped on restore, so keys
  of any implementation round-trip exactly.
* ``meta``: JSON with a format tag and version, the step, the caller's ``config`` (e.g. the
  resolved run config), and for every leaf its path, shape, dtype and PRNG implementation,
  plus a SHA-256 digest of all leaf bytes. Restoring checks the structure against the
  expected pytree (an incompatible checkpoint is reported by leaf path before anything is
  read) and the digest afterwards (a corrupt one is reported, never used).

Once orbax has finished a step, :data:`FILES_MANIFEST` is written next to its items: the
size and SHA-256 of every file in the step's directory. Every read of a step first checks
it, so damage to any file a restore reads (orbax's indexes and manifests as much as the
array data: truncated, changed, deleted) is reported as corruption, naming the file, before
orbax opens anything. Steps written by format version 1 have no such list and are read as
before.

In a multi-process run (:mod:`lopt.distributed`) every process calls :meth:`Checkpointer.save`
and :meth:`~Checkpointer.restore` at the same point, on a directory they share: the leaves
are gathered from all processes (arrays sharded over other processes' devices included),
orbax writes them once, from process 0, and coordinates the processes; process 0 writes the
file list, and no process returns from ``save`` before it is there. A restore gives every
process the whole state on the host; ``MetaTrainer.place`` puts it back on the mesh.

>>> checkpoints = Checkpointer("run/checkpoints", max_to_keep=2)
>>> checkpoints.save(step, state, config={"task": ...})
>>> state = checkpoints.restore(checkpoints.latest_step(), like=state)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt.distributed import barrier, is_main_process, to_host
from lopt.persistence import leaf_mismatch, write_text

PyTree = Any
log = logging.getLogger(__name__)

FORMAT = "lopt.checkpoint"
FORMAT_VERSION = 2
FILES_MANIFEST = "lopt_files.json"
"""Per step: ``{relative path: [size, sha256]}`` of every other file in the step's
directory (format version 2 on)."""
STATE_ITEM = "state"
META_ITEM = "meta"
STEP_MARKER = "_CHECKPOINT_METADATA"
"""The file orbax writes into a step's directory when it finalises the step."""


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt, or does not fit the run restoring it."""


class LeafInfo(NamedTuple):
    """What the metadata records of one leaf.

    Attributes:
        path: the leaf's key path (``jax.tree_util.keystr``).
        shape: its shape.
        dtype: numpy dtype name of the stored array (raw key data for PRNG keys).
        key_impl: PRNG implementation name for a typed key, else ``None``.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    key_impl: str | None


@functools.cache
def _ocp() -> Any:
    # orbax logs every save at INFO through absl; keep the console for the run's own output.
    # Once, on first use, so that a caller who sets absl's level afterwards keeps it.
    logging.getLogger("absl").setLevel(logging.WARNING)
    import orbax.checkpoint as ocp

    return ocp


def _is_typed_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _key_impl_name(leaf: Any) -> str:
    # Abstract keys (ShapeDtypeStruct) carry their implementation on the dtype.
    abstract = isinstance(leaf, jax.ShapeDtypeStruct)
    impl = leaf.dtype._impl if abstract else jax.random.key_impl(leaf)
    return str(getattr(impl, "name", impl))


def describe(tree: PyTree) -> list[LeafInfo]:
    """The :class:`LeafInfo` of every leaf of ``tree`` (arrays or ``ShapeDtypeStruct``)."""
    infos = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        where = jax.tree_util.keystr(path)
        if _is_typed_key(leaf):
            data_shape = jax.eval_shape(jax.random.key_data, leaf).shape
            infos.append(LeafInfo(where, tuple(data_shape), "uint32", _key_impl_name(leaf)))
        else:
            dtype = np.dtype(leaf.dtype).name
            infos.append(LeafInfo(where, tuple(np.shape(leaf)), dtype, None))
    return infos


def _host_leaves(tree: PyTree) -> list[np.ndarray]:
    leaves = jax.tree.leaves(tree)
    raw = [jax.random.key_data(x) if _is_typed_key(x) else x for x in leaves]
    return [np.asarray(x) for x in to_host(raw)]


def digest(arrays: list[np.ndarray]) -> str:
    """SHA-256 over the dtypes, shapes and bytes of ``arrays`` in order."""
    hasher = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()


def _leaf_name(index: int) -> str:
    return f"leaf_{index:05d}"


class Checkpointer:
    """Saves and restores pytrees by step in ``directory`` (see the module docstring).

    Args:
        directory: where the steps live (created on the first save).
        max_to_keep: most recent steps kept (``None``: all).
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 2) -> None:
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        self._manager = None
        self._warned: set[int] = set()

    # -- orbax ---------------------------------------------------------------------------
    def _get_manager(self) -> Any:
        if self._manager is None:
            ocp = _ocp()
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.max_to_keep,
                create=True,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,
            )
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def close(self) -> None:
        """Releases orbax's resources (a later call reopens them)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries ---------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending (unfinished writes are not listed).

        A step is complete once its :data:`FILES_MANIFEST` is written, the last thing
        :meth:`save` does; a step orbax finished but a crash left without the list is
        unfinished (a warning names it), and the next save of that step replaces it.
        """
        if not self.directory.is_dir():
            return []
        steps = sorted(self._get_manager().all_steps())
        complete = [step for step in steps if self._finished(step)]
        for step in sorted(set(steps) - set(complete) - self._warned):
            self._warned.add(step)
            log.warning(
                "checkpoint %s is incomplete (its file list %s is missing: the write was "
                "interrupted, or the list was deleted); it is not used",
                self._step_dir(step),
                FILES_MANIFEST,
            )
        return complete

    def _finished(self, step: int) -> bool:
        """Whether :meth:`save` finished ``step``: its file list is there, or format version
        1 (which wrote none) wrote it."""
        directory = self._step_dir(step)
        return (directory / FILES_MANIFEST).is_file() or _written_by_version(directory) < 2

    def latest_step(self) -> int | None:
        """The most recent complete step, or ``None``."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def metadata(self, step: int) -> dict:
        """The ``meta`` item of ``step``: format, step, config, leaves, digest.

        Raises:
            CheckpointError: no such step, a damaged file in it (see :meth:`verify_files`),
                or metadata that is unreadable or not ours.
        """
        if step not in self.all_steps():
            if self.directory.is_dir() and step in self._get_manager().all_steps():
                raise CheckpointError(
                    f"checkpoint {self._step_dir(step)} is incomplete: its file list "
                    f"{FILES_MANIFEST} is missing (the write was interrupted, or the list was "
                    "deleted)"
                )
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}")
        self.verify_files(step)
        ocp = _ocp()
        try:
            restored = self._get_manager().restore(
                step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()})
            )
            meta = restored[META_ITEM]
        except Exception as err:
            raise CheckpointError(
                f"checkpoint {self._step_dir(step)} is corrupt: cannot read its metadata "
                f"({type(err).__name__}: {err})"
            ) from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{self._step_dir(step)} is not a lopt checkpoint")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{self._step_dir(step)} has format version {version!r}; this lopt reads "
                f"versions up to {FORMAT_VERSION}"
            )
        return meta

    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def verify_files(self, step: int) -> None:
        """Checks every file of ``step`` against its :data:`FILES_MANIFEST`.

        A step with neither the list nor a format-2 ``meta`` item (one written by format
        version 1) is not checked here; its array digest still is.

        Raises:
            CheckpointError: the list is missing or unreadable (for a format-2 step), or a
                file is missing, added, or differs in size or content; the message names it.
        """
        directory = self._step_dir(step)
        manifest_path = directory / FILES_MANIFEST
        if not manifest_path.is_file():
            if _written_by_version(directory) < 2:
                return
            raise CheckpointError(
                f"checkpoint {directory} is corrupt: its file list {FILES_MANIFEST} is missing"
            )
        try:
            expected = json.loads(manifest_path.read_text())
            if not isinstance(expected, dict):
                raise ValueError("not a mapping")
        except (OSError, ValueError) as err:
            raise CheckpointError(
                f"checkpoint {directory} is corrupt: its file list {FILES_MANIFEST} is "
                f"unreadable ({err})"
            ) from err
        found = file_digests(directory)
        for name in sorted(set(expected) | set(found)):
            if name not in found:
                problem = "is missing"
            elif name not in expected:
                problem = "was not written with the checkpoint"
            elif found[name][0] != expected[name][0]:
                problem = f"has {found[name][0]} bytes, {expected[name][0]} when written"
            elif found[name][1] != expected[name][1]:
                problem = "has changed since it was written (its SHA-256 differs)"
            else:
                continue
            raise CheckpointError(f"checkpoint {directory} is corrupt: {name} {problem}")

    # -- save / restore ----------------------------------------------------------------------
    def save(self, step: int, tree: PyTree, config: Any = None) -> Path:
        """Writes ``tree`` (and the JSON-serialisable ``config``) as ``step``, atomically.

        Returns:
            The step's directory.

        Raises:
            CheckpointError: ``step`` already exists.
        """
        step = int(step)
        if step in self.all_steps():
            raise CheckpointError(
                f"a checkpoint for step {step} already exists in {self.directory}"
            )
        ocp = _ocp()
        if step in self._get_manager().all_steps():  # an unfinished write of this step
            self._get_manager().delete(step)
        arrays = _host_leaves(tree)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "step": step,
            "config": config,
            "leaves": [list(info) for info in describe(tree)],
            "digest": digest(arrays),
        }
        state = {_leaf_name(i): array for i, array in enumerate(arrays)}
        self._get_manager().save(
            step,
            args=ocp.args.Composite(
                **{
                    STATE_ITEM: ocp.args.StandardSave(state),
                    META_ITEM: ocp.args.JsonSave(meta),
                }
            ),
            force=True,
        )
        self._get_manager().wait_until_finished()
        directory = self._step_dir(step)
        if is_main_process():
            write_text(directory / FILES_MANIFEST, json.dumps(file_digests(directory)))
        barrier(f"lopt.checkpoint.save:{self.directory}:{step}")
        return directory

    def restore_leaves(self, step: int) -> tuple[list[np.ndarray], dict]:
        """The stored leaves of ``step`` (typed keys as raw key data) and its metadata.

        Raises:
            CheckpointError: the step is missing, unreadable, or fails its digest.
        """
        meta = self.metadata(step)
        return self._read(step, leaf_infos(meta), meta), meta

    def _read(self, step: int, infos: list[LeafInfo], meta: dict) -> list[np.ndarray]:
        ocp = _ocp()
        target = {
            _leaf_name(i): jax.ShapeDtypeStruct(info.shape, np.dtype(info.dtype))
            for i, info in enumerate(infos)
        }
        try:
            restored = self._get_manager().restore(
                step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(target)})
            )[STATE_ITEM]
            arrays = [np.asarray(restored[_leaf_name(i)]) for i in range(len(infos))]
        except Exception as err:
            raise CheckpointError(
                f"checkpoint {self._step_dir(step)} is corrupt: cannot read its arrays "
                f"({type(err).__name__}: {str(err)[:500]})"
            ) from err
        if digest(arrays) != meta.get("digest"):
            raise CheckpointError(
                f"checkpoint {self._step_dir(step)} is corrupt: its arrays do not match the "
                "digest recorded when it was written"
            )
        return arrays

    def restore(self, step: int, like: PyTree) -> PyTree:
        """Restores ``step`` into the structure of ``like`` (arrays or ``ShapeDtypeStruct``).

        Args:
            step: the step to read.
            like: a pytree with the expected structure, shapes, dtypes and key types, e.g.
                ``jax.eval_shape(trainer.init, key)``.

        Returns:
            The pytree with ``jax.Array`` leaves (typed keys re-wrapped), bit-identical to
            what was saved.

        Raises:
            CheckpointError: the checkpoint is missing or corrupt, or its structure differs
                from ``like`` (the message lists the differing leaves).
        """
        meta = self.metadata(step)
        expected = describe(like)
        stored = leaf_infos(meta)
        problems = _structure_problems(stored, expected)
        if problems:
            listed = "\n  ".join(problems[:10])
            more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise CheckpointError(
                f"checkpoint {self._step_dir(step)} does not fit this run (a different task, "
                f"optimizer or estimator?):\n  {listed}{more}"
            )
        arrays = self._read(step, stored, meta)
        leaves = [
            jax.random.wrap_key_data(jnp.asarray(a), impl=info.key_impl)
            if info.key_impl is not None
            else jnp.asarray(a)
            for a, info in zip(arrays, stored, strict=True)
        ]
        return jax.tree.unflatten(jax.tree.structure(like), leaves)


def leaf_infos(meta: dict) -> list[LeafInfo]:
    """The :class:`LeafInfo` of every stored leaf, from a step's :meth:`Checkpointer.metadata`."""
    return [LeafInfo(str(p), tuple(s), str(d), k) for p, s, d, k in meta["leaves"]]


def is_step_directory(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the directory of one complete step (named by its number)."""
    path = Path(path)
    return path.name.isdigit() and (path / STEP_MARKER).exists()


def locate(path: str | os.PathLike, step: int | None = None) -> tuple[Checkpointer, int]:
    """The checkpoints and step that ``path`` names.

    Args:
        path: a run directory (holding ``checkpoints/``), a checkpoint directory, or one
            step's directory.
        step: the step to take (default: the step ``path`` names, else the latest).

    Returns:
        A :class:`Checkpointer` of the directory (close it when done) and the step.

    Raises:
        CheckpointError: ``path`` is not a directory, holds no complete step, or lacks
            ``step``.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory")
    if (path / "checkpoints").is_dir():
        directory = path / "checkpoints"
    elif is_step_directory(path):
        directory, step = path.parent, int(path.name) if step is None else step
    else:
        directory = path
    if not any(is_step_directory(p) for p in directory.glob("[0-9]*")):
        raise CheckpointError(f"no checkpoints in {directory}")
    checkpoints = Checkpointer(directory, max_to_keep=None)
    steps = checkpoints.all_steps()
    if step is None:
        step = steps[-1]
    elif step not in steps:
        checkpoints.close()
        raise CheckpointError(f"no checkpoint for step {step} in {directory}; steps: {steps}")
    return checkpoints, step


def file_digests(directory: Path) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` of every file below ``directory`` except the
    :data:`FILES_MANIFEST` itself."""
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = str(path.relative_to(directory))
        if name == FILES_MANIFEST or name.startswith(f".{FILES_MANIFEST}."):
            continue
        data = path.read_bytes()
        out[name] = [len(data), hashlib.sha256(data).hexdigest()]
    return out


def _written_by_version(directory: Path) -> int:
    """The format version in a step's ``meta`` item as stored on disk (0 if unreadable)."""
    for path in (directory / META_ITEM).glob("*"):
        try:
            version = json.loads(path.read_text()).get("format_version")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(version, int):
            return version
    return 0


def _structure_problems(stored: list[LeafInfo], expected: list[LeafInfo]) -> list[str]:
    """Human-readable differences between stored and expected leaves (empty if they fit)."""
    mismatch = leaf_mismatch(
        {info.path: info for info in expected}, {info.path: info for info in stored}, ordered=True
    )
    if mismatch is None:
        return []
    problems = [f"{path}: missing from the checkpoint" for path in mismatch.missing]
    problems += [f"{path}: not expected by this run" for path in mismatch.unexpected]
    for path, got, want in mismatch.wrong:
        for field, label in (("shape", "shape"), ("dtype", "dtype"), ("key_impl", "PRNG key")):
            if getattr(got, field) != getattr(want, field):
                problems.append(
                    f"{path}: {label} {getattr(got, field)} in the checkpoint, "
                    f"{getattr(want, field)} expected"
                )
    if mismatch.reordered and not problems:
        problems.append("the leaves are stored in a different order than this run expects")
    return problems


def nested_dict(leaves: list[np.ndarray], infos: list[LeafInfo], prefix: str) -> dict:
    """Rebuilds a nested dict of string keys from the stored leaves under ``prefix``.

    Args:
        leaves: the stored arrays.
        infos: their :class:`LeafInfo` (paths like ``.theta['network']['kernel']``).
        prefix: the path prefix of the sub-tree, e.g. ``".theta"``.

    Raises:
        CheckpointError: the sub-tree is missing or not made of string-keyed dicts.
    """
    out: dict = {}
    found = False
    for array, info in zip(leaves, infos, strict=True):
        if not info.path.startswith(prefix):
            continue
        keys = _dict_keys(info.path[len(prefix) :])
        if keys is None:
            raise CheckpointError(f"{info.path} is not a path of nested dicts with string keys")
        found = True
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = array
    if not found:
        raise CheckpointError(f"the checkpoint holds no leaves under {prefix!r}")
    return out


def _dict_keys(path: str) -> list[str] | None:
    """``"['a']['b']"`` -> ``["a", "b"]``; ``None`` for any other path syntax."""
    keys = []
    rest = path
    while rest:
        if not rest.startswith("['"):
            return None
        end = rest.find("']", 2)
        if end < 0:
            return None
        keys.append(rest[2:end])
        rest = rest[end + 2 :]
    return keys or None
