"""Benchmark: what a learned optimizer costs at a user's scale, next to Adam and SGD momentum.

For three user-sized flax models on random data (generated once, outside the timed code)

* ``mlp``: 784-1024-1024-10 (1.86 M params), batch 128;
* ``cnn``: 3x3 convs 32-64-64 with 2x2 max pooling, global mean, dense to 10, on 32x32x3
  images, batch 64;
* ``transformer``: byte-level LM, d_model 256, 4 pre-LayerNorm blocks of 4 heads, MLP 4x,
  context 128, batch 16, vocabulary 256;

and every optimizer it is given (optax Adam, optax SGD with momentum 0.9, the learned rules
built with ``lopt.make_optimizer`` and ``lopt.as_optax`` with the random ``theta`` of
``init_meta``, which costs what a trained one does), it times

* the full training step (loss, gradient, optimizer update, apply) as one jitted function
  with params and optimizer state donated, the way a user's loop runs it;
* the optimizer alone: update and apply on a fixed gradient, jitted on its own with the same
  donation;

in alternating blocks of calls (:func:`lopt.bench.timing.measure`), together with a square
float32 matmul and a ``x * 2.0`` copy whose rates are the machine's references. Per model it
prints a markdown table: the median step and update times, the update's share of the step,
the step's ratio to Adam's, the update's FLOPs (XLA's cost analysis) and achieved GFLOP/s
against the matmul rate, its bytes (XLA's bytes-accessed estimate, and the minimum: one read
of params, gradient and state, one write of params and state) and achieved bandwidth on the
minimum against the copy bandwidth, the optimizer state's size and the update's temporaries.

An optimizer is a name with optional ``key=value`` options for its factory (``optax.adam`` /
``optax.sgd`` for ``adam`` / ``sgdm``, :func:`lopt.make_optimizer` for the learned ones), so a
cheaper variant needs no code change::

    python scripts/bench_scale.py                                   # every model, default set
    python scripts/bench_scale.py --models mlp --optimizers adam unf unf:hidden=16,depth=1
    python scripts/bench_scale.py --optimizers adam deepsets:time=none unf:base=adam
    python scripts/bench_scale.py --quick                           # smoke run: small, 5 calls
    python scripts/bench_scale.py --repeats 40 --json bench_scale.json

``--json`` writes every number and the environment (jax version, platform, device kind,
CPU count, source commit).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt
import lopt.learned
from lopt.bench.timing import (
    REUSE_FREED_MEMORY,
    jax_platform,
    measure,
    parse_timing_args,
    xla_gbytes,
    xla_gflop,
)
from lopt.nf import spec as nfspec
from lopt.provenance import environment as provenance_environment

PyTree = Any

MODELS = ("mlp", "cnn", "transformer")
DEFAULT_OPTIMIZERS = ("adam", "sgdm", "unf", "deepsets", "nfn")
REFERENCE = "(reference)"
"""The candidate holding the matmul and copy references (no optimizer can have this label)."""
BASELINE = "adam"
"""The label whose full step the ratios divide by."""
DEFAULT_REPEATS, QUICK_REPEATS = 20, 5


# --------------------------------------------------------------------------- the models


class MLP(nn.Module):
    """Dense layers with ReLU between them.

    Attributes:
        widths: output width of every layer; the last is the number of classes.
    """

    widths: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps ``(B, features)`` to ``(B, widths[-1])`` logits."""
        for width in self.widths[:-1]:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.widths[-1])(x)


class CNN(nn.Module):
    """3x3 convs with ReLU and 2x2 max pooling between them, global mean, dense classifier.

    Attributes:
        channels: output channels of every conv.
        classes: number of logits.
    """

    channels: Sequence[int]
    classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps ``(B, H, W, C)`` images to ``(B, classes)`` logits."""
        for index, channels in enumerate(self.channels):
            x = nn.relu(nn.Conv(channels, (3, 3))(x))
            if index < len(self.channels) - 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(self.classes)(jnp.mean(x, axis=(1, 2)))


class Block(nn.Module):
    """Pre-LayerNorm decoder block: ``x + attention(ln(x))``, then ``x + mlp(ln(x))``.

    Attributes:
        heads: attention heads.
        mlp_width: hidden width of the MLP.
    """

    heads: int
    mlp_width: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """Maps the ``(B, T, d)`` residual stream to the next, with a causal ``mask``."""
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(self.heads)(h, mask=mask)
        h = nn.gelu(nn.Dense(self.mlp_width)(nn.LayerNorm()(x)))
        return x + nn.Dense(x.shape[-1])(h)


class ByteLM(nn.Module):
    """Decoder-only transformer over bytes with learned positional embeddings.

    Attributes:
        width: d_model.
        depth: number of blocks.
        heads: attention heads per block.
        context: longest sequence (number of positional embeddings).
        vocab: number of token ids.
    """

    width: int
    depth: int
    heads: int
    context: int
    vocab: int = 256

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Maps ``(B, T)`` token ids to ``(B, T, vocab)`` next-token logits."""
        positions = self.param(
            "positions", nn.initializers.normal(0.02), (self.context, self.width)
        )
        x = nn.Embed(self.vocab, self.width)(tokens) + positions[: tokens.shape[-1]]
        mask = nn.make_causal_mask(tokens)
        for _ in range(self.depth):
            x = Block(self.heads, 4 * self.width)(x, mask)
        return nn.Dense(self.vocab)(nn.LayerNorm()(x))


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model with one fixed random batch.

    Attributes:
        name: the model's name in the tables.
        module: the flax module; ``module.apply({"params": p}, batch["x"])`` gives logits.
        batch: ``{"x": inputs, "y": integer labels}`` (one label per row of logits).
        description: the sizes, in words.
    """

    name: str
    module: nn.Module
    batch: dict[str, jax.Array]
    description: str


def mlp_workload(key: jax.Array, quick: bool = False) -> Workload:
    """The MLP 784-1024-1024-10 on a batch of 128 (784-128-128-10, 32 when ``quick``)."""
    hidden, batch = (128, 32) if quick else (1024, 128)
    kx, ky = jax.random.split(key)
    data = {
        "x": jax.random.normal(kx, (batch, 784)),
        "y": jax.random.randint(ky, (batch,), 0, 10),
    }
    return Workload(
        "mlp", MLP((hidden, hidden, 10)), data, f"784-{hidden}-{hidden}-10, batch {batch}"
    )


def cnn_workload(key: jax.Array, quick: bool = False) -> Workload:
    """The CNN 32-64-64 on 32x32x3 images, batch 64 (8-16-16 on 16x16, batch 8 when quick)."""
    channels, side, batch = ((8, 16, 16), 16, 8) if quick else ((32, 64, 64), 32, 64)
    kx, ky = jax.random.split(key)
    data = {
        "x": jax.random.normal(kx, (batch, side, side, 3)),
        "y": jax.random.randint(ky, (batch,), 0, 10),
    }
    widths = "-".join(map(str, channels))
    description = f"3x3 convs {widths}, {side}x{side}x3 images, batch {batch}"
    return Workload("cnn", CNN(channels), data, description)


def transformer_workload(key: jax.Array, quick: bool = False) -> Workload:
    """The byte LM: d 256, 4 blocks, 4 heads, context 128, batch 16 (64, 1, 2, 32, 4 when quick)."""
    width, depth, heads, context, batch = (64, 1, 2, 32, 4) if quick else (256, 4, 4, 128, 16)
    kx, ky = jax.random.split(key)
    data = {
        "x": jax.random.randint(kx, (batch, context), 0, 256),
        "y": jax.random.randint(ky, (batch, context), 0, 256),
    }
    description = (
        f"d_model {width}, {depth} blocks, {heads} heads, MLP {4 * width}, "
        f"context {context}, batch {batch}, vocab 256"
    )
    return Workload("transformer", ByteLM(width, depth, heads, context), data, description)


WORKLOADS: dict[str, Callable[[jax.Array, bool], Workload]] = {
    "mlp": mlp_workload,
    "cnn": cnn_workload,
    "transformer": transformer_workload,
}


def loss_fn(module: nn.Module, params: PyTree, batch: dict[str, jax.Array]) -> jax.Array:
    """Mean softmax cross-entropy of the model's logits against the batch's labels."""
    logits = module.apply({"params": params}, batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def init_model(workload: Workload, key: jax.Array) -> tuple[PyTree, Any]:
    """The model's params and their permutation spec, derived by :func:`lopt.derive_spec`."""
    inputs = workload.batch["x"]
    params = jax.jit(workload.module.init)(key, inputs)["params"]
    spec = lopt.derive_spec(lambda p, x: workload.module.apply({"params": p}, x), params, inputs)
    return params, spec


# --------------------------------------------------------------------------- the optimizers


def _optax_adam(learning_rate: float = 1e-3, **options: Any) -> optax.GradientTransformation:
    return optax.adam(learning_rate, **options)


def _optax_sgdm(
    learning_rate: float = 0.01, momentum: float = 0.9, **options: Any
) -> optax.GradientTransformation:
    return optax.sgd(learning_rate, momentum=momentum, **options)


OPTAX: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": _optax_adam,
    "sgdm": _optax_sgdm,
}
"""Hand-designed optimizers, from optax; every other name is built by ``lopt``."""

OPTAX_OPTIONS = {"adam": optax.adam, "sgdm": optax.sgd}
"""Where the options of an optax optimizer are checked."""

NOT_OPTIONS = ("example_params",)
"""Factory keywords that are not hyperparameters (the bench passes the params itself)."""


@dataclasses.dataclass(frozen=True)
class OptimizerChoice:
    """An optimizer as named on the command line.

    Attributes:
        label: the text it was given as (``unf:hidden=16,depth=1``), its row in the tables.
        name: the factory's name (``unf``).
        options: keyword arguments for the factory.
    """

    label: str
    name: str
    options: dict[str, Any]


def parse_value(text: str) -> Any:
    """A command-line option value: a Python literal (int, float, ...), true/false, or text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_optimizer(text: str) -> OptimizerChoice:
    """Reads ``name[:key=value,...]``, checking the name and the option names.

    Raises:
        argparse.ArgumentTypeError: on an unknown name or option, or a malformed option.
    """
    name, _, rest = text.partition(":")
    known = sorted({*OPTAX, *lopt.learned.OPTIMIZERS})
    if name not in known:
        raise argparse.ArgumentTypeError(f"unknown optimizer {name!r}; expected one of {known}")
    options = {}
    for item in filter(None, rest.split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise argparse.ArgumentTypeError(f"option {item!r} of {text!r} is not key=value")
        options[key.strip()] = parse_value(value.strip())
    accepted = optimizer_options(name)
    unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown options {unknown} for {name!r}; accepted: {sorted(accepted)}"
        )
    return OptimizerChoice(text, name, options)


def optimizer_options(name: str) -> tuple[str, ...] | None:
    """The keyword options an optimizer's factory accepts (None: any, left to optax)."""
    if name in OPTAX:
        parameters = inspect.signature(OPTAX_OPTIONS[name]).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return None
        return tuple(p.name for p in parameters)
    return tuple(o for o in lopt.learned.hyperparameters(name) if o not in NOT_OPTIONS)


def build_optimizer(
    choice: OptimizerChoice, spec: Any, params: PyTree, key: jax.Array
) -> optax.GradientTransformation:
    """The optax transformation of ``choice``; a learned rule gets ``init_meta(key, params)``."""
    if choice.name in OPTAX:
        return OPTAX[choice.name](**choice.options)
    optimizer = lopt.make_optimizer(choice.name, spec, **choice.options)
    return lopt.as_optax(optimizer, optimizer.init_meta(key, params))


# --------------------------------------------------------------------------- compiled programs


def make_train_step(module: nn.Module, tx: optax.GradientTransformation) -> Callable:
    """``step(params, opt_state, batch) -> (params, opt_state, loss)``: a user's training step."""

    def step(params: PyTree, opt_state: Any, batch: dict[str, jax.Array]) -> tuple:
        loss, grads = jax.value_and_grad(lambda p: loss_fn(module, p, batch))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def make_update(tx: optax.GradientTransformation) -> Callable:
    """``update(params, opt_state, grads) -> (params, opt_state)``: the optimizer's part."""

    def update(params: PyTree, opt_state: Any, grads: PyTree) -> tuple:
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return update


def compile_donating(fn: Callable, *args: Any) -> tuple[Any, float]:
    """``fn`` compiled for ``args`` with its first two arguments (params, state) donated,
    and the seconds tracing, lowering and compiling took."""
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=(0, 1)).lower(*args).compile()
    return compiled, time.perf_counter() - start


def fresh_copy(tree: PyTree) -> PyTree:
    """A copy of every array of ``tree`` in buffers of its own (safe to donate)."""
    return jax.tree_util.tree_map(jnp.copy, tree)


class DonatingRunner:
    """Calls a compiled ``fn(params, state, operand)`` that donates params and state, each
    call on the previous call's outputs, as a training loop does.

    It is called as :func:`lopt.bench.timing.measure` calls an executable,
    ``runner(variables, x)``, and ignores both: it holds its own params, state and operand.
    """

    def __init__(self, compiled: Any, params: PyTree, state: Any, operand: Any) -> None:
        self.compiled = compiled
        self.carry = (params, state)
        self.operand = operand
        self.extra: tuple = ()  # the last call's other outputs (a step's loss)

    def __call__(self, *ignored: Any) -> tuple:
        outputs = self.compiled(*self.carry, self.operand)
        self.carry, self.extra = (outputs[0], outputs[1]), tuple(outputs[2:])
        return outputs


def tree_bytes(tree: PyTree) -> int:
    """Bytes of all arrays in ``tree``."""
    return sum(int(np.dtype(leaf.dtype).itemsize) * int(np.size(leaf)) for leaf in _leaves(tree))


def _leaves(tree: PyTree) -> list[Any]:
    return [leaf for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "dtype")]


def temp_bytes(compiled: Any) -> float:
    """The temporaries XLA allocates for one call of ``compiled`` (NaN where unknown)."""
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        return math.nan
    return float(getattr(stats, "temp_size_in_bytes", math.nan)) if stats is not None else math.nan


@dataclasses.dataclass
class Prepared:
    """One optimizer's compiled step and update on one model, ready to time.

    Attributes:
        tx: the optax transformation.
        step: compiled :func:`make_train_step`, donating params and state.
        update: compiled :func:`make_update`, donating params and state.
        runners: ``{"step": ..., "update": ...}`` :class:`DonatingRunner` s, warmed up.
        stats: the static numbers (FLOPs, bytes, sizes).
    """

    tx: optax.GradientTransformation
    step: Any
    update: Any
    runners: dict[str, DonatingRunner]
    stats: dict[str, float]


def prepare_optimizer(
    workload: Workload,
    params: PyTree,
    spec: Any,
    grads: PyTree,
    choice: OptimizerChoice,
    key: jax.Array,
) -> Prepared:
    """Builds, compiles and warms up one optimizer's step and update on ``workload``."""
    tx = build_optimizer(choice, spec, params, key)
    state = tx.init(params)
    step, step_compile = compile_donating(
        make_train_step(workload.module, tx), params, state, workload.batch
    )
    update, update_compile = compile_donating(make_update(tx), params, state, grads)
    runners = {
        "step": DonatingRunner(step, fresh_copy(params), fresh_copy(state), workload.batch),
        "update": DonatingRunner(update, fresh_copy(params), fresh_copy(state), grads),
    }
    for runner in runners.values():
        jax.block_until_ready(runner())
    param_bytes, state_bytes = tree_bytes(params), tree_bytes(state)
    stats = {
        "step GFLOP": xla_gflop(step),
        "update GFLOP": xla_gflop(update),
        "update XLA bytes": xla_gbytes(update) * 1e9,
        "update min bytes": 2 * param_bytes + tree_bytes(grads) + 2 * state_bytes,
        "state bytes": state_bytes,
        "update temp bytes": temp_bytes(update),
        "step compile s": step_compile,
        "update compile s": update_compile,
    }
    return Prepared(tx, step, update, runners, stats)


# --------------------------------------------------------------------------- references


def reference_sizes(quick: bool) -> tuple[int, int]:
    """``(matmul side, copy MB)``: 2048 and 256 MB on an accelerator, 1024 and 64 MB on
    CPU, 256 and 8 MB for a quick run."""
    if quick:
        return 256, 8
    return (1024, 64) if jax.default_backend() == "cpu" else (2048, 256)


def reference_passes(
    matmul_size: int, copy_mbytes: float, key: jax.Array
) -> tuple[dict[str, Callable], dict[str, float]]:
    """The reference programs, warmed up, and their work.

    Returns:
        ``{"matmul": fn, "copy": fn}`` called as ``fn(variables, x)`` (both ignored), and
        ``{"matmul": FLOPs, "copy": bytes read and written}``.
    """
    ka, kb = jax.random.split(key)
    a = jax.random.normal(ka, (matmul_size, matmul_size), jnp.float32)
    b = jax.random.normal(kb, (matmul_size, matmul_size), jnp.float32)
    x = jnp.ones(int(copy_mbytes * 1e6) // 4, jnp.float32)
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    double = jax.jit(lambda v: v * 2.0).lower(x).compile()
    passes = {"matmul": lambda *_: matmul(a, b), "copy": lambda *_: double(x)}
    for fn in passes.values():
        jax.block_until_ready(fn())
    return passes, {"matmul": 2.0 * matmul_size**3, "copy": 2.0 * x.nbytes}


# --------------------------------------------------------------------------- one model


def gradient(workload: Workload, params: PyTree) -> PyTree:
    """The loss's gradient at ``params`` on the workload's batch (the update's operand)."""
    return jax.jit(jax.grad(lambda p, b: loss_fn(workload.module, p, b)))(params, workload.batch)


def spec_summary(spec: Any) -> dict[str, int]:
    """How many distinct hidden-neuron (true symmetry), by-choice and spatial ids ``spec`` has."""
    spatial = nfspec.perm_ids(spec, lambda i: isinstance(i, nfspec.Spatial))
    return {
        "hidden": len(nfspec.symmetry_ids(spec)),
        "by_choice": len(nfspec.perm_ids(spec, lambda i: isinstance(i, nfspec.ByChoice)))
        - len(spatial),
        "spatial": len(spatial),
    }


def row_metrics(
    stats: dict[str, float], medians: dict[str, float], rates: dict[str, float], baseline: float
) -> dict[str, float]:
    """Every number of one (model, optimizer) row.

    Args:
        stats: :attr:`Prepared.stats`.
        medians: ``{"step run": s, "update run": s}`` from :func:`measure`.
        rates: ``{"matmul GFLOP/s": ..., "copy GB/s": ...}``, the references.
        baseline: seconds of the baseline's (Adam's) full step, NaN if it was not run.
    """
    step, update = medians["step run"], medians["update run"]
    flops_rate = stats["update GFLOP"] / update
    bandwidth = stats["update min bytes"] / update / 1e9
    return {
        "step ms": step * 1e3,
        "update ms": update * 1e3,
        "update share": update / step,
        "step / adam step": step / baseline,
        "update / adam step": update / baseline,
        "step GFLOP": stats["step GFLOP"],
        "update GFLOP": stats["update GFLOP"],
        "update GFLOP/s": flops_rate,
        "update of matmul rate": flops_rate / rates["matmul GFLOP/s"],
        "update XLA MB": stats["update XLA bytes"] / 1e6,
        "update min MB": stats["update min bytes"] / 1e6,
        "update GB/s": bandwidth,
        "update of copy bandwidth": bandwidth / rates["copy GB/s"],
        "state MB": stats["state bytes"] / 1e6,
        "update temp MB": stats["update temp bytes"] / 1e6,
        "step compile s": stats["step compile s"],
        "update compile s": stats["update compile s"],
    }


@dataclasses.dataclass
class Setup:
    """One model with every optimizer compiled for it.

    Attributes:
        params: the model's initial params.
        spec: their derived permutation spec.
        grads: the loss's gradient at ``params`` (the operand of every timed update).
        optimizer_key: the key every learned optimizer's ``init_meta`` got.
        prepared: label -> :class:`Prepared`.
    """

    params: PyTree
    spec: Any
    grads: PyTree
    optimizer_key: jax.Array
    prepared: dict[str, Prepared]


def prepare_workload(
    workload: Workload, choices: Sequence[OptimizerChoice], key: jax.Array
) -> Setup:
    """Initialises the model, derives its spec and compiles every optimizer for it."""
    k_model, k_opt = jax.random.split(key)
    params, spec = init_model(workload, k_model)
    grads = gradient(workload, params)
    prepared = {
        c.label: prepare_optimizer(workload, params, spec, grads, c, k_opt) for c in choices
    }
    return Setup(params, spec, grads, k_opt, prepared)


def time_workload(
    workload: Workload,
    setup: Setup,
    repeats: int,
    matmul_size: int,
    copy_mbytes: float,
    key: jax.Array,
) -> dict[str, Any]:
    """Times every prepared optimizer on one model, interleaved with the references.

    Returns:
        ``{"model", "description", "params", "spec", "reference": rates,
        "optimizers": label -> row_metrics}``.
    """
    passes, work = reference_passes(matmul_size, copy_mbytes, key)
    candidates = {label: (p.runners, None) for label, p in setup.prepared.items()}
    candidates[REFERENCE] = (passes, None)
    medians = measure(candidates, None, repeats)
    reference = medians[REFERENCE]
    rates = {
        "matmul GFLOP/s": work["matmul"] / reference["matmul run"] / 1e9,
        "copy GB/s": work["copy"] / reference["copy run"] / 1e9,
        "matmul size": matmul_size,
        "copy MB": copy_mbytes,
    }
    baseline = medians[BASELINE]["step run"] if BASELINE in setup.prepared else math.nan
    rows = {}
    for label, prepared in setup.prepared.items():
        rows[label] = row_metrics(prepared.stats, medians[label], rates, baseline)
        # recorded, not acted on: whether the run stayed finite while it was timed
        rows[label]["last loss"] = float(prepared.runners["step"].extra[0])
    return {
        "model": workload.name,
        "description": workload.description,
        "params": sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(setup.params)),
        "spec": spec_summary(setup.spec),
        "reference": rates,
        "optimizers": rows,
    }


def bench_workload(
    workload: Workload,
    choices: Sequence[OptimizerChoice],
    repeats: int,
    matmul_size: int,
    copy_mbytes: float,
    key: jax.Array,
) -> dict[str, Any]:
    """:func:`prepare_workload`, then :func:`time_workload`."""
    k_setup, k_reference = jax.random.split(key)
    setup = prepare_workload(workload, choices, k_setup)
    return time_workload(workload, setup, repeats, matmul_size, copy_mbytes, k_reference)


# --------------------------------------------------------------------------- output

COLUMNS = (
    ("step ms", "step ms", ".3g"),
    ("step ×Adam", "step / adam step", ".3g"),
    ("update ms", "update ms", ".3g"),
    ("update share", "update share", ".0%"),
    ("update GFLOP", "update GFLOP", ".3g"),
    ("GFLOP/s", "update GFLOP/s", ".3g"),
    ("of matmul", "update of matmul rate", ".1%"),
    ("min MB", "update min MB", ".3g"),
    ("XLA MB", "update XLA MB", ".3g"),
    ("GB/s (min)", "update GB/s", ".3g"),
    ("of copy", "update of copy bandwidth", ".1%"),
    ("state MB", "state MB", ".3g"),
    ("temp MB", "update temp MB", ".3g"),
)
"""The table's columns: (header, row_metrics key, format)."""


def format_number(value: float, spec: str) -> str:
    """``value`` in format ``spec``; ``n/a`` for NaN or infinity."""
    return format(value, spec) if math.isfinite(value) else "n/a"


def markdown_table(result: dict[str, Any]) -> list[str]:
    """The lines of one model's markdown table, one row per optimizer."""
    header = ["optimizer", *(title for title, _, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in result["optimizers"].items():
        cells = [f"`{label}`", *(format_number(row[key], fmt) for _, key, fmt in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def model_heading(result: dict[str, Any]) -> str:
    """One line naming the model, its size, its spec and the references measured with it."""
    spec, ref = result["spec"], result["reference"]
    return (
        f"### {result['model']}: {result['description']}, {result['params']:,} params; "
        f"spec ids: {spec['hidden']} hidden, {spec['by_choice']} by choice, "
        f"{spec['spatial']} spatial; matmul {ref['matmul size']}² "
        f"{ref['matmul GFLOP/s']:.3g} GFLOP/s, copy {ref['copy MB']:g} MB "
        f"{ref['copy GB/s']:.3g} GB/s"
    )


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """What the numbers were measured with: versions, device, CPUs, commit, settings."""
    return {
        **provenance_environment(),
        "platform": jax_platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "allocator": "default" if args.default_allocator else dict(REUSE_FREED_MEMORY),
        "quick": args.quick,
        "repeats": args.repeats,
    }


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON), recursively."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    """Writes the environment, the options and every result to ``path``."""
    document = {
        "environment": environment(args),
        "optimizers": [choice.label for choice in args.optimizers],
        "models": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite_or_none(document), indent=2) + "\n")


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The command line's options (``--default-allocator`` is added by the timing helper)."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--optimizers",
        nargs="+",
        type=parse_optimizer,
        default=[parse_optimizer(name) for name in DEFAULT_OPTIMIZERS],
        help="name[:key=value,...]: adam, sgdm (optax) or a lopt optimizer "
        "(unf, unf_deep, nfn, deepsets, ...) with options for its factory",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed calls per program ({DEFAULT_REPEATS}; {QUICK_REPEATS} with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="small models and few calls")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    return parser


def main() -> None:
    args = parse_timing_args(build_parser())
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else DEFAULT_REPEATS
    args.optimizers = list({choice.label: choice for choice in args.optimizers}.values())
    matmul_size, copy_mbytes = reference_sizes(args.quick)
    print(
        f"{jax_platform()} ({jax.devices()[0].device_kind}, {os.cpu_count()} CPUs); median of "
        f"{args.repeats} calls; step = loss + gradient + update + apply, update = update + "
        "apply, both jitted with params and state donated"
    )
    results = []
    for index, name in enumerate(args.models):
        workload = WORKLOADS[name](jax.random.key(index), args.quick)
        result = bench_workload(
            workload, args.optimizers, args.repeats, matmul_size, copy_mbytes, jax.random.key(100)
        )
        results.append(result)
        print("\n" + model_heading(result) + "\n")
        print("\n".join(markdown_table(result)), flush=True)
    if args.json is not None:
        write_json(args.json, args, results)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
