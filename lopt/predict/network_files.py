"""Reading one network's (or a batch's) params from a file, to score it.

Two forms, neither needing pickle:

* ``.npz``: one array per tensor, named by its path with ``/`` between the keys
  (``gru/ir/kernel``), as a zoo shard stores them (a ``params/`` prefix is dropped);
* ``.msgpack``: ``flax.serialization.msgpack_serialize`` of the nested params dict (or of
  ``{"params": ...}``, flax's variables).

>>> np.savez("net.npz", **{"/".join(k): v for k, v in flat_params.items()})
>>> read_network_file("net.npz")                  # nested dicts of numpy arrays
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import flax.serialization
import numpy as np

from lopt.persistence import nest

PyTree = Any
_PREFIX = "params/"


def read_network_file(path: str | os.PathLike) -> PyTree:
    """The params stored in ``path`` (``.npz`` or ``.msgpack``) as nested dicts of arrays.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another suffix, or contents that are not named numeric arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no parameter file {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            flat = {name.removeprefix(_PREFIX): data[name] for name in data.files}
        if not flat:
            raise ValueError(f"{path} holds no arrays")
        return nest(flat)
    if path.suffix == ".msgpack":
        try:
            tree = flax.serialization.msgpack_restore(path.read_bytes())
        except Exception as err:  # msgpack raises several unrelated types on bad bytes
            raise ValueError(f"{path} is not a msgpack file: {err}") from err
        if isinstance(tree, dict) and set(tree) == {"params"}:
            tree = tree["params"]
        if not isinstance(tree, dict) or not tree:
            raise ValueError(f"{path} does not hold a dict of params")
        return tree
    raise ValueError(f"{path}: parameter files are .npz or .msgpack, not {path.suffix!r}")
