"""Tests of the tensorflow-datasets loading path on tiny datasets prepared offline.

Real ``tfds.core.GeneratorBasedBuilder`` subclasses are prepared into a temporary
directory as ``array_record`` files (no TensorFlow: images are handed to
``tfds.features.Image`` already PNG-encoded, which tfds stores as is, and decodes with
PIL when reading), then read back through the registry's real-data tasks exactly as
FashionMNIST, CIFAR-10 and LM1B would be.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from lopt.tasks import DatasetNotPreparedError, Task, get_task
from lopt.tasks import data as task_data

IMAGE_COUNTS = {"train": 48, "test": 16}
SENTENCE_COUNTS = {"train": 300, "test": 40}
SPLIT_SEEDS = {"train": 0, "test": 1}
TRAIN_BYTE_BUDGET = 5000  # less than the ~8.5 kB of training text: the stream is cut
VALID_BYTE_BUDGET = 2000  # the training text's next bytes


# -- the tiny datasets -------------------------------------------------------------------
def tiny_images(split: str, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic uint8 images ``(N, *shape)`` and labels in 0..9 of one split."""
    rng = np.random.default_rng((SPLIT_SEEDS[split], *shape))
    count = IMAGE_COUNTS[split]
    images = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
    return images, rng.integers(0, 10, count)


def tiny_sentences(split: str) -> list[str]:
    """Deterministic sentences: lowercase (with non-ASCII) for train, uppercase for test.

    Every test window of a few bytes holds an uppercase ASCII letter and no training window
    does, so a batch shows which split it came from.
    """
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    words = ["garçon", "über", "naïve", "data", "jax", "tiny", "stream", "byte"]
    if split == "test":
        return [
            "-".join(["HELD", "OUT", *(rng.choice(["ALPHA", "BETA", "GAMMA"], 3))])
            for _ in range(SENTENCE_COUNTS[split])
        ]
    return [
        f"{index} " + " ".join(rng.choice(words, int(rng.integers(2, 6))))
        for index in range(SENTENCE_COUNTS[split])
    ]


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of a uint8 ``(H, W, C)`` image, made with PIL rather than TensorFlow."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "png")
    return buffer.getvalue()


class TinyImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images and labels with the features of tfds' ``fashion_mnist`` and ``cifar10``."""

    VERSION = tfds.core.Version("1.0.0")
    IMAGE_SHAPE: ClassVar[tuple[int, int, int]] = (28, 28, 1)

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=self.IMAGE_SHAPE),
                "label": tfds.features.ClassLabel(num_classes=10),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager
        return {split: self._generate_examples(split) for split in IMAGE_COUNTS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        images, labels = tiny_images(split, self.IMAGE_SHAPE)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield index, {"image": png_bytes(image), "label": int(label)}


class LoptTinyFashion(TinyImageBuilder):
    """28x28x1 images, registered with tfds under ``lopt_tiny_fashion``."""


class LoptTinyCifar(TinyImageBuilder):
    """32x32x3 images, registered with tfds under ``lopt_tiny_cifar``."""

    IMAGE_SHAPE: ClassVar[tuple[int, int, int]] = (32, 32, 3)


class LoptTinyText(tfds.core.GeneratorBasedBuilder):
    """Sentences with the feature of tfds' ``lm1b``; registered as ``lopt_tiny_text``."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
        return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager
        return {split: self._generate_examples(split) for split in SENTENCE_COUNTS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        for index, sentence in enumerate(tiny_sentences(split)):
            yield index, {"text": sentence}


class LoptTinyTextUnregistered(LoptTinyText, skip_registration=True):
    """The same sentences, unknown to tfds' registry: read back from its files alone."""


BUILDERS = (LoptTinyFashion, LoptTinyCifar, LoptTinyText, LoptTinyTextUnregistered)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tfds data directory holding every tiny dataset, prepared as array_record."""
    root = tmp_path_factory.mktemp("tfds")
    for builder_class in BUILDERS:
        builder_class(data_dir=str(root), file_format="array_record").download_and_prepare()
    return str(root)


def expected_stream(split: str, budget: int) -> bytes:
    return "".join(sentence + "\n" for sentence in tiny_sentences(split)).encode()[:budget]


def area_reference(images: np.ndarray, size: int) -> np.ndarray:
    """Exact area resize: upsample by repetition to a multiple of ``size``, block-average."""
    height = images.shape[1]
    repeat = np.lcm(height, size) // height
    big = np.repeat(np.repeat(images.astype(np.float64), repeat, 1), repeat, 2)
    block = big.shape[1] // size
    blocks = big.reshape(len(images), size, block, size, block, images.shape[-1])
    return np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)


def rows_in(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Whether each row of ``rows`` equals some row of ``table`` (both 2-D)."""
    return (rows[:, None, :] == table[None, :, :]).all(-1).any(-1)


def assert_trains(task: Task) -> None:
    """The loss is finite and a jitted Adam step (task passed as an argument) lowers it."""
    optimizer = optax.adam(1e-2)
    key = jax.random.key(1)

    @jax.jit
    def step(task: Task, params: Any, state: Any) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(task.loss)(params, task.batch(key))
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    params = jax.jit(task.init)(jax.random.key(0))
    state = optimizer.init(params)
    losses = []
    for _ in range(6):  # the same batch every step: its loss must fall
        params, state, loss = step(task, params, state)
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    assert step._cache_size() == 1


# -- the tests -----------------------------------------------------------------------------
def test_tfds_builder_reads_the_prepared_data(data_dir):
    registered = tfds.builder("lopt_tiny_fashion", data_dir=data_dir)
    assert isinstance(registered, LoptTinyFashion) and registered.is_prepared()
    from_files = tfds.builder("lopt_tiny_text_unregistered", data_dir=data_dir)
    assert not isinstance(from_files, LoptTinyText) and from_files.is_prepared()
    for builder in (registered, from_files):
        assert str(builder.info.file_format.value) == "array_record"
    assert registered.info.splits["train"].num_examples == IMAGE_COUNTS["train"]
    source = tfds.data_source("lopt_tiny_fashion", split="test", data_dir=data_dir)
    images, labels = tiny_images("test", (28, 28, 1))
    np.testing.assert_array_equal(source[3]["image"], images[3])
    assert source[3]["label"] == labels[3]


@pytest.mark.parametrize(
    ("task_name", "dataset", "shape", "size", "flat"),
    [
        ("mlp_fashion_mnist", "lopt_tiny_fashion", (28, 28, 1), 8, True),
        ("cnn_cifar10", "lopt_tiny_cifar", (32, 32, 3), 16, False),
    ],
)
def test_image_tasks_load_resize_and_train(data_dir, task_name, dataset, shape, size, flat):
    task = get_task(task_name, dataset=dataset, data_dir=data_dir, batch_size=32)
    assert task.config["dataset"] == dataset
    images, labels = tiny_images("test", shape)
    held = task.data["test"]
    assert held["images"].dtype == jnp.uint8
    assert held["images"].shape == (IMAGE_COUNTS["test"], size, size, shape[-1])
    np.testing.assert_array_equal(held["images"], area_reference(images, size))
    np.testing.assert_array_equal(held["labels"], labels.astype(np.int32))
    # valid is a fixed shuffle's first twelfth of the dataset's train split, train the rest.
    images, labels = tiny_images("train", shape)
    order = np.random.default_rng(0).permutation(IMAGE_COUNTS["train"])
    cut = round(IMAGE_COUNTS["train"] / 12)
    for split, index in (("valid", order[:cut]), ("train", order[cut:])):
        np.testing.assert_array_equal(
            task.data[split]["images"], area_reference(images[index], size)
        )
        np.testing.assert_array_equal(task.data[split]["labels"], labels[index].astype(np.int32))

    batch = task.batch(jax.random.key(2))
    inputs = np.asarray(batch["inputs"])
    assert inputs.shape == ((32, size * size * shape[-1]) if flat else (32, size, size, shape[-1]))
    assert inputs.dtype == np.float32 and inputs.min() >= 0.0 and inputs.max() <= 1.0
    # Every drawn example is one of its split's (resized, scaled) images with its label.
    for split in ("train", "valid", "test"):
        drawn = task.batch(jax.random.key(3), split)
        pixels = np.rint(np.asarray(drawn["inputs"]) * 255).reshape(32, -1)
        table = np.asarray(task.data[split]["images"]).reshape(task.split_size(split), -1)
        for other_split in {"train", "valid", "test"} - {split}:
            other = np.asarray(task.data[other_split]["images"])
            assert not rows_in(pixels, other.reshape(len(other), -1)).any()
        assert rows_in(pixels, table).all()
        labelled = table.astype(np.int64) * 10 + np.asarray(task.data[split]["labels"])[:, None]
        drawn_labelled = pixels.astype(np.int64) * 10 + np.asarray(drawn["targets"])[:, None]
        assert rows_in(drawn_labelled, labelled).all()
    assert_trains(task)


@pytest.mark.parametrize(
    ("task_name", "batch_size", "seq_len"),
    [("rnn_lm1b", 64, 16), ("transformer_lm1b", 8, 8)],
)
def test_text_tasks_stream_bytes_and_train(data_dir, task_name, batch_size, seq_len):
    task = get_task(
        task_name,
        dataset="lopt_tiny_text",
        data_dir=data_dir,
        max_train_bytes=TRAIN_BYTE_BUDGET,
        max_valid_bytes=VALID_BYTE_BUDGET,
        max_test_bytes=1 << 20,
    )
    train = bytes(np.asarray(task.data["train"]["tokens"]))
    valid = bytes(np.asarray(task.data["valid"]["tokens"]))
    test = bytes(np.asarray(task.data["test"]["tokens"]))
    assert task.data["train"]["tokens"].dtype == jnp.uint8
    budget = TRAIN_BYTE_BUDGET + VALID_BYTE_BUDGET
    assert len(expected_stream("train", 1 << 20)) > budget
    assert train == expected_stream("train", TRAIN_BYTE_BUDGET)
    assert valid == expected_stream("train", budget)[TRAIN_BYTE_BUDGET:]  # the bytes after
    assert test == expected_stream("test", 1 << 20)  # the whole split, within budget
    assert "ç".encode() in train  # UTF-8 bytes, not characters

    for split, stream in (("train", train), ("valid", valid), ("test", test)):
        batch = task.batch(jax.random.key(4), split)
        inputs, targets = np.asarray(batch["inputs"]), np.asarray(batch["targets"])
        assert inputs.shape == targets.shape == (batch_size, seq_len)
        for row_in, row_out in zip(inputs, targets, strict=True):
            assert bytes(row_in.astype(np.uint8)) + bytes(row_out[-1:].astype(np.uint8)) in stream
        upper = ((inputs >= ord("A")) & (inputs <= ord("Z"))).any(axis=1)
        assert upper.all() if split == "test" else not upper.any()
    assert_trains(task)


def test_text_budget_cuts_across_read_chunks_and_unregistered_builders_load(data_dir):
    chunked = task_data.tfds_text("lopt_tiny_text_unregistered", data_dir, 100, 30, 77, chunk=7)
    assert bytes(chunked["train"]["tokens"]) == expected_stream("train", 100)
    assert bytes(chunked["valid"]["tokens"]) == expected_stream("train", 130)[100:]
    assert bytes(chunked["test"]["tokens"]) == expected_stream("test", 77)


def test_parquet_files_are_read_too(tmp_path):
    LoptTinyFashion(data_dir=str(tmp_path), file_format="parquet").download_and_prepare()
    splits = task_data.tfds_images("lopt_tiny_fashion", str(tmp_path), 14)
    images, labels = tiny_images("test", (28, 28, 1))
    np.testing.assert_array_equal(splits["test"]["images"], area_reference(images, 14))
    np.testing.assert_array_equal(splits["test"]["labels"], labels)
    assert len(splits["train"]["labels"]) + len(splits["valid"]["labels"]) == IMAGE_COUNTS["train"]


def test_wrong_features_are_reported(data_dir):
    with pytest.raises(ValueError, match="needs features 'image' and 'label'"):
        get_task("mlp_fashion_mnist", dataset="lopt_tiny_text", data_dir=data_dir)


def assert_says_how_to_prepare(err: pytest.ExceptionInfo, name: str, where: str) -> None:
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert f"tfds build {name} --file_format=array_record --data_dir={where}" in message
    assert f"tfds.builder('{name}', data_dir='{where}', file_format='array_record')" in message
    assert "download_and_prepare()" in message and "pip install tensorflow" in message
    assert len(message.splitlines()) < 20, "the instructions must not be buried"


def test_unknown_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match="'lopt_no_such_data' was not found") as err:
        get_task("rnn_lm1b", dataset="lopt_no_such_data", data_dir=str(tmp_path))
    assert_says_how_to_prepare(err, "lopt_no_such_data", str(tmp_path))


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match="'lopt_tiny_cifar' is not prepared") as err:
        get_task("cnn_cifar10", dataset="lopt_tiny_cifar", data_dir=str(tmp_path))
    assert_says_how_to_prepare(err, "lopt_tiny_cifar", str(tmp_path))


def test_tfrecord_files_are_refused_with_instructions(data_dir, tmp_path):
    # Preparing as tfrecord needs TensorFlow, so the prepared array_record copy is relabelled
    # the way tfds' default (tfrecord) preparation would have recorded it.
    shutil.copytree(Path(data_dir) / "lopt_tiny_fashion", tmp_path / "lopt_tiny_fashion")
    info_path = tmp_path / "lopt_tiny_fashion" / "1.0.0" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    assert info["fileFormat"] == "array_record"
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetNotPreparedError, match="stored as tfrecord") as err:
        get_task("mlp_fashion_mnist", dataset="lopt_tiny_fashion", data_dir=str(tmp_path))
    assert_says_how_to_prepare(err, "lopt_tiny_fashion", str(tmp_path))
