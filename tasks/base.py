"""The ``Task`` interface: a model, its permutation spec, its data and its loss.

A task draws its batches *inside* jit from data held as device arrays: ``batch(key)``
turns a PRNG key into random example indices (images) or random window offsets (text),
so a vmapped population of inner runs gets independent data streams without host
round-trips, and a batch is a pure function of its key (reproducible, resumable).

Data and compilation: a jitted function that *closes over* a task embeds the task's data
arrays in the compiled program as constants. That is free for the embedded datasets
(< 1 MB) but not for real ones: closing over 64 MB of tokens added ~1.5 s per compile on
CPU here, and keeps a second copy of the data in the executable
(``scripts/bench_tasks.py`` measures it). ``Task`` is therefore a pytree whose only
leaves are its data arrays: pass the task as an *argument* of ``jax.jit`` (with
``in_axes=None`` under ``vmap``) and the data stay runtime buffers::

    @jax.jit
    def step(task, params, key):
        return jax.grad(task.loss)(params, task.batch(key))

The other fields are static (hashed by the task's identity), so re-using one task object
never re-compiles.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lopt.nf import spec as nfspec
from lopt.nf.derive import derive_spec

PyTree = Any
Batch = dict[str, jax.Array]
SplitData = Mapping[str, jax.Array]
Sampler = Callable[[SplitData, jax.Array, int], Batch]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
MetricsFn = Callable[[jax.Array, jax.Array], dict[str, jax.Array]]

SPLITS = ("train", "valid", "test")
"""Every task's splits, of distinct examples: inner training draws from ``train``, meta-training's
held-out objective and meta-validation from ``valid``, the evaluation's held-out metrics from
``test``."""


class _StaticFields:
    """The non-data fields of a task; compared by identity as pytree aux data."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A training problem for an inner optimizer.

    Attributes:
        name: registry name, e.g. ``"mlp_digits"``.
        model: the flax module; ``model.apply({"params": p}, inputs)`` gives logits.
        spec: permutation spec of the params (derived by :func:`derive_spec`).
        data: ``{"train": split, "valid": split, "test": split}`` (:data:`SPLITS`), each a
            dict of device arrays (``images``/``labels`` or ``tokens``). The only pytree
            leaves of a task.
        sampler: ``sampler(split, key, batch_size) -> {"inputs", "targets"}``; pure.
        loss_fn: ``loss_fn(logits, targets) -> scalar`` mean negative log-likelihood.
        metrics_fn: ``metrics_fn(logits, targets) -> {name: scalar}``.
        example_inputs: a one-example input batch (shape and dtype for ``init``).
        batch_size: examples (sequences) per batch.
        config: JSON-serialisable description (name and size options) for logging.
        param_scale: a reparametrisation: the params held (and trained) are the model's
            divided by it, so the same function has params ``param_scale`` times smaller and
            gradients ``param_scale`` times larger (:func:`with_param_scale`; 1: none).
    """

    name: str
    model: nn.Module
    spec: nfspec.Spec
    data: Mapping[str, SplitData]
    sampler: Sampler
    loss_fn: LossFn
    metrics_fn: MetricsFn
    example_inputs: jax.ShapeDtypeStruct
    batch_size: int
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    param_scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        scale = self.param_scale
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not 0 < scale < math.inf
        ):
            raise ValueError(f"param_scale must be a positive finite number, got {scale!r}")
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.pop("data")
        object.__setattr__(self, "_static", _StaticFields(fields))

    # -- pytree -------------------------------------------------------------------------
    def tree_flatten(self) -> tuple[tuple[Any], _StaticFields]:
        return (self.data,), self._static

    @classmethod
    def tree_unflatten(cls, static: _StaticFields, children: tuple[Any]) -> Task:
        task = object.__new__(cls)
        for name, value in static.fields.items():
            object.__setattr__(task, name, value)
        object.__setattr__(task, "data", children[0])
        object.__setattr__(task, "_static", static)
        return task

    # -- the interface ----------------------------------------------------------------
    def init(self, key: jax.Array) -> PyTree:
        """Samples initial params (the flax ``"params"`` collection) from ``key``."""
        inputs = jnp.zeros(self.example_inputs.shape, self.example_inputs.dtype)
        params = self.model.init(key, inputs)["params"]
        if self.param_scale == 1.0:
            return params
        return jax.tree_util.tree_map(lambda p: p / self.param_scale, params)

    def apply(self, params: PyTree, inputs: jax.Array) -> jax.Array:
        """Logits of the model: ``(B, classes)`` or ``(B, T, vocab)``."""
        if self.param_scale != 1.0:
            params = jax.tree_util.tree_map(lambda p: p * self.param_scale, params)
        return self.model.apply({"params": params}, inputs)

    def loss(self, params: PyTree, batch: Batch) -> jax.Array:
        """Mean negative log-likelihood of the batch's targets (nats), a scalar."""
        return self.loss_fn(self.apply(params, batch["inputs"]), batch["targets"])

    def metrics(self, params: PyTree, batch: Batch) -> dict[str, jax.Array]:
        """``{"loss", "accuracy"}`` for classifiers, ``{"loss", "perplexity",
        "bits_per_byte"}`` for language models; scalars."""
        return self.metrics_fn(self.apply(params, batch["inputs"]), batch["targets"])

    def batch(self, key: jax.Array, split: str = "train") -> Batch:
        """Draws a random batch from ``split`` (one of :data:`SPLITS`); jit/vmap-safe.

        Returns:
            ``{"inputs": ..., "targets": ...}``: images ``(B, ...)`` float32 in [0, 1] with
            int32 labels ``(B,)``, or int32 tokens ``(B, T)`` with next tokens ``(B, T)``.
        """
        if split not in self.data:
            raise ValueError(f"unknown split {split!r}; task {self.name} has {list(self.data)}")
        return self.sampler(self.data[split], key, self.batch_size)

    @property
    def num_classes(self) -> int:
        """Number of classes (tokens) the model scores: the last axis of its logits."""
        params = jax.eval_shape(self.init, jax.random.key(0))
        logits = jax.eval_shape(self.apply, params, self.example_inputs)
        return int(logits.shape[-1])

    @property
    def chance_loss(self) -> float:
        """The loss of a uniform prediction, ``ln(num_classes)`` nats: where training starts,
        and the unit of divergence bounds (:class:`lopt.meta.MetaObjective`)."""
        return math.log(self.num_classes)

    def split_size(self, split: str = "train") -> int:
        """Number of examples (images) or tokens (text) held for ``split``."""
        return int(next(iter(jax.tree_util.tree_leaves(self.data[split]))).shape[0])

    def __repr__(self) -> str:
        return f"Task({self.name!r}, batch_size={self.batch_size}, config={dict(self.config)})"


def with_param_scale(task: Task, scale: float) -> Task:
    """``task`` reparametrised by ``scale`` (its ``param_scale`` set to it): params ``scale``
    times smaller, gradients ``scale`` times larger, the same function and data (the scale in
    its config unless 1). A task family of
    scales (``task_family=[{param_scale: 100}, ...]``) asks a learned optimizer for the scale
    invariance Adam has and SGD lacks.

    Raises:
        ValueError: a scale that is not a positive finite number.
    """
    config = dict(task.config)
    if scale == 1.0:
        config.pop("param_scale", None)
    else:
        config["param_scale"] = float(scale)
    return dataclasses.replace(task, param_scale=scale, config=config)


def classification_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def classification_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Loss and accuracy of a classifier."""
    return {
        "loss": classification_loss(logits, labels),
        "accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == labels),
    }


def language_model_metrics(logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    """Loss (nats per token), perplexity and bits per byte (= per token for byte LMs)."""
    loss = classification_loss(logits, targets)
    return {"loss": loss, "perplexity": jnp.exp(loss), "bits_per_byte": loss / jnp.log(2.0)}


class ImageAugmentation(NamedTuple):
    """Random distortions drawn afresh for every image of every batch (all splits alike, so
    training and held-out images come from one distribution).

    Each image is resampled (bilinear, zero outside) through a random affine map about its
    centre, then Gaussian pixel noise is added and the result clipped to [0, 1].

    Attributes:
        rotation: largest rotation, degrees (uniform in ``[-rotation, rotation]``).
        scale: largest relative zoom (factor uniform in ``[1 - scale, 1 + scale]``, per axis).
        shear: largest shear factor (uniform in ``[-shear, shear]``).
        translation: largest shift in pixels (uniform per axis).
        noise: standard deviation of the additive pixel noise (pixels in [0, 1]).
    """

    rotation: float = 15.0
    scale: float = 0.1
    shear: float = 0.15
    translation: float = 1.0
    noise: float = 0.1

    def check(self) -> None:
        """Raises a ValueError naming the first option outside its range."""
        for name, value in self._asdict().items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"augmentation {name} must be a finite number >= 0, got {value!r}")
        if self.scale >= 1:
            raise ValueError(
                f"augmentation scale must be < 1 (zoom factors 1 ± scale), got {self.scale}"
            )


def _affine_maps(key: jax.Array, count: int, augmentation: ImageAugmentation) -> jax.Array:
    """``(count, 2, 3)`` maps from an output pixel's centred (row, column) to the input's."""
    keys = jax.random.split(key, 4)
    uniform = lambda k, shape, bound: jax.random.uniform(k, shape, minval=-bound, maxval=bound)
    angle = uniform(keys[0], (count,), math.radians(augmentation.rotation))
    zoom = 1.0 + uniform(keys[1], (count, 2), augmentation.scale)
    shear = uniform(keys[2], (count,), augmentation.shear)
    shift = uniform(keys[3], (count, 2), augmentation.translation)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    rotate = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
    ones, zeros = jnp.ones_like(shear), jnp.zeros_like(shear)
    skew = jnp.stack([jnp.stack([ones, shear], -1), jnp.stack([zeros, ones], -1)], -2)
    linear = rotate @ skew / zoom[:, None, :]
    return jnp.concatenate([linear, shift[..., None]], axis=-1)


def _resample(image: jax.Array, affine: jax.Array) -> jax.Array:
    """Bilinear resampling of one ``(H, W, C)`` image through a ``(2, 3)`` affine map.

    Pixels outside the image are zero. Bilinear interpolation weighs pixel ``(y, x)`` by
    ``max(0, 1 - |y - r|) * max(0, 1 - |x - c|)`` for a source point ``(r, c)``, so each
    output pixel is a product of two small dense weight matrices with the image: no
    gathers, which XLA runs far slower than these products on CPU.
    """
    height, width, channels = image.shape
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2])
    grid = jnp.stack(jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij"), -1)
    points = grid.reshape(-1, 2) - centre
    source = points @ affine[:, :2].T + affine[:, 2] + centre  # (H*W, 2)
    rows = jnp.maximum(0.0, 1.0 - jnp.abs(source[:, :1] - jnp.arange(height)))  # (H*W, H)
    cols = jnp.maximum(0.0, 1.0 - jnp.abs(source[:, 1:] - jnp.arange(width)))  # (H*W, W)
    across = jnp.einsum("ox,yxc->oyc", cols, image)
    return jnp.einsum("oy,oyc->oc", rows, across).reshape(height, width, channels)


def warp_images(images: jax.Array, maps: jax.Array) -> jax.Array:
    """Resamples ``(B, H, W, C)`` images bilinearly, zero outside, through ``(B, 2, 3)`` maps.

    Map ``b`` takes an output pixel's (row, column), centred on the image's centre, to the
    source point ``maps[b, :, :2] @ point + maps[b, :, 2]`` (centred likewise).
    """
    return jax.vmap(_resample)(images, maps)


def augment_images(images: jax.Array, key: jax.Array, augmentation: ImageAugmentation) -> jax.Array:
    """Applies :class:`ImageAugmentation` to ``(B, H, W, C)`` images in [0, 1]; jit/vmap-safe."""
    affine_key, noise_key = jax.random.split(key)
    warped = warp_images(images, _affine_maps(affine_key, images.shape[0], augmentation))
    noisy = warped + augmentation.noise * jax.random.normal(noise_key, warped.shape)
    return jnp.clip(noisy, 0.0, 1.0)


def image_sampler(
    scale: float, flatten: bool, augmentation: ImageAugmentation | None = None
) -> Sampler:
    """Sampler of ``{"images": uint8 (N, H, W, C), "labels": (N,)}`` splits.

    Draws ``batch_size`` example indices uniformly with replacement; images are scaled by
    ``scale`` to [0, 1], distorted by ``augmentation`` if given (:func:`augment_images`),
    and flattened to ``(B, H*W*C)`` if ``flatten``.
    """

    def sample(split: SplitData, key: jax.Array, batch_size: int) -> Batch:
        count = split["labels"].shape[0]
        index_key, augment_key = jax.random.split(key)
        index = jax.random.randint(index_key if augmentation else key, (batch_size,), 0, count)
        images = split["images"][index].astype(jnp.float32) * scale
        if augmentation is not None:
            images = augment_images(images, augment_key, augmentation)
        if flatten:
            images = images.reshape(batch_size, -1)
        return {"inputs": images, "targets": split["labels"][index].astype(jnp.int32)}

    return sample


def text_sampler(seq_len: int) -> Sampler:
    """Sampler of ``{"tokens": uint8 (N,)}`` byte streams.

    Draws ``batch_size`` window offsets uniformly; inputs are ``seq_len`` bytes and targets
    the same window shifted by one byte.
    """

    def sample(split: SplitData, key: jax.Array, batch_size: int) -> Batch:
        tokens = split["tokens"]
        if tokens.shape[0] <= seq_len:
            raise ValueError(
                f"a split of {tokens.shape[0]} tokens is too short for seq_len {seq_len}"
            )
        starts = jax.random.randint(key, (batch_size,), 0, tokens.shape[0] - seq_len)
        window = jax.vmap(lambda s: jax.lax.dynamic_slice(tokens, (s,), (seq_len + 1,)))(starts)
        window = window.astype(jnp.int32)
        return {"inputs": window[:, :-1], "targets": window[:, 1:]}

    return sample


def make_task(
    *,
    name: str,
    model: nn.Module,
    data: Mapping[str, Mapping[str, Any]],
    sampler: Sampler,
    loss_fn: LossFn,
    metrics_fn: MetricsFn,
    batch_size: int,
    config: Mapping[str, Any] | None = None,
) -> Task:
    """Builds a :class:`Task`, moving ``data`` to the device and deriving the spec.

    Args:
        name: task name.
        model: flax module mapping the sampler's ``inputs`` to logits.
        data: ``{"train": ..., "test": ...}`` dicts of numpy or jax arrays.
        sampler: see :class:`Task`.
        loss_fn: see :class:`Task`.
        metrics_fn: see :class:`Task`.
        batch_size: examples per batch.
        config: JSON-serialisable options recorded on the task.

    Returns:
        The task, with ``spec`` derived from the model's computation.
    """
    missing = [split for split in SPLITS if split not in data]
    if missing:
        raise ValueError(f"task {name}: data lacks splits {missing}; it needs {list(SPLITS)}")
    device_data = jax.tree_util.tree_map(jnp.asarray, dict(data))
    # Two examples, so no axis of the traced computation is a size-one batch axis.
    example = jax.eval_shape(
        lambda split: sampler(split, jax.random.key(0), 2), device_data["train"]
    )["inputs"]
    params = jax.eval_shape(
        lambda key: model.init(key, jnp.zeros(example.shape, example.dtype))["params"],
        jax.random.key(0),
    )
    spec = derive_spec(lambda p, x: model.apply({"params": p}, x), params, example)
    one_example = jax.ShapeDtypeStruct((1, *example.shape[1:]), example.dtype)
    return Task(
        name=name,
        model=model,
        spec=spec,
        data=device_data,
        sampler=sampler,
        loss_fn=loss_fn,
        metrics_fn=metrics_fn,
        example_inputs=one_example,
        batch_size=batch_size,
        config=dict(config or {}, name=name),
    )
