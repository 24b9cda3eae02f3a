"""The task registry: the UNF paper's four inner tasks, on embedded and on real data.

==================  ===================================================  ==================
name                model (defaults = the paper's sizes)                 data
==================  ===================================================  ==================
mlp_augmented_digits  MLP 64 -> 32 -> 10, ReLU, batch 128                sklearn digits 8x8,
                                                                         a new random
                                                                         distortion per draw
cnn_augmented_digits  conv 16, conv 32 (3x3, SAME), global avg pool,     as above, 8x8x1
                      linear, batch 128
mlp_digits          as mlp_augmented_digits                              sklearn digits 8x8
cnn_digits          as cnn_augmented_digits                              sklearn digits 8x8x1
mlp_augmented_letters  as mlp_augmented_digits                           letters A..J from
                                                                         matplotlib's fonts
                                                                         8x8, distorted as
                                                                         the digits
cnn_augmented_letters  as cnn_augmented_digits                           as above, 8x8x1
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
``get_task("mlp_digits", width=64, depth=2, batch_size=32)``. A task is a model on a data
source, and its options are the model's sizes followed by the data's options: each is
defined once, with its default, for every task that shares it. The factories' signatures
are where the options and their defaults are defined: ``lopt-tasks`` lists them, and the
``task`` schemas of the command-line tools (:mod:`lopt.cli.schema`) are built from them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn

from . import data as datasets
from .base import (
    ImageAugmentation,
    Task,
    classification_loss,
    classification_metrics,
    image_sampler,
    language_model_metrics,
    make_task,
    text_sampler,
    with_param_scale,
)
from .data import Splits
from .models import CNN, MLP, RNNLM, TransformerLM

BYTE_VOCAB = 256
DIGITS_SCALE = 1.0 / 16.0
PIXEL_SCALE = 1.0 / 255.0
NUM_CLASSES = 10  # digits, letters A..J, FashionMNIST and CIFAR-10 alike


TaskFactory = Callable[..., Task]
"""``factory(**options) -> Task``; its keyword arguments are the task's options."""


def _num_classes(name: str, splits: Splits) -> int:
    largest = max(int(split["labels"].max()) for split in splits.values())
    if largest >= NUM_CLASSES:
        raise ValueError(f"task {name}: label {largest} is out of range for {NUM_CLASSES} classes")
    return NUM_CLASSES


def _options(arguments: dict) -> dict:
    """A factory's size and data options as recorded in ``Task.config`` (JSON-ready).

    ``data_dir`` is where the data happen to live, not part of the task, so it is left out.
    """
    return {
        name: list(value) if isinstance(value, tuple | list) else value
        for name, value in arguments.items()
        if name != "data_dir"
    }


class Images(NamedTuple):
    """Image data as a source loads it: the splits, the factor taking pixels to [0, 1], and
    the random distortion of every drawn image (None: the images as stored)."""

    splits: Splits
    scale: float
    augmentation: ImageAugmentation | None = None


# -- data sources: their options, returning the splits (and images' pixel scale) --------
def _digits() -> Images:
    """scikit-learn's 8x8 digits, embedded in the package."""
    return Images(datasets.digits_images(), DIGITS_SCALE)


_AUGMENTATION = ImageAugmentation()


def _augmented(load: Callable[[], Splits], pixel_scale: float, doc: str) -> Callable[..., Images]:
    """A data source whose images are ``load``'s, every drawn image distorted afresh
    (:class:`tasks.base.ImageAugmentation`): its options are the augmentation's, with its
    defaults, and refused when out of range."""

    def source(
        rotation: float = _AUGMENTATION.rotation,
        scale: float = _AUGMENTATION.scale,
        shear: float = _AUGMENTATION.shear,
        translation: float = _AUGMENTATION.translation,
        noise: float = _AUGMENTATION.noise,
    ) -> Images:
        augmentation = ImageAugmentation(rotation, scale, shear, translation, noise)
        augmentation.check()
        return Images(load(), pixel_scale, augmentation)

    source.__doc__ = doc
    return source


_augmented_digits = _augmented(
    datasets.digits_images,
    DIGITS_SCALE,
    """scikit-learn's 8x8 digits, every drawn image distorted afresh (all splits alike):
    a random affine map (rotation in degrees, zoom 1 ± scale per axis, shear, translation in
    pixels) and Gaussian pixel noise (:class:`tasks.base.ImageAugmentation`). No two draws
    are the same image, so a run cannot memorise its training examples.""",
)

_augmented_letters = _augmented(
    datasets.letters_images,
    PIXEL_SCALE,
    """Letters A..J as 8x8 grey glyphs from matplotlib's fonts, distorted afresh at every
    draw as the augmented digits: the digits' architecture on another data source.

    Upper and lower case of 15 / 3 / 4 fonts give 300 / 60 / 80 base images (train / valid /
    test; :func:`tasks.data.letters_images`), so every held-out image is of a typeface never
    trained on.""",
)


def _fashion_mnist(
    image_size: int = 8, data_dir: str | None = None, dataset: str = "fashion_mnist"
) -> Images:
    """FashionMNIST from tensorflow-datasets.

    Args:
        image_size: side the images are area-resized to (the UNF paper: 8).
        data_dir: tensorflow-datasets directory (default: ``TFDS_DATA_DIR`` or
            ``~/tensorflow_datasets``).
        dataset: the tensorflow-datasets name.
    """
    return Images(datasets.tfds_images(dataset, data_dir, image_size), PIXEL_SCALE)


def _cifar10(image_size: int = 16, data_dir: str | None = None, dataset: str = "cifar10") -> Images:
    """CIFAR-10 from tensorflow-datasets; options as :func:`_fashion_mnist` (the UNF paper
    average-pools the images to 16x16)."""
    return Images(datasets.tfds_images(dataset, data_dir, image_size), PIXEL_SCALE)


def _pydoc() -> Splits:
    """CPython's pydoc topics as bytes, embedded in Python."""
    return datasets.pydoc_text()


def _lm1b(
    data_dir: str | None = None,
    dataset: str = "lm1b",
    max_train_bytes: int = 1 << 24,
    max_valid_bytes: int = 1 << 20,
    max_test_bytes: int = 1 << 20,
) -> Splits:
    """LM1B from tensorflow-datasets as bytes: the first ``max_train_bytes`` of its training
    text (``train``), the ``max_valid_bytes`` after them (``valid``) and ``max_test_bytes`` of
    its test text (``test``)."""
    return datasets.tfds_text(dataset, data_dir, max_train_bytes, max_valid_bytes, max_test_bytes)


# -- models: their size options, returning how to build the task on loaded data ---------
Build = Callable[[str, Any, dict], Task]
"""``build(name, data, config) -> Task``: a model at its sizes, on the data a source loaded
(``config`` is recorded as ``Task.config``)."""


def _classifier(
    name: str,
    images: Images,
    config: dict,
    *,
    model: Callable[..., nn.Module],
    flatten: bool,
    batch_size: int,
) -> Task:
    return make_task(
        name=name,
        model=model(num_classes=_num_classes(name, images.splits)),
        data=images.splits,
        sampler=image_sampler(images.scale, flatten=flatten, augmentation=images.augmentation),
        loss_fn=classification_loss,
        metrics_fn=classification_metrics,
        batch_size=batch_size,
        config=config,
    )


def _language_model(
    name: str, splits: Splits, config: dict, *, model: nn.Module, batch_size: int, seq_len: int
) -> Task:
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


def _check_sizes(minimum: int, **sizes: Any) -> None:
    """Refuses a size option that is not an int of at least ``minimum``, naming the option
    and its valid range; a size of zero would otherwise fail deep in the model's
    initialisation (a division by zero), far from the option that caused it."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not hasattr(type(value), "__index__") or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _mlp(width: int = 32, depth: int = 1, batch_size: int = 128) -> Build:
    """An MLP on flattened images, ``depth`` hidden ReLU layers of ``width`` units."""
    _check_sizes(1, width=width)
    _check_sizes(0, depth=depth)
    model = functools.partial(MLP, hidden_sizes=(width,) * depth)
    return functools.partial(_classifier, model=model, flatten=True, batch_size=batch_size)


def _cnn(channels: Sequence[int] = (16, 32), stride: int = 1, batch_size: int = 128) -> Build:
    """A CNN: 3x3 convolutions of ``channels``, global average pooling, a linear layer."""
    _check_sizes(1, stride=stride, **{f"channels[{i}]": c for i, c in enumerate(channels)})
    model = functools.partial(CNN, channels=tuple(channels), stride=stride)
    return functools.partial(_classifier, model=model, flatten=False, batch_size=batch_size)


def _rnn(
    hidden_size: int = 64, embed_size: int = 32, batch_size: int = 64, seq_len: int = 16
) -> Build:
    """A byte-level identity-initialised ReLU RNN language model."""
    _check_sizes(1, hidden_size=hidden_size, embed_size=embed_size, seq_len=seq_len)
    model = RNNLM(vocab_size=BYTE_VOCAB, embed_size=embed_size, hidden_size=hidden_size)
    return functools.partial(_language_model, model=model, batch_size=batch_size, seq_len=seq_len)


def _transformer(
    width: int = 32,
    num_heads: int = 4,
    mlp_size: int = 128,
    depth: int = 2,
    batch_size: int = 8,
    seq_len: int = 8,
) -> Build:
    """A byte-level pre-LayerNorm transformer language model with learned positions."""
    _check_sizes(1, width=width, num_heads=num_heads, mlp_size=mlp_size, seq_len=seq_len)
    _check_sizes(0, depth=depth)
    if width % num_heads:
        raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
    model = TransformerLM(
        vocab_size=BYTE_VOCAB,
        width=width,
        num_heads=num_heads,
        mlp_size=mlp_size,
        depth=depth,
        max_len=seq_len,
    )
    return functools.partial(_language_model, model=model, batch_size=batch_size, seq_len=seq_len)


def _task(
    name: str, model: Callable[..., Build], data: Callable[..., Any], doc: str
) -> TaskFactory:
    """The factory of the task ``name``: ``model`` on ``data``.

    Its arguments are the model's size options, then the data's options, with their
    defaults, so that each is defined once however many tasks share it.
    """
    sizes = list(inspect.signature(model, eval_str=True).parameters.values())
    data_options = list(inspect.signature(data, eval_str=True).parameters.values())
    signature = inspect.Signature([*sizes, *data_options], return_annotation=Task)

    def factory(*args: Any, **kwargs: Any) -> Task:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{name}() {err}") from None  # as a plain function says it
        bound.apply_defaults()
        options = bound.arguments
        build = model(**{option.name: options[option.name] for option in sizes})
        loaded = data(**{option.name: options[option.name] for option in data_options})
        return build(name, loaded, _options(options))

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = __name__
    factory.__doc__ = doc
    factory.__signature__ = signature
    return factory


# -- embedded data ----------------------------------------------------------------------
mlp_augmented_digits = _task(
    "mlp_augmented_digits",
    _mlp,
    _augmented_digits,
    "MLP on scikit-learn's 8x8 digits, each drawn image randomly distorted (never the same "
    "example twice).",
)
cnn_augmented_digits = _task(
    "cnn_augmented_digits",
    _cnn,
    _augmented_digits,
    "CNN on scikit-learn's digits as 8x8x1 images, each drawn image randomly distorted.",
)
mlp_digits = _task(
    "mlp_digits",
    _mlp,
    _digits,
    "MLP on scikit-learn's 8x8 digits (64 inputs, ``depth`` hidden layers of ``width``).",
)
cnn_digits = _task("cnn_digits", _cnn, _digits, "CNN on scikit-learn's digits as 8x8x1 images.")
mlp_augmented_letters = _task(
    "mlp_augmented_letters",
    _mlp,
    _augmented_letters,
    "MLP on 8x8 glyphs of the letters A..J from matplotlib's fonts (300 / 60 / 80 base images "
    "of 15 / 3 / 4 fonts), each drawn image randomly distorted: a held-out data source for "
    "optimizers meta-trained on the digits.",
)
cnn_augmented_letters = _task(
    "cnn_augmented_letters",
    _cnn,
    _augmented_letters,
    "CNN on the letters A..J as 8x8x1 glyphs from matplotlib's fonts, each drawn image "
    "randomly distorted: a held-out data source for optimizers meta-trained on the digits.",
)
rnn_text = _task(
    "rnn_text", _rnn, _pydoc, "Byte-level identity-initialised RNN LM on CPython's pydoc topics."
)
transformer_text = _task(
    "transformer_text",
    _transformer,
    _pydoc,
    "Byte-level pre-LayerNorm transformer LM on CPython's pydoc topics.",
)

# -- real data (tensorflow-datasets) ----------------------------------------------------
mlp_fashion_mnist = _task(
    "mlp_fashion_mnist",
    _mlp,
    _fashion_mnist,
    "MLP on FashionMNIST area-resized to ``image_size`` squared (the paper: 8x8).",
)
cnn_cifar10 = _task(
    "cnn_cifar10",
    _cnn,
    _cifar10,
    "CNN on CIFAR-10 average-pooled to ``image_size`` squared (the paper: 16x16x3).",
)
rnn_lm1b = _task(
    "rnn_lm1b",
    _rnn,
    _lm1b,
    "Byte-level IRNN LM on LM1B (the first ``max_train_bytes`` of its training text).",
)
transformer_lm1b = _task(
    "transformer_lm1b", _transformer, _lm1b, "Byte-level pre-LayerNorm transformer LM on LM1B."
)


_REGISTRY: dict[str, TaskFactory] = {
    "mlp_augmented_digits": mlp_augmented_digits,
    "cnn_augmented_digits": cnn_augmented_digits,
    "mlp_digits": mlp_digits,
    "cnn_digits": cnn_digits,
    "mlp_augmented_letters": mlp_augmented_letters,
    "cnn_augmented_letters": cnn_augmented_letters,
    "rnn_text": rnn_text,
    "transformer_text": transformer_text,
    "mlp_fashion_mnist": mlp_fashion_mnist,
    "cnn_cifar10": cnn_cifar10,
    "rnn_lm1b": rnn_lm1b,
    "transformer_lm1b": transformer_lm1b,
}

EMBEDDED_TASKS = (
    "mlp_augmented_digits",
    "cnn_augmented_digits",
    "mlp_digits",
    "cnn_digits",
    "mlp_augmented_letters",
    "cnn_augmented_letters",
    "rnn_text",
    "transformer_text",
)


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


def get_task(name: str, param_scale: float | None = 1.0, **options) -> Task:
    """Builds the task ``name`` with size ``options`` (keyword arguments of its factory),
    reparametrised by ``param_scale`` (:func:`~lopt.tasks.with_param_scale`; every task;
    ``None``, as a config's ``param_scale: null`` reads, is no reparametrisation).

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
    task = factory(**options)
    return task if param_scale in (None, 1.0) else with_param_scale(task, param_scale)
