"""The task registry: the UNF paper's four inner tasks, on embedded and on real data.

==================  ===================================================  ==================
name                model (defaults = the paper's sizes)                 data
==================  ===================================================  ==================
mlp_digits          MLP 64 -> 32 -> 10, ReLU, batch 128                  sklearn digits 8x8
cnn_digits          conv 16, conv 32 (3x3, SAME), global avg pool,       sklearn digits
                    linear, batch 128                                    8x8x1
rnn_text            IRNN LM: byte embed 32, ReLU cell 64, batch 64,      pydoc topics bytes
                    seq 16
transformer_text    pre-LN LM: d 32, 4 heads, MLP 128, 2 blocks,         pydoc topics bytes
                    learned positions, batch 8, seq 8
mlp_fashion_mnist   as mlp_digits                                        FashionMNIST 8x8
cnn_cifar10         as cnn_digits                                        CIFAR-10 16x16x3
rnn_lm1b            as rnn_text                                          LM1B bytes
transformer_lm1b    as transformer_text                                  LM1B bytes
==================  ===================================================  ==================

Every factory takes its sizes as keyword options, e.g.
``get_task("mlp_digits", width=64, depth=2, batch_size=32)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from . import data as datasets
from .base import (
    Task,
    classification_loss,
    classification_metrics,
    image_sampler,
    language_model_metrics,
    make_task,
    text_sampler,
)
from .models import CNN, MLP, RNNLM, TransformerLM

BYTE_VOCAB = 256
DIGITS_SCALE = 1.0 / 16.0
PIXEL_SCALE = 1.0 / 255.0
NUM_CLASSES = 10  # digits, FashionMNIST and CIFAR-10 alike


def _num_classes(name: str, splits) -> int:
    largest = max(int(split["labels"].max()) for split in splits.values())
    if largest >= NUM_CLASSES:
        raise ValueError(f"task {name}: label {largest} is out of range for {NUM_CLASSES} classes")
    return NUM_CLASSES


def _mlp_task(name, splits, scale, *, width, depth, batch_size, config) -> Task:
    num_classes = _num_classes(name, splits)
    return make_task(
        name=name,
        model=MLP(hidden_sizes=(width,) * depth, num_classes=num_classes),
        data=splits,
        sampler=image_sampler(scale, flatten=True),
        loss_fn=classification_loss,
        metrics_fn=classification_metrics,
        batch_size=batch_size,
        config=config,
    )


def _cnn_task(name, splits, scale, *, channels, stride, batch_size, config) -> Task:
    num_classes = _num_classes(name, splits)
    return make_task(
        name=name,
        model=CNN(channels=tuple(channels), num_classes=num_classes, stride=stride),
        data=splits,
        sampler=image_sampler(scale, flatten=False),
        loss_fn=classification_loss,
        metrics_fn=classification_metrics,
        batch_size=batch_size,
        config=config,
    )


def _lm_task(name, splits, model, *, batch_size, seq_len, config) -> Task:
    return make_task(
        name=name,
        model=model,
        data=splits,
        sampler=text_sampler(seq_len),
        loss_fn=classification_loss,
        metrics_fn=language_model_metrics,
        batch_size=batch_size,
        config=config,
    )


def _rnn(hidden_size: int, embed_size: int) -> RNNLM:
    return RNNLM(vocab_size=BYTE_VOCAB, embed_size=embed_size, hidden_size=hidden_size)


def _transformer(width, num_heads, mlp_size, depth, seq_len) -> TransformerLM:
    if width % num_heads:
        raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
    return TransformerLM(
        vocab_size=BYTE_VOCAB,
        width=width,
        num_heads=num_heads,
        mlp_size=mlp_size,
        depth=depth,
        max_len=seq_len,
    )


def _options(arguments: dict) -> dict:
    """A factory's size and data options as recorded in ``Task.config`` (JSON-ready).

    ``data_dir`` is where the data happen to live, not part of the task, so it is left out.
    """
    return {
        name: list(value) if isinstance(value, tuple | list) else value
        for name, value in arguments.items()
        if name != "data_dir"
    }


# -- embedded data ----------------------------------------------------------------------
def mlp_digits(width: int = 32, depth: int = 1, batch_size: int = 128) -> Task:
    """MLP on scikit-learn's 8x8 digits (64 inputs, ``depth`` hidden layers of ``width``)."""
    config = _options(locals())
    return _mlp_task(
        "mlp_digits",
        datasets.digits_images(),
        DIGITS_SCALE,
        width=width,
        depth=depth,
        batch_size=batch_size,
        config=config,
    )


def cnn_digits(channels: Sequence[int] = (16, 32), stride: int = 1, batch_size: int = 128) -> Task:
    """CNN on scikit-learn's digits as 8x8x1 images."""
    config = _options(locals())
    return _cnn_task(
        "cnn_digits",
        datasets.digits_images(),
        DIGITS_SCALE,
        channels=channels,
        stride=stride,
        batch_size=batch_size,
        config=config,
    )


def rnn_text(
    hidden_size: int = 64, embed_size: int = 32, batch_size: int = 64, seq_len: int = 16
) -> Task:
    """Byte-level identity-initialised RNN LM on CPython's pydoc topics."""
    config = _options(locals())
    return _lm_task(
        "rnn_text",
        datasets.pydoc_text(),
        _rnn(hidden_size, embed_size),
        batch_size=batch_size,
        seq_len=seq_len,
        config=config,
    )


def transformer_text(
    width: int = 32,
    num_heads: int = 4,
    mlp_size: int = 128,
    depth: int = 2,
    batch_size: int = 8,
    seq_len: int = 8,
) -> Task:
    """Byte-level pre-LayerNorm transformer LM on CPython's pydoc topics."""
    config = _options(locals())
    model = _transformer(width, num_heads, mlp_size, depth, seq_len)
    return _lm_task(
        "transformer_text",
        datasets.pydoc_text(),
        model,
        batch_size=batch_size,
        seq_len=seq_len,
        config=config,
    )


# -- real data (tensorflow-datasets) ----------------------------------------------------
def mlp_fashion_mnist(
    width: int = 32,
    depth: int = 1,
    batch_size: int = 128,
    image_size: int = 8,
    data_dir: str | None = None,
    dataset: str = "fashion_mnist",
) -> Task:
    """MLP on FashionMNIST area-resized to ``image_size`` squared (the paper: 8x8)."""
    config = _options(locals())
    splits = datasets.tfds_images(dataset, data_dir, image_size)
    return _mlp_task(
        "mlp_fashion_mnist",
        splits,
        PIXEL_SCALE,
        width=width,
        depth=depth,
        batch_size=batch_size,
        config=config,
    )


def cnn_cifar10(
    channels: Sequence[int] = (16, 32),
    stride: int = 1,
    batch_size: int = 128,
    image_size: int = 16,
    data_dir: str | None = None,
    dataset: str = "cifar10",
) -> Task:
    """CNN on CIFAR-10 average-pooled to ``image_size`` squared (the paper: 16x16x3)."""
    config = _options(locals())
    splits = datasets.tfds_images(dataset, data_dir, image_size)
    return _cnn_task(
        "cnn_cifar10",
        splits,
        PIXEL_SCALE,
        channels=channels,
        stride=stride,
        batch_size=batch_size,
        config=config,
    )


def rnn_lm1b(
    hidden_size: int = 64,
    embed_size: int = 32,
    batch_size: int = 64,
    seq_len: int = 16,
    data_dir: str | None = None,
    dataset: str = "lm1b",
    max_train_bytes: int = 1 << 24,
    max_test_bytes: int = 1 << 20,
) -> Task:
    """Byte-level IRNN LM on LM1B (the first ``max_train_bytes`` of its training text)."""
    config = _options(locals())
    splits = datasets.tfds_text(dataset, data_dir, max_train_bytes, max_test_bytes)
    return _lm_task(
        "rnn_lm1b",
        splits,
        _rnn(hidden_size, embed_size),
        batch_size=batch_size,
        seq_len=seq_len,
        config=config,
    )


def transformer_lm1b(
    width: int = 32,
    num_heads: int = 4,
    mlp_size: int = 128,
    depth: int = 2,
    batch_size: int = 8,
    seq_len: int = 8,
    data_dir: str | None = None,
    dataset: str = "lm1b",
    max_train_bytes: int = 1 << 24,
    max_test_bytes: int = 1 << 20,
) -> Task:
    """Byte-level pre-LayerNorm transformer LM on LM1B."""
    config = _options(locals())
    splits = datasets.tfds_text(dataset, data_dir, max_train_bytes, max_test_bytes)
    model = _transformer(width, num_heads, mlp_size, depth, seq_len)
    return _lm_task(
        "transformer_lm1b", splits, model, batch_size=batch_size, seq_len=seq_len, config=config
    )


TaskFactory = Callable[..., Task]

_REGISTRY: dict[str, TaskFactory] = {
    "mlp_digits": mlp_digits,
    "cnn_digits": cnn_digits,
    "rnn_text": rnn_text,
    "transformer_text": transformer_text,
    "mlp_fashion_mnist": mlp_fashion_mnist,
    "cnn_cifar10": cnn_cifar10,
    "rnn_lm1b": rnn_lm1b,
    "transformer_lm1b": transformer_lm1b,
}

EMBEDDED_TASKS = ("mlp_digits", "cnn_digits", "rnn_text", "transformer_text")


def register_task(name: str, factory: TaskFactory, *, overwrite: bool = False) -> None:
    """Adds ``factory(**options) -> Task`` to the registry under ``name``."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"task {name!r} is already registered (pass overwrite=True)")
    if not callable(factory):
        raise TypeError(f"task factory for {name!r} is not callable")
    _REGISTRY[name] = factory


def task_factory(name: str) -> TaskFactory:
    """The factory registered as ``name`` (its keyword arguments are the task's options).

    Raises:
        ValueError: unknown task name.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; registered tasks: {task_names()}")
    return _REGISTRY[name]


def task_names() -> list[str]:
    """Names of all registered tasks."""
    return sorted(_REGISTRY)


def get_task(name: str, **options) -> Task:
    """Builds the task ``name`` with size ``options`` (keyword arguments of its factory).

    Raises:
        ValueError: unknown task name.
        TypeError: an option the task does not take (the message lists the valid ones).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; registered tasks: {task_names()}")
    factory = _REGISTRY[name]
    accepted = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = [key for key in options if key not in accepted]
    if unknown and not takes_any:
        raise TypeError(
            f"task {name!r} does not take options {unknown}; its options are {list(accepted)}"
        )
    return factory(**options)
