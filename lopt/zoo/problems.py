"""The zoos' training problems: a model, its data, per-example losses and test metrics.

* ``rnn_addition``: a GRU reads a character-level addition problem
  (:mod:`lopt.zoo.arithmetic`) and a linear readout predicts the answer digits; its test
  metrics are the per-digit accuracy and the success rate (every digit right).
* ``cnn_digits``: :class:`lopt.tasks.CNN` (3x3 convs, global average pool, linear) on the
  embedded 8x8 digits, the NFN paper's small CNN zoo in miniature.

Each problem carries the permutation spec derived from its model's computation
(:func:`lopt.tasks.derive_spec`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import lopt.tasks
from lopt.zoo import arithmetic

PyTree = Any


class _Recurrent(nn.Module):
    """A recurrent kernel ``(size, size)`` and optional bias, read out for use in a scan.

    Attributes:
        size: the state width.
        use_bias: whether a ``(size,)`` bias (zeros at init) comes with the kernel.
    """

    size: int
    use_bias: bool = False

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        """The kernel and the bias (zeros, and no param, without ``use_bias``)."""
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (self.size, self.size))
        if not self.use_bias:
            return kernel, jnp.zeros((self.size,), kernel.dtype)
        return kernel, self.param("bias", nn.initializers.zeros, (self.size,))


class GRU(nn.Module):
    """A GRU layer written out: input projections for all steps at once, then ``lax.scan``.

    ``r = σ(x W_ir + b_ir + h W_hr)``, ``z = σ(x W_iz + b_iz + h W_hz)``,
    ``n = tanh(x W_in + b_in + r (h W_hn + b_hn))``, ``h' = (1 - z) n + z h``, from ``h = 0``;
    params nest as flax's ``GRUCell`` (``ir``, ``iz``, ``in`` with biases, ``hr``, ``hz``
    without, ``hn`` with). Every kernel is Lecun-normal: flax's orthogonal recurrent init
    runs a LAPACK QR, and vmapped over networks on a CPU with few cores that batched QR
    deadlocks XLA's thread pool (its batch split waits for pool threads it occupies).

    Attributes:
        hidden_size: width of the state.
    """

    hidden_size: int

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Maps ``(B, T, F)`` inputs to the ``(B, T, hidden_size)`` states."""
        size = self.hidden_size
        # the input side has no recurrence: one matmul per gate over every step
        x_r, x_z, x_n = (nn.Dense(size, name=name)(inputs) for name in ("ir", "iz", "in"))
        (w_r, _), (w_z, _) = (_Recurrent(size, name=name)() for name in ("hr", "hz"))
        w_n, b_n = _Recurrent(size, use_bias=True, name="hn")()

        def step(state: jax.Array, x: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
            x_r, x_z, x_n = x
            reset = jax.nn.sigmoid(x_r + state @ w_r)
            update = jax.nn.sigmoid(x_z + state @ w_z)
            candidate = jnp.tanh(x_n + reset * (state @ w_n + b_n))
            state = (1.0 - update) * candidate + update * state
            return state, state

        time_major = tuple(jnp.swapaxes(x, 0, 1) for x in (x_r, x_z, x_n))
        initial = jnp.zeros((inputs.shape[0], size), inputs.dtype)
        _, states = jax.lax.scan(step, initial, time_major)
        return jnp.swapaxes(states, 0, 1)


class GRUAdder(nn.Module):
    """A GRU over one-hot tokens with a linear readout of the last ``answer_length`` states.

    Attributes:
        hidden_size: width of the GRU state.
        answer_length: how many final positions are read out.
        num_classes: logits per read-out position.
    """

    hidden_size: int
    answer_length: int
    num_classes: int = arithmetic.ANSWER_CLASSES

    @nn.compact
    def __call__(self, one_hot_tokens: jax.Array) -> jax.Array:
        """Maps ``(B, T, vocab)`` one-hot tokens to ``(B, answer_length, classes)`` logits."""
        states = GRU(self.hidden_size, name="gru")(one_hot_tokens)
        return nn.Dense(self.num_classes, name="readout")(states[:, -self.answer_length :])


class ZooProblem(NamedTuple):
    """One network family and its data, as pure functions over params.

    Attributes:
        name: the problem's registered name.
        init: ``init(key) -> params``.
        apply: ``apply(params, inputs) -> logits``.
        example_losses: ``example_losses(params, inputs, targets) -> (B,)`` training losses.
        test_metrics: ``test_metrics(params, inputs, targets) -> {name: scalar}``.
        train_inputs: the training split's inputs, leading axis the examples.
        train_targets: the training split's targets.
        test_inputs: the test split's inputs.
        test_targets: the test split's targets.
        spec: the derived permutation spec of the params.
        options: the options the problem was made with (recorded in the zoo's manifest).
    """

    name: str
    init: Callable[[jax.Array], PyTree]
    apply: Callable[[PyTree, jax.Array], jax.Array]
    example_losses: Callable[[PyTree, jax.Array, jax.Array], jax.Array]
    test_metrics: Callable[[PyTree, jax.Array, jax.Array], dict[str, jax.Array]]
    train_inputs: jax.Array
    train_targets: jax.Array
    test_inputs: jax.Array
    test_targets: jax.Array
    spec: PyTree
    options: dict[str, Any]


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-position cross-entropy, ``logits (..., C)`` against integer ``labels (...)``."""
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def _finish(name, model, example, apply, train, test, options, metrics_fn) -> ZooProblem:
    """Initialiser, derived spec and the shared loss around ``apply``.

    The spec is derived from ``model`` on ``example``, the input the model itself reads.
    """
    init = lambda key: model.init(key, example)["params"]
    params = jax.eval_shape(init, jax.random.key(0))
    model_apply = lambda params, inputs: model.apply({"params": params}, inputs)
    spec = lopt.tasks.derive_spec(model_apply, params, jnp.asarray(example))

    def example_losses(params: PyTree, inputs: jax.Array, targets: jax.Array) -> jax.Array:
        losses = _cross_entropy(apply(params, inputs), targets)
        return losses.reshape(losses.shape[0], -1).mean(axis=1)

    def test_metrics(params: PyTree, inputs: jax.Array, targets: jax.Array) -> dict:
        return metrics_fn(apply(params, inputs), targets)

    return ZooProblem(
        name=name,
        init=init,
        apply=apply,
        example_losses=example_losses,
        test_metrics=test_metrics,
        train_inputs=jnp.asarray(train[0]),
        train_targets=jnp.asarray(train[1]),
        test_inputs=jnp.asarray(test[0]),
        test_targets=jnp.asarray(test[1]),
        spec=spec,
        options=options,
    )


def rnn_addition(hidden_size: int = 32, digits: int = 2) -> ZooProblem:
    """A GRU adder on ``digits``-digit addition (see :mod:`lopt.zoo.arithmetic`).

    The GRU reads one-hot tokens, so its spec is derived on them: the vocabulary axis of the
    three input kernels is one ``ByChoice`` id, as the answer classes of the readout are
    (the token-id rule of :func:`lopt.tasks.derive_spec` would give the same for an
    embedding lookup).
    """
    data = arithmetic.addition_problems(digits)
    model = GRUAdder(hidden_size, answer_length=digits + 1)
    apply = lambda params, tokens: model.apply(
        {"params": params}, jax.nn.one_hot(tokens, arithmetic.VOCAB_SIZE)
    )
    example = jax.nn.one_hot(data["train"]["inputs"][:1], arithmetic.VOCAB_SIZE)

    def metrics(logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
        correct = jnp.argmax(logits, axis=-1) == targets
        return {
            "test_accuracy": jnp.mean(correct),
            "test_success": jnp.mean(jnp.all(correct, axis=-1)),
            "test_loss": jnp.mean(_cross_entropy(logits, targets)),
        }

    split = lambda name: (data[name]["inputs"], data[name]["targets"])
    options = {"hidden_size": hidden_size, "digits": digits}
    return _finish(
        "rnn_addition", model, example, apply, split("train"), split("test"), options, metrics
    )


def cnn_digits(channels: Sequence[int] = (8, 8)) -> ZooProblem:
    """:class:`lopt.tasks.CNN` with ``channels`` on the embedded 8x8 digits (scaled to [0, 1]).

    The zoo's networks train on the digits' ``train`` split and are scored on all 359 held-out
    images (the ``test`` then the ``valid`` split): a zoo's target is a property of each
    network, not a model selection."""
    if not channels:
        raise ValueError("cnn_digits needs at least one conv layer")
    images = lopt.tasks.data.digits_images()
    model = lopt.tasks.CNN(tuple(channels), num_classes=10)
    apply = lambda params, x: model.apply({"params": params}, x)
    scaled = lambda split: (split["images"].astype(np.float32) / 16.0, split["labels"])
    held_out = {
        key: np.concatenate([images["test"][key], images["valid"][key]])
        for key in ("images", "labels")
    }

    def metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
        return {
            "test_accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == labels),
            "test_loss": jnp.mean(_cross_entropy(logits, labels)),
        }

    train = scaled(images["train"])
    options = {"channels": list(channels)}
    return _finish(
        "cnn_digits", model, train[0][:1], apply, train, scaled(held_out), options, metrics
    )


PROBLEMS: dict[str, Callable[..., ZooProblem]] = {
    "rnn_addition": rnn_addition,
    "cnn_digits": cnn_digits,
}


def make_problem(name: str, **options: Any) -> ZooProblem:
    """The registered problem ``name`` built with ``options``."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown zoo problem {name!r}; expected one of {sorted(PROBLEMS)}")
    return PROBLEMS[name](**options)
