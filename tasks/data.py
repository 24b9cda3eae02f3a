"""Datasets of the inner tasks, as numpy arrays split into ``train`` and ``test``.

Embedded (offline, shipped with the dependencies):

* **digits**: scikit-learn's ``load_digits``, 1797 8x8 grey images with values 0..16.
  Split: a fixed shuffle (``numpy.random.default_rng(0)``), the first 80% (1438 images)
  for ``train``, the other 359 for ``test``.
* **pydoc text**: CPython's ``pydoc_data.topics.topics`` (the help texts), the topics in
  sorted key order joined by blank lines, UTF-8 encoded (~470k bytes). Split: the first
  90% of the bytes for ``train``, the last 10% for ``test`` (contiguous, so no training
  window overlaps held-out text).

Real (tensorflow-datasets, read with ``tfds.data_source`` from ``array_record`` files, no
TensorFlow needed to read; preparing them needs TensorFlow and the internet once):

* images (``fashion_mnist``, ``cifar10``; features ``image``/``label``): the dataset's
  own ``train``/``test`` splits, resized by exact area averaging (:func:`area_resize`)
  and stored as uint8.
* text (``lm1b``; feature ``text``): sentences in stored order (tfds shuffles them when
  preparing) joined by newlines into one byte stream, up to a byte budget per split.

Arrays stay uint8 (4x smaller than float32); samplers convert batches to float inside jit.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

Split = dict[str, np.ndarray]
Splits = dict[str, Split]

DIGITS_TEST_FRACTION = 0.2
TEXT_TEST_FRACTION = 0.1


class DatasetNotPreparedError(FileNotFoundError):
    """A tensorflow-datasets dataset is not available in array_record form."""


def prepare_instructions(name: str, data_dir: str | None) -> str:
    """How to prepare ``name`` on a connected machine so this package can read it."""
    target = data_dir or "~/tensorflow_datasets"
    return (
        f"Prepare it once on a machine with internet access (TensorFlow is needed to "
        f"prepare, not to read):\n"
        f"    pip install tensorflow tensorflow-datasets importlib_resources\n"
        f"    python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
        f"data_dir='{target}', file_format='array_record').download_and_prepare()\"\n"
        f"or: tfds build {name} --file_format=array_record --data_dir={target}\n"
        f"then copy {target}/{name} to this machine and pass data_dir=... (or set "
        f"TFDS_DATA_DIR). importlib_resources is needed by tensorflow-datasets 4.9.x for "
        f"preparing on Python >= 3.9 but is not pulled in by it."
    )


@functools.cache
def digits_images() -> Splits:
    """scikit-learn's 8x8 digits: ``images`` uint8 (N, 8, 8, 1) in 0..16, ``labels`` int32."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(labels))
    test_count = round(len(labels) * DIGITS_TEST_FRACTION)
    train, test = order[test_count:], order[:test_count]
    return {
        "train": {"images": images[train], "labels": labels[train]},
        "test": {"images": images[test], "labels": labels[test]},
    }


@functools.cache
def pydoc_text() -> Splits:
    """CPython's pydoc topic texts as one UTF-8 byte stream: ``tokens`` uint8 (N,)."""
    from pydoc_data import topics

    text = "\n\n".join(topics.topics[key] for key in sorted(topics.topics))
    tokens = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    cut = round(len(tokens) * (1 - TEXT_TEST_FRACTION))
    return {"train": {"tokens": tokens[:cut].copy()}, "test": {"tokens": tokens[cut:].copy()}}


def _area_weights(source: int, target: int) -> np.ndarray:
    """(target, source) matrix averaging each target cell's footprint on the source axis."""
    edges = np.arange(target + 1) * (source / target)
    left, right = edges[:-1, None], edges[1:, None]
    cells = np.arange(source)[None, :]
    overlap = np.clip(np.minimum(right, cells + 1) - np.maximum(left, cells), 0.0, None)
    return overlap / (source / target)


def area_resize(images: np.ndarray, size: int, chunk: int = 8192) -> np.ndarray:
    """Downsamples ``(N, H, W, C)`` uint8 images to ``(N, size, size, C)`` by area averaging.

    Each output pixel is the mean of the source area it covers (fractional pixels weighted
    by overlap), which is exact average pooling when ``H / size`` is an integer
    (CIFAR 32 -> 16) and the standard "area" resampling otherwise (FashionMNIST 28 -> 8).
    """
    if images.ndim != 4:
        raise ValueError(f"area_resize needs (N, H, W, C) images, got shape {images.shape}")
    rows = _area_weights(images.shape[1], size).astype(np.float32)
    cols = _area_weights(images.shape[2], size).astype(np.float32)
    out = np.empty((images.shape[0], size, size, images.shape[3]), dtype=np.uint8)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].astype(np.float32)
        resized = np.einsum("ih,nhwc,jw->nijc", rows, block, cols, optimize=True)
        out[start : start + chunk] = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return out


def _data_source(name: str, split: str, data_dir: str | None) -> Any:
    """Opens a prepared tfds split for random access, or raises one clear error."""
    import tensorflow_datasets as tfds

    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # unknown name and nothing prepared under data_dir
        # tfds' message lists every dataset it knows (~260 lines); its first line suffices.
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DatasetNotPreparedError(
            f"tensorflow-datasets dataset {name!r} was not found in {where}: {reason}\n"
            + prepare_instructions(name, data_dir)
        ) from err
    if not builder.is_prepared():
        raise DatasetNotPreparedError(
            f"tensorflow-datasets dataset {name!r} is not prepared in {where}.\n"
            + prepare_instructions(name, data_dir)
        )
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format not in ("array_record", "parquet"):
        raise DatasetNotPreparedError(
            f"tensorflow-datasets dataset {name!r} in {where} is stored as {file_format}, "
            "which cannot be read without TensorFlow; prepare it again as array_record.\n"
            + prepare_instructions(name, data_dir)
        )
    if split not in builder.info.splits:
        raise ValueError(f"dataset {name!r} has splits {list(builder.info.splits)}, not {split!r}")
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


def _read_all(source: Any, chunk: int = 4096) -> list[Any]:
    records: list[Any] = []
    for start in range(0, len(source), chunk):
        records.extend(source.__getitems__(list(range(start, min(start + chunk, len(source))))))
    return records


@functools.lru_cache(maxsize=8)
def tfds_images(name: str, data_dir: str | None, image_size: int) -> Splits:
    """Image classification data from tfds (features ``image``, ``label``), area-resized.

    Returns:
        ``{"train"|"test": {"images": uint8 (N, s, s, C), "labels": int32 (N,)}}``.
    """
    splits: Splits = {}
    for split in ("train", "test"):
        records = _read_all(_data_source(name, split, data_dir))
        if not records or "image" not in records[0] or "label" not in records[0]:
            raise ValueError(f"dataset {name!r} needs features 'image' and 'label'")
        images = np.stack([np.asarray(r["image"], dtype=np.uint8) for r in records])
        if images.ndim == 3:
            images = images[..., None]
        labels = np.asarray([r["label"] for r in records], dtype=np.int32)
        if images.shape[1:3] != (image_size, image_size):
            images = area_resize(images, image_size)
        splits[split] = {"images": images, "labels": labels}
    return splits


@functools.lru_cache(maxsize=8)
def tfds_text(
    name: str, data_dir: str | None, max_train_bytes: int, max_test_bytes: int, chunk: int = 4096
) -> Splits:
    """Byte-level text from tfds (feature ``text``): sentences joined by newlines.

    Reads sentences in stored order until the split's byte budget is reached.

    Returns:
        ``{"train"|"test": {"tokens": uint8 (N,)}}`` with ``N <= budget``.
    """
    splits: Splits = {}
    for split, budget in (("train", max_train_bytes), ("test", max_test_bytes)):
        source = _data_source(name, split, data_dir)
        pieces: list[bytes] = []
        total = 0
        for start in range(0, len(source), chunk):
            batch = source.__getitems__(list(range(start, min(start + chunk, len(source)))))
            for record in batch:
                text = record["text"]
                piece = (text.encode("utf-8") if isinstance(text, str) else bytes(text)) + b"\n"
                pieces.append(piece)
                total += len(piece)
            if total >= budget:
                break
        stream = b"".join(pieces)[:budget]
        splits[split] = {"tokens": np.frombuffer(stream, dtype=np.uint8).copy()}
    return splits
