"""Spec derivation on common flax layer patterns, checked against the numerical symmetry test."""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lopt.nf import spec as nfspec
from lopt.nf.spec import ByChoice, Spatial
from lopt.tasks import CNN, MLP, RNNLM, TransformerLM, check_symmetry, derive_spec


def derive(module: nn.Module, inputs: jax.Array, **kwargs):
    params = module.init(jax.random.key(0), inputs)["params"]
    spec = derive_spec(lambda p, x: module.apply({"params": p}, x), params, inputs, **kwargs)
    return spec, params


def assert_exact(module: nn.Module, spec, params, inputs) -> None:
    """The derived spec's symmetries are real ones (numerical check)."""
    fn = lambda p: module.apply({"params": p}, inputs)
    check_symmetry(fn, params, spec, jax.random.key(1))


def test_dense_chain_shares_each_hidden_id_between_adjacent_layers():
    module = MLP(hidden_sizes=(5, 6, 7), num_classes=3)
    inputs = jnp.ones((2, 4))
    spec, params = derive(module, inputs)
    hidden = [spec[f"Dense_{i}"]["kernel"][1] for i in range(3)]
    assert len(set(hidden)) == 3 and all(isinstance(h, str) for h in hidden)
    for i, h in enumerate(hidden):
        assert spec[f"Dense_{i}"]["bias"] == (h,)
        assert spec[f"Dense_{i + 1}"]["kernel"][0] == h
    assert spec["Dense_0"]["kernel"][0] == ByChoice("input/axis1")
    assert spec["Dense_3"]["kernel"][1] == spec["Dense_3"]["bias"][0] == ByChoice("output/axis1")
    assert hidden[0] == "Dense_0/kernel:1"
    assert_exact(module, spec, params, inputs)


def test_transformer_residual_stream_is_one_id_across_all_blocks():
    module = TransformerLM(vocab_size=11, width=8, num_heads=2, mlp_size=12, depth=3, max_len=5)
    tokens = jnp.arange(10).reshape(2, 5) % 11
    spec, _ = derive(module, tokens)
    stream = spec["embed"]["embedding"][1]
    stream_axes = [
        spec["pos_embedding"][1],
        spec["head"]["kernel"][0],
        *spec["ln_final"]["scale"],
        *spec["ln_final"]["bias"],
    ]
    for b in range(3):
        block = spec[f"block_{b}"]
        attention = block["attention"]
        stream_axes += [
            *block["ln_attention"]["scale"],
            *block["ln_attention"]["bias"],
            *block["ln_mlp"]["scale"],
            *block["ln_mlp"]["bias"],
            attention["query"]["kernel"][0],
            attention["key"]["kernel"][0],
            attention["value"]["kernel"][0],
            attention["out"]["kernel"][2],
            *attention["out"]["bias"],
            block["mlp_in"]["kernel"][0],
            block["mlp_out"]["kernel"][1],
            *block["mlp_out"]["bias"],
        ]
    assert set(stream_axes) == {stream} and isinstance(stream, str)
    assert spec["pos_embedding"][0] is None  # positions are ordered (causal mask)
    assert spec["embed"]["embedding"][0] == ByChoice("input/values")
    assert spec["head"]["kernel"][1] == ByChoice("output/axis2")


def test_attention_heads_and_head_dims_are_separate_exact_ids_per_block():
    module = TransformerLM(vocab_size=11, width=8, num_heads=2, mlp_size=12, depth=2, max_len=5)
    tokens = jnp.arange(10).reshape(2, 5) % 11
    spec, _ = derive(module, tokens)
    per_block = []
    for b in range(2):
        att = spec[f"block_{b}"]["attention"]
        heads = att["query"]["kernel"][1]
        qk_dim, v_dim = att["query"]["kernel"][2], att["value"]["kernel"][2]
        assert att["key"]["kernel"][1:] == (heads, qk_dim)
        assert att["value"]["kernel"][1] == heads
        assert att["out"]["kernel"][:2] == (heads, v_dim)
        assert att["query"]["bias"] == att["key"]["bias"] == (heads, qk_dim)
        assert att["value"]["bias"] == (heads, v_dim)
        assert len({heads, qk_dim, v_dim}) == 3
        mlp = spec[f"block_{b}"]["mlp_in"]["kernel"][1]
        assert spec[f"block_{b}"]["mlp_out"]["kernel"][0] == mlp
        per_block.append({heads, qk_dim, v_dim, mlp})
    assert not per_block[0] & per_block[1]


def test_recurrent_cell_shares_the_hidden_id_on_both_recurrent_axes():
    module = RNNLM(vocab_size=9, embed_size=4, hidden_size=6)
    tokens = jnp.arange(10).reshape(2, 5) % 9
    spec, params = derive(module, tokens)
    hidden = spec["cell"]["h"]["kernel"][0]
    assert spec["cell"]["h"]["kernel"] == (hidden, hidden)
    assert spec["cell"]["i"]["kernel"] == (spec["embed"]["embedding"][1], hidden)
    assert spec["cell"]["i"]["bias"] == (hidden,)
    assert spec["head"]["kernel"][0] == hidden
    assert_exact(module, spec, params, tokens)


class LearnedInitialStateRNN(nn.Module):
    """An Elman RNN written with lax.scan whose initial state is a parameter."""

    hidden: int = 5

    @nn.compact
    def __call__(self, xs: jax.Array) -> jax.Array:  # (B, T, F) -> (B, hidden)
        w_in = self.param("w_in", nn.initializers.normal(1.0), (xs.shape[-1], self.hidden))
        w_rec = self.param("w_rec", nn.initializers.normal(0.5), (self.hidden, self.hidden))
        h0 = self.param("h0", nn.initializers.normal(1.0), (self.hidden,))

        def step(h, x):
            h = jnp.tanh(x @ w_in + h @ w_rec)
            return h, None

        h, _ = jax.lax.scan(
            step, jnp.broadcast_to(h0, (xs.shape[0], self.hidden)), jnp.swapaxes(xs, 0, 1)
        )
        return nn.Dense(3)(h)


def test_learned_initial_state_shares_the_hidden_id():
    module = LearnedInitialStateRNN()
    inputs = jax.random.normal(jax.random.key(2), (2, 4, 3))
    spec, params = derive(module, inputs)
    hidden = spec["h0"][0]
    assert isinstance(hidden, str)
    assert spec["w_rec"] == (hidden, hidden) and spec["w_in"][1] == hidden
    assert spec["Dense_0"]["kernel"][0] == hidden
    assert_exact(module, spec, params, inputs)


def test_conv_spatial_axes_get_distinct_spatial_ids_and_channels_chain():
    module = CNN(channels=(3, 4), num_classes=2)
    inputs = jax.random.uniform(jax.random.key(0), (2, 6, 6, 2))
    spec, params = derive(module, inputs)
    spatial = [*spec["Conv_0"]["kernel"][:2], *spec["Conv_1"]["kernel"][:2]]
    assert all(isinstance(s, Spatial) for s in spatial) and len(set(spatial)) == 4
    assert spec["Conv_0"]["kernel"][2] == ByChoice("input/axis3")
    assert spec["Conv_1"]["kernel"][2] == spec["Conv_0"]["kernel"][3] == spec["Conv_0"]["bias"][0]
    assert spec["Dense_0"]["kernel"][0] == spec["Conv_1"]["kernel"][3]
    assert_exact(module, spec, params, inputs)


def test_tied_input_output_embedding_is_one_by_choice_vocabulary():
    class TiedLM(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            embed = nn.Embed(7, 4)
            return embed.attend(jnp.tanh(nn.Dense(4)(embed(tokens))))

    tokens = jnp.arange(6).reshape(2, 3)
    spec, _ = derive(TiedLM(), tokens)
    assert spec["Embed_0"]["embedding"][0] == ByChoice("input/values")


class Sliced(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(6)(x))
        return nn.Dense(2)(h[:, :3])


class Flattened(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(3, (3, 3))(x))
        return nn.Dense(2)(h.reshape(h.shape[0], -1))


class Cumulative(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(6)(x)
        return nn.Dense(2)(jnp.cumsum(h, axis=-1))


class ConstantWeighted(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(6)(x)
        return nn.Dense(2)(h * jnp.asarray(np.linspace(0.5, 1.5, 6), jnp.float32))


class Positional(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(6)(x)
        return nn.Dense(2)(h + jnp.arange(6.0))


@pytest.mark.parametrize(
    ("module", "inputs"),
    [
        (Sliced(), jnp.ones((2, 4))),
        (Flattened(), jnp.ones((2, 4, 4, 1))),
        (Cumulative(), jnp.ones((2, 4))),
        (ConstantWeighted(), jnp.ones((2, 4))),
        (Positional(), jnp.ones((2, 4))),
    ],
    ids=["slice", "flatten", "cumsum", "constant", "iota"],
)
def test_order_dependent_operations_remove_the_symmetry(module, inputs):
    spec, params = derive(module, inputs)
    first = next(iter(spec))
    assert spec[first]["kernel"][-1] is None
    assert spec[first]["bias"] == (None,)
    assert_exact(module, spec, params, inputs)
    # Asserting the lost symmetry anyway, as a hand-written spec would, is caught.
    first, second = list(spec)[:2]
    claimed = jax.tree_util.tree_map(lambda axes: axes, spec, is_leaf=nfspec.is_axes)
    claimed[first]["kernel"] = (*spec[first]["kernel"][:-1], "claimed")
    claimed[first]["bias"] = ("claimed",)
    if params[second]["kernel"].shape[0] == params[first]["bias"].shape[0]:
        claimed[second]["kernel"] = ("claimed", spec[second]["kernel"][1])
    fn = lambda p: module.apply({"params": p}, inputs)
    report = check_symmetry(fn, params, claimed, jax.random.key(3), raise_on_failure=False)
    assert "claimed" in report.failed


def test_unmodelled_primitives_warn_and_are_treated_as_ordered():
    class Spectral(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(6)(x)
            return nn.Dense(2)(jnp.fft.fft(h).real)

    with pytest.warns(UserWarning, match="fft"):
        spec, _ = derive(Spectral(), jnp.ones((2, 4)))
    assert spec["Dense_0"]["kernel"][1] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        derive(Spectral(), jnp.ones((2, 4)), warn=False)


def test_layer_norm_on_a_hidden_layer_shares_its_id():
    class Normed(nn.Module):
        @nn.compact
        def __call__(self, x):
            # flax names submodules in construction order: build the hidden layer first
            h = nn.gelu(nn.Dense(6)(x))
            return nn.Dense(2)(nn.LayerNorm()(h))

    inputs = jax.random.normal(jax.random.key(0), (3, 4))
    spec, params = derive(Normed(), inputs)
    hidden = spec["Dense_0"]["kernel"][1]
    assert spec["LayerNorm_0"] == {"scale": (hidden,), "bias": (hidden,)}
    assert spec["Dense_1"]["kernel"][0] == hidden
    assert_exact(Normed(), spec, params, inputs)


def test_ids_are_strings_never_colliding_integers():
    module = MLP(hidden_sizes=(4, 4), num_classes=4)
    spec, _ = derive(module, jnp.ones((2, 4)))
    ids = nfspec.perm_ids(spec)
    assert len(ids) == 4  # input, two hidden layers, output: all of size 4, all distinct
    assert all(isinstance(i, (str, ByChoice)) for i in ids)


@settings(max_examples=6, deadline=None)
@given(
    # Size-one axes are excluded: a reshape that adds or drops unit axes cannot say which
    # of them carries the neuron, and the only permutation of one neuron is the identity.
    widths=st.lists(st.integers(2, 6), min_size=1, max_size=3),
    features=st.integers(1, 5),
)
def test_derived_mlp_specs_are_exact(widths, features):
    module = MLP(hidden_sizes=tuple(widths), num_classes=3, activation=nn.tanh)
    inputs = jax.random.normal(jax.random.key(0), (2, features))
    spec, params = derive(module, inputs)
    assert len(nfspec.symmetry_ids(spec)) == len(widths)
    assert_exact(module, spec, params, inputs)
