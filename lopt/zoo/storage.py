"""The on-disk zoo format: ``.npz`` shards and a JSON manifest (no pickle anywhere).

``manifest.json`` holds ``format`` (``"lopt-zoo"``), ``version``, the generation
``description`` (problem, options, seed, hyperparameter ranges), the permutation ``spec``
(:func:`lopt.nf.spec_json.spec_to_json`: one list of encoded ids per tensor path), the
tensor ``shapes`` and one entry per shard: its file name, first network index, count,
SHA-256 and generation time. A shard
``shard_00000.npz`` holds ``index`` ``(n,)``, ``params/<path>`` ``(n, *shape)``,
``hyper/<name>`` and ``metrics/<name>`` ``(n,)``.

The manifest is rewritten (atomically) after every shard, so an interrupted generation
resumes from the last complete shard.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

import lopt.nf as nf
from lopt.nf.spec_json import spec_from_json, spec_to_json
from lopt.persistence import config_differences, nest, sha256, write_atomic, write_text

PyTree = Any

FORMAT_NAME = "lopt-zoo"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_SEPARATOR = "/"


class ZooFormatError(ValueError):
    """A zoo directory is missing, damaged, of another format, or from other settings."""


class Zoo(NamedTuple):
    """A loaded zoo.

    Attributes:
        params: the networks' params, nested like one network's, leaves ``(N, *shape)``.
        hyperparameters: ``{name: (N,)}``.
        metrics: ``{name: (N,)}`` test metrics.
        spec: the permutation spec of one network's params.
        manifest: the manifest as read.
    """

    params: PyTree
    hyperparameters: dict[str, np.ndarray]
    metrics: dict[str, np.ndarray]
    spec: PyTree
    manifest: dict[str, Any]

    @property
    def size(self) -> int:
        """Number of networks."""
        return len(next(iter(self.metrics.values())))


def _path_name(path: tuple) -> str:
    return _SEPARATOR.join(str(getattr(part, "key", part)) for part in path)


def flatten(tree: PyTree) -> dict[str, Any]:
    """A nested dict of leaves as ``{"a/b/c": leaf}`` (spec tuples count as leaves)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=nf.is_axes)[0]
    return {_path_name(path): leaf for path, leaf in leaves}


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten` for nested dicts."""
    return nest(flat, _SEPARATOR)


def manifest_spec(encoded: dict[str, list], where: str) -> PyTree:
    """A manifest's spec (:func:`lopt.nf.spec_json.spec_from_json`).

    Raises:
        ZooFormatError: an entry that is no encoded id, named with ``where`` it is.
    """
    try:
        return spec_from_json(encoded)
    except ValueError as err:
        raise ZooFormatError(f"{where}: the manifest's spec: {err}") from None


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Reads and checks a zoo's manifest.

    Raises:
        ZooFormatError: no manifest, unreadable JSON, another format or an unknown version.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ZooFormatError(f"{directory} is not a zoo: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ZooFormatError(f"{path} is not valid JSON: {err}") from err
    if manifest.get("format") != FORMAT_NAME:
        raise ZooFormatError(f"{path} has format {manifest.get('format')!r}, not {FORMAT_NAME!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise ZooFormatError(
            f"{path} is format version {manifest.get('version')!r}; this lopt reads version "
            f"{FORMAT_VERSION}"
        )
    return manifest


class ShardWriter:
    """Appends shards to a zoo directory, creating it or resuming it.

    Args:
        directory: the zoo directory.
        description: how the zoo is generated; a resumed zoo must match it exactly.
        spec: the networks' permutation spec.
    """

    def __init__(self, directory: str | Path, description: dict[str, Any], spec: PyTree):
        self.directory = Path(directory)
        description = json.loads(json.dumps(description))  # tuples to lists, as stored
        if (self.directory / MANIFEST).exists():
            self.manifest = read_manifest(self.directory)
            differences = config_differences(self.manifest["description"], description)
            if differences:
                listed = "\n  ".join(differences)
                raise ZooFormatError(
                    f"{self.directory} holds a zoo generated with other settings (stored -> "
                    f"requested):\n  {listed}\nonly the count and the chunk size may change; "
                    "write a zoo of other settings to another directory"
                )
            verify_shards(self.directory, self.manifest)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.manifest = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "description": description,
                "spec": spec_to_json(spec),
                "shards": [],
            }

    @property
    def count(self) -> int:
        """Networks stored so far."""
        return sum(shard["count"] for shard in self.manifest["shards"])

    def append(
        self,
        indices: np.ndarray,
        params: PyTree,
        hyperparameters: dict[str, np.ndarray],
        metrics: dict[str, np.ndarray],
        seconds: float,
    ) -> None:
        """Writes one shard (networks ``indices``) and records it in the manifest."""
        if len(indices) == 0 or indices[0] != self.count:
            raise ValueError(f"shard must start at network {self.count}, got {indices[:1]}")
        arrays = {"index": np.asarray(indices)}
        arrays |= {f"params/{k}": np.asarray(v) for k, v in flatten(params).items()}
        arrays |= {f"hyper/{k}": np.asarray(v) for k, v in hyperparameters.items()}
        arrays |= {f"metrics/{k}": np.asarray(v) for k, v in metrics.items()}
        name = f"shard_{len(self.manifest['shards']):05d}.npz"
        shard = io.BytesIO()
        np.savez(shard, **arrays)
        write_atomic(self.directory / name, shard.getvalue())
        self.manifest.setdefault(
            "shapes", {k: list(np.shape(v)[1:]) for k, v in flatten(params).items()}
        )
        self.manifest["shards"].append(
            {
                "file": name,
                "first_index": int(indices[0]),
                "count": len(indices),
                "sha256": sha256(self.directory / name),
                "seconds": round(seconds, 3),
            }
        )
        write_text(self.directory / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True))


def verify_shards(directory: Path, manifest: dict[str, Any]) -> None:
    """Checks that every shard exists and has its recorded SHA-256.

    Raises:
        ZooFormatError: naming the missing or damaged shard.
    """
    for shard in manifest["shards"]:
        path = Path(directory) / shard["file"]
        if not path.is_file():
            raise ZooFormatError(f"shard {path} listed in the manifest is missing")
        actual = sha256(path)
        if actual != shard["sha256"]:
            raise ZooFormatError(
                f"shard {path} is damaged: its SHA-256 is {actual}, the manifest records "
                f"{shard['sha256']}; regenerate it (delete it and the entries after it)"
            )


def load_zoo(directory: str | Path) -> Zoo:
    """Loads a zoo, verifying every shard's hash.

    Raises:
        ZooFormatError: a missing/invalid manifest, a missing or damaged shard, or shards
            whose contents disagree with the manifest.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if not manifest["shards"]:
        raise ZooFormatError(f"zoo {directory} has no shards yet")
    verify_shards(directory, manifest)
    parts: dict[str, list[np.ndarray]] = {}
    expected = 0
    for shard in manifest["shards"]:
        with np.load(directory / shard["file"], allow_pickle=False) as data:
            index = data["index"]
            if len(index) != shard["count"] or index[0] != expected:
                raise ZooFormatError(
                    f"shard {shard['file']} holds networks {index[0]}.. ({len(index)}), the "
                    f"manifest says {expected}.. ({shard['count']})"
                )
            expected += len(index)
            for key in data.files:
                parts.setdefault(key, []).append(data[key])
    arrays = {key: np.concatenate(chunks) for key, chunks in parts.items()}
    group = lambda prefix: {
        key[len(prefix) :]: value for key, value in arrays.items() if key.startswith(prefix)
    }
    params = group("params/")
    if set(params) != set(manifest["spec"]):
        raise ZooFormatError(
            f"zoo {directory}: shard tensors {sorted(params)} differ from the spec's "
            f"{sorted(manifest['spec'])}"
        )
    return Zoo(
        params=unflatten(params),
        hyperparameters=group("hyper/"),
        metrics=group("metrics/"),
        spec=manifest_spec(manifest["spec"], f"zoo {directory}"),
        manifest=manifest,
    )
