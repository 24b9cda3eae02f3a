"""The inner-task networks (flax.linen) of the UNF paper's four tasks.

All models map a batch of inputs to logits: images ``(B, features)`` or ``(B, H, W, C)``
to ``(B, classes)``, token ids ``(B, T)`` to ``(B, T, vocab)``. They use plain flax layers
(``Dense``, ``Embed``, ``LayerNorm``, ``SimpleCell``/``RNN``,
``MultiHeadDotProductAttention``; convolutions through :class:`~lopt.tasks.conv.Conv`,
flax's ``Conv`` with a gradient that stays fast inside ``lax.scan``) so the spec
derivation and optimizers see ordinary flax parameter trees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from .conv import Conv

Activation = Callable[[jax.Array], jax.Array]


def identity_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Initialiser returning the identity matrix (the IRNN's recurrent kernel, Le et al. 2015)."""
    del key
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"identity_init needs a square 2-d shape, got {shape}")
    return jnp.eye(shape[0], dtype=dtype)


class MLP(nn.Module):
    """Multilayer perceptron classifier.

    Attributes:
        hidden_sizes: width of every hidden layer.
        num_classes: number of output logits.
        activation: nonlinearity after every hidden layer.
    """

    hidden_sizes: Sequence[int]
    num_classes: int
    activation: Activation = nn.relu

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Maps ``(B, features)`` inputs to ``(B, num_classes)`` logits."""
        x = inputs
        for width in self.hidden_sizes:
            x = self.activation(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
    """Convolutional classifier: 3x3 convs, global average pooling, linear head.

    Attributes:
        channels: output channels of every conv layer.
        num_classes: number of output logits.
        kernel_size: side of the square conv kernels.
        stride: stride of every conv layer.
        activation: nonlinearity after every conv layer.
    """

    channels: Sequence[int]
    num_classes: int
    kernel_size: int = 3
    stride: int = 1
    activation: Activation = nn.relu

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Maps ``(B, H, W, C)`` images to ``(B, num_classes)`` logits."""
        x = inputs
        size = (self.kernel_size, self.kernel_size)
        for width in self.channels:
            x = self.activation(Conv(width, size, self.stride)(x))
        # Global average pooling keeps the head independent of the spatial layout.
        x = jnp.mean(x, axis=(-3, -2))
        return nn.Dense(self.num_classes)(x)


class RNNLM(nn.Module):
    """Vanilla (Elman) RNN language model, identity-initialised recurrent matrix (IRNN).

    Attributes:
        vocab_size: number of token ids (256 for bytes).
        embed_size: embedding width.
        hidden_size: recurrent state width.
        activation: cell nonlinearity (ReLU for an IRNN).
    """

    vocab_size: int
    embed_size: int
    hidden_size: int
    activation: Activation = nn.relu

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Maps ``(B, T)`` token ids to ``(B, T, vocab_size)`` next-token logits."""
        x = nn.Embed(self.vocab_size, self.embed_size, name="embed")(tokens)
        cell = nn.SimpleCell(
            self.hidden_size,
            activation_fn=self.activation,
            recurrent_kernel_init=identity_init,
            name="cell",
        )
        x = nn.RNN(cell, name="rnn")(x)
        return nn.Dense(self.vocab_size, name="head")(x)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm decoder block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``.

    Attributes:
        num_heads: attention heads (the model width must be divisible by it).
        mlp_size: hidden width of the MLP.
    """

    num_heads: int
    mlp_size: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """Maps the ``(B, T, d)`` residual stream to its update, with a ``(B, 1, T, T)`` mask."""
        width = x.shape[-1]
        h = nn.LayerNorm(name="ln_attention")(x)
        x = x + nn.MultiHeadDotProductAttention(self.num_heads, name="attention")(h, mask=mask)
        h = nn.LayerNorm(name="ln_mlp")(x)
        h = nn.gelu(nn.Dense(self.mlp_size, name="mlp_in")(h))
        return x + nn.Dense(width, name="mlp_out")(h)


class TransformerLM(nn.Module):
    """Decoder-only pre-LayerNorm transformer LM with learned positional embeddings.

    Attributes:
        vocab_size: number of token ids (256 for bytes).
        width: model (residual stream) width d.
        num_heads: attention heads per block.
        mlp_size: MLP hidden width per block.
        depth: number of blocks.
        max_len: number of positional embeddings (longest sequence).
    """

    vocab_size: int
    width: int
    num_heads: int
    mlp_size: int
    depth: int
    max_len: int

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Maps ``(B, T)`` token ids, ``T <= max_len``, to ``(B, T, vocab_size)`` logits."""
        length = tokens.shape[-1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        x = nn.Embed(self.vocab_size, self.width, name="embed")(tokens)
        positions = self.param(
            "pos_embedding", nn.initializers.normal(0.02), (self.max_len, self.width)
        )
        x = x + positions[:length]
        mask = nn.make_causal_mask(tokens)
        for index in range(self.depth):
            x = TransformerBlock(self.num_heads, self.mlp_size, name=f"block_{index}")(x, mask)
        x = nn.LayerNorm(name="ln_final")(x)
        return nn.Dense(self.vocab_size, name="head")(x)
