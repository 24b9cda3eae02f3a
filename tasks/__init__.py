"""Inner tasks: flax models, data drawn inside jit, and derived permutation specs.

>>> task = get_task("mlp_augmented_digits")
>>> params = task.init(jax.random.key(0))
>>> loss = task.loss(params, task.batch(jax.random.key(1)))
"""

from lopt.nf.derive import derive_spec

from .base import (
    ImageAugmentation,
    Task,
    augment_images,
    classification_loss,
    classification_metrics,
    image_sampler,
    language_model_metrics,
    make_task,
    text_sampler,
    warp_images,
    with_param_scale,
)
from .data import DatasetNotPreparedError, area_resize, prepare_instructions
from .models import CNN, MLP, RNNLM, TransformerBlock, TransformerLM, identity_init
from .registry import (
    EMBEDDED_TASKS,
    cnn_augmented_digits,
    cnn_augmented_letters,
    cnn_cifar10,
    cnn_digits,
    get_task,
    mlp_augmented_digits,
    mlp_augmented_letters,
    mlp_digits,
    mlp_fashion_mnist,
    register_task,
    rnn_lm1b,
    rnn_text,
    task_factory,
    task_names,
    transformer_lm1b,
    transformer_text,
)
from .symmetry import SymmetryError, SymmetryReport, check_symmetry

__all__ = [
    "CNN",
    "EMBEDDED_TASKS",
    "MLP",
    "RNNLM",
    "DatasetNotPreparedError",
    "ImageAugmentation",
    "SymmetryError",
    "SymmetryReport",
    "Task",
    "TransformerBlock",
    "TransformerLM",
    "area_resize",
    "augment_images",
    "check_symmetry",
    "classification_loss",
    "classification_metrics",
    "cnn_augmented_digits",
    "cnn_augmented_letters",
    "cnn_cifar10",
    "cnn_digits",
    "derive_spec",
    "get_task",
    "identity_init",
    "image_sampler",
    "language_model_metrics",
    "make_task",
    "mlp_augmented_digits",
    "mlp_augmented_letters",
    "mlp_digits",
    "mlp_fashion_mnist",
    "prepare_instructions",
    "register_task",
    "rnn_lm1b",
    "rnn_text",
    "task_factory",
    "task_names",
    "text_sampler",
    "transformer_lm1b",
    "transformer_text",
    "warp_images",
    "with_param_scale",
]
