"""The weight spaces the UNF benchmarks time networks on, and the widths of those networks.

Four spaces: an MLP, a CNN, an identity-RNN language model and a 2-block transformer
language model. Each is a ``(spec, shapes)`` pair: the
permutation spec of the params and a tree of the same structure holding each tensor's
shape.

>>> spec, shapes = SPACES["cnn"]()
>>> x = features_for(shapes, jax.random.PRNGKey(0))
>>> network = nf.NeuralFunctional(spec, equivariant=WIDTHS)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

import lopt.nf as nf

Space = tuple[Any, Any]
"""``(spec, shapes)``: a weight space's permutation spec and its tensors' shapes."""

WIDTHS = (32, 32, 32, 1)
"""The output channels of the benchmarked networks' four layers."""
CHANNELS = 19
"""The input channels per weight: the learned optimizer's default number of features."""


def mlp_space() -> Space:
    """A 784-32-32-10 MLP: three dense layers, input pixels and classes permuted by choice."""
    sizes = [784, 32, 32, 10]
    ids = [nf.ByChoice("in"), "h1", "h2", nf.ByChoice("out")]
    spec, shapes = {}, {}
    for layer in range(3):
        name = f"Dense_{layer}"
        spec[name] = {"kernel": (ids[layer], ids[layer + 1]), "bias": (ids[layer + 1],)}
        shapes[name] = {"kernel": (sizes[layer], sizes[layer + 1]), "bias": (sizes[layer + 1],)}
    return spec, shapes


def cnn_space() -> Space:
    """Three 3x3 convolutions (3-32-64-64 channels) and a dense readout to 10 classes."""
    channels = [3, 32, 64, 64]
    ids = [nf.ByChoice("image"), "c1", "c2", "c3"]
    spec, shapes = {}, {}
    for layer in range(3):
        name = f"Conv_{layer}"
        spec[name] = {
            "kernel": (
                nf.Spatial(f"{name}/h"),
                nf.Spatial(f"{name}/w"),
                ids[layer],
                ids[layer + 1],
            ),
            "bias": (ids[layer + 1],),
        }
        shapes[name] = {
            "kernel": (3, 3, channels[layer], channels[layer + 1]),
            "bias": (channels[layer + 1],),
        }
    spec["Dense_0"] = {"kernel": ("c3", nf.ByChoice("class")), "bias": (nf.ByChoice("class"),)}
    shapes["Dense_0"] = {"kernel": (64, 10), "bias": (10,)}
    return spec, shapes


def rnn_space() -> Space:
    """An identity-RNN language model: 256-byte embedding, 64 -> 128 units, readout."""
    vocab = nf.ByChoice("vocab")
    spec = {
        "embed": (vocab, "e"),
        "input": ("e", "h"),
        "recurrent": ("h", "h"),
        "bias": ("h",),
        "readout": {"kernel": ("h", vocab), "bias": (vocab,)},
    }
    shapes = {
        "embed": (256, 64),
        "input": (64, 128),
        "recurrent": (128, 128),
        "bias": (128,),
        "readout": {"kernel": (128, 256), "bias": (256,)},
    }
    return spec, shapes


def transformer_space() -> Space:
    """A 2-block transformer language model: width 32, 4 attention heads of 8, an MLP of
    128, a 256-byte vocabulary, 8 positions, layer norms and a readout."""
    d, heads, head_dim, mlp, vocab, seq, blocks = 32, 4, 8, 128, 256, 8, 2
    spec = {"embed": (nf.ByChoice("vocab"), "d"), "pos": (None, "d")}
    shapes = {"embed": (vocab, d), "pos": (seq, d)}
    for b in range(blocks):
        h, qk, v, f = f"{b}/heads", f"{b}/qk", f"{b}/v", f"{b}/mlp"
        spec[f"block_{b}"] = {
            "ln1": {"scale": ("d",), "bias": ("d",)},
            "query": (("d", h, qk)),
            "key": ("d", h, qk),
            "value": ("d", h, v),
            "out": (h, v, "d"),
            "ln2": {"scale": ("d",), "bias": ("d",)},
            "mlp_in": {"kernel": ("d", f), "bias": (f,)},
            "mlp_out": {"kernel": (f, "d"), "bias": ("d",)},
        }
        shapes[f"block_{b}"] = {
            "ln1": {"scale": (d,), "bias": (d,)},
            "query": (d, heads, head_dim),
            "key": (d, heads, head_dim),
            "value": (d, heads, head_dim),
            "out": (heads, head_dim, d),
            "ln2": {"scale": (d,), "bias": (d,)},
            "mlp_in": {"kernel": (d, mlp), "bias": (mlp,)},
            "mlp_out": {"kernel": (mlp, d), "bias": (d,)},
        }
    spec["ln_f"] = {"scale": ("d",), "bias": ("d",)}
    shapes["ln_f"] = {"scale": (d,), "bias": (d,)}
    spec["readout"] = ("d", nf.ByChoice("vocab"))
    shapes["readout"] = (d, vocab)
    return spec, shapes


SPACES: dict[str, Callable[[], Space]] = {
    "mlp": mlp_space,
    "cnn": cnn_space,
    "rnn": rnn_space,
    "transformer": transformer_space,
}
"""The spaces by name, as the benchmarks' ``--spaces`` option takes them."""


def is_shape(node: Any) -> bool:
    """Whether ``node`` of a ``shapes`` tree is a shape (a leaf), not a sub-tree."""
    return isinstance(node, tuple) and all(isinstance(n, int) for n in node)


def features_for(shapes: Any, key: jax.Array) -> Any:
    """Standard-normal input features of :data:`CHANNELS` channels for every tensor of
    ``shapes`` (a tree of shape tuples), leaves ``(*shape, CHANNELS)``."""
    leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=is_shape)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, (*s, CHANNELS)) for k, s in zip(keys, leaves, strict=True)]
    )
