"""The UNF layer: equals a per-term oracle of Algorithm 1, is equivariant, has the basis size."""

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nf_testing import random_variables

from lopt.nf import (
    ByChoice,
    InvariantNetwork,
    NeuralFunctional,
    Spatial,
    UNFLinear,
    bell,
    count_terms,
    nfn_spec,
    permute,
    plan_for,
    random_permutations,
    stack_features,
    stacked_plan,
    term_coefficients,
    unstack_features,
)
from lopt.nf.coefficients import kernel_blocks
from lopt.nf.plan import set_partitions

# --- the oracle: Algorithm 1 term by term, from dense indicator tensors -----------------


def all_valid_partitions(out_ids, in_ids):
    """Every set partition of all axes whose blocks join axes of one id (brute force)."""
    labels = [("o", p) for p in range(len(out_ids))] + [("i", p) for p in range(len(in_ids))]
    ids = {("o", p): i for p, i in enumerate(out_ids)} | {("i", p): i for p, i in enumerate(in_ids)}
    for partition in set_partitions(labels):
        if all(len({ids[a] for a in block}) == 1 for block in partition):
            yield frozenset(frozenset(block) for block in partition)


def basis_tensor(partition, out_shape, in_shape):
    """E[o..., i...] = Π_blocks [indices in block equal] / Π_{input-only blocks} size."""
    k = len(out_shape)
    shape = (*out_shape, *in_shape)
    grids = np.indices(shape)
    pos = {("o", p): p for p in range(k)} | {("i", p): k + p for p in range(len(in_shape))}
    tensor = np.ones(shape)
    for block in partition:
        axes = [pos[a] for a in block]
        for a in axes[1:]:
            tensor = tensor * (grids[a] == grids[axes[0]])
        if all(side == "i" for side, _ in block):
            tensor = tensor / shape[axes[0]]
    return tensor


def fold(x, axes):
    perm = [p for p, a in enumerate(axes) if a is not None]
    fixed = [p for p, a in enumerate(axes) if a is None]
    moved = np.transpose(x, [*perm, *fixed, x.ndim - 1])
    return moved.reshape(*[x.shape[p] for p in perm], -1), [x.shape[p] for p in fixed]


def oracle_unf(spec_leaves, xs, params, features, channels):
    """Applies the layer term by term with coefficients read off the fast layer's params."""
    axes_list = [axes for _, axes in spec_leaves]
    shapes = [x.shape[:-1] for x in xs]
    spec = {str(i): axes for i, (_, axes) in enumerate(spec_leaves)}
    tree = {str(i): x for i, x in enumerate(xs)}
    kernels, all_biases = term_coefficients(spec, tree, params, features)
    outs = []
    for out, (axes_out, x_shape) in enumerate(zip(axes_list, shapes, strict=True)):
        out_ids = tuple(a for a in axes_out if a is not None)
        out_perm_shape = tuple(s for s, a in zip(x_shape, axes_out, strict=True) if a is not None)
        fixed_shape = [s for s, a in zip(x_shape, axes_out, strict=True) if a is None]
        coefficients = {key[1:]: value for key, value in kernels.items() if key[0] == out}
        biases = [(key[1], value) for key, value in all_biases.items() if key[0] == out]
        y = np.zeros((*out_perm_shape, features * math.prod(fixed_shape)))
        for inp, axes_in in enumerate(axes_list):
            in_ids = tuple(a for a in axes_in if a is not None)
            x_folded, _ = fold(np.asarray(xs[inp]), axes_in)
            for partition in all_valid_partitions(out_ids, in_ids):
                theta = coefficients.pop((inp, partition))
                e = basis_tensor(partition, out_perm_shape, x_folded.shape[:-1])
                k = len(out_perm_shape)
                reduced = np.tensordot(
                    e, x_folded, axes=(list(range(k, e.ndim)), list(range(x_folded.ndim - 1)))
                )
                y = y + reduced @ theta
        assert not coefficients, "the fast layer has terms the oracle does not know"
        for out_partition, bias in biases:
            pattern = basis_tensor(
                frozenset(frozenset(("o", p) for p in block) for block in out_partition),
                out_perm_shape,
                (),
            )
            y = y + pattern[..., None] * bias
        y = y.reshape(*out_perm_shape, *fixed_shape, features)
        order = [p for p, a in enumerate(axes_out) if a is not None] + [
            p for p, a in enumerate(axes_out) if a is None
        ]
        outs.append(np.transpose(y, [*np.argsort(order), len(order)]))
    return outs


def test_kernel_blocks_tile_every_kernel():
    spec = {"w": ("a", "b"), "v": ("b",), "u": ("a", None), "v2": ("b",), "w2": ("a", "b")}
    x = {
        "w": jnp.ones((3, 4, 2)),
        "v": jnp.ones((4, 2)),
        "u": jnp.ones((3, 2, 2)),
        "v2": jnp.ones((4, 2)),
        "w2": jnp.ones((3, 4, 2)),
    }
    params = UNFLinear(spec, 5).init(jax.random.PRNGKey(0), x)["params"]
    plan, members, _ = stacked_plan(spec, x)
    assert sorted(members) == [(0,), (1, 2), (3, 4)]  # leaf order: u, v, v2, w, w2
    covered = {name: np.zeros(np.shape(p), int) for name, p in params.items()}
    for out in range(len(plan.tensors)):
        for _, name, rows, columns in kernel_blocks(plan, out, 2, 5):
            for term_columns in columns:
                covered[name][rows, term_columns] += 1
    for name, count in covered.items():
        if name.startswith("kernel"):
            assert (count == 1).all(), name
    kernels, biases = term_coefficients(spec, x, params, 5)
    assert sum(block.size for block in kernels.values()) == sum(
        p.size for name, p in params.items() if name.startswith("kernel")
    )
    assert sum(block.size for block in biases.values()) == sum(
        p.size for name, p in params.items() if name.startswith("bias")
    )


# --- random weight spaces -------------------------------------------------------------

IDS = ["a", "b", "c", None]


@st.composite
def weight_spaces(draw, max_tensors=4, max_rank=3):
    sizes = {
        "a": draw(st.integers(2, 3)),
        "b": draw(st.integers(1, 3)),
        "c": draw(st.integers(2, 4)),
    }
    tensors = []
    for _ in range(draw(st.integers(1, max_tensors))):
        rank = draw(st.integers(0, max_rank))
        axes = tuple(draw(st.sampled_from(IDS)) for _ in range(rank))
        shape = tuple(sizes[a] if a is not None else draw(st.integers(1, 2)) for a in axes)
        tensors.append((axes, shape))
    if draw(st.booleans()):  # a repeated layout, stacked by the layer
        tensors.append(tensors[draw(st.integers(0, len(tensors) - 1))])
    if all(all(a is None for a in axes) for axes, _ in tensors):
        tensors.append((("a", "a"), (sizes["a"], sizes["a"])))  # a permuted tensor, repeated id
    return tensors


def build(tensors, channels, key):
    spec = {f"w{i}": axes for i, (axes, _) in enumerate(tensors)}
    keys = jax.random.split(key, len(tensors))
    x = {
        f"w{i}": jax.random.normal(k, (*shape, channels))
        for i, ((_, shape), k) in enumerate(zip(tensors, keys, strict=True))
    }
    return spec, x


def max_abs_diff(a, b):
    return max(
        jax.tree_util.tree_leaves(
            jax.tree_util.tree_map(lambda u, v: float(jnp.max(jnp.abs(u - v))), a, b)
        )
    )


SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outputs_under_permutation(net: nn.Module, variables: dict, spec, x, key):
    """``(perms, net(permuted x), net(x))`` for random permutations ``perms`` of the ids
    of ``spec``, drawn with ``key``."""
    perms = random_permutations(key, spec, x)
    apply = jax.jit(net.apply)
    return perms, apply(variables, permute(x, spec, perms)), apply(variables, x)


def drawn_net_outputs(make_net, tensors, channels: int, seed: int):
    """``(spec, perms, net(permuted x), net(x))`` of ``make_net(spec)`` with variables
    drawn by :func:`random_variables`, on a drawn weight space of ``channels`` channels."""
    spec, x = build(tensors, channels, jax.random.PRNGKey(seed))
    net = make_net(spec)
    variables = random_variables(net, seed + 1, x)
    key = jax.random.PRNGKey(seed + 2)
    return spec, *outputs_under_permutation(net, variables, spec, x, key)


@SETTINGS
@given(tensors=weight_spaces(), seed=st.integers(0, 2**16))
def test_fast_layer_equals_oracle(tensors, seed):
    channels, features = 2, 3
    spec, x = build(tensors, channels, jax.random.PRNGKey(seed))
    layer = UNFLinear(spec, features)
    # random biases too, so the bias patterns are checked
    params = jax.tree_util.tree_map(
        lambda p: jax.random.normal(jax.random.PRNGKey(seed + 2), p.shape),
        jax.eval_shape(layer.init, jax.random.PRNGKey(seed + 1), x)["params"],
    )
    fast = jax.jit(layer.apply)({"params": params}, x)
    keys = sorted(spec, key=lambda k: int(k[1:]))
    leaves = [(k, spec[k]) for k in keys]
    expected = oracle_unf(leaves, [np.asarray(x[k]) for k in keys], params, features, channels)
    for k, want in zip(keys, expected, strict=True):
        np.testing.assert_allclose(np.asarray(fast[k]), want, rtol=2e-4, atol=2e-4)


def test_transposed_leaves_stack_and_equal_the_oracle():
    # an embedding and its readout, a value/out pair with axes in another order, two
    # square matrices: each pair runs as one stack, with the oracle's terms
    tensors = [
        (("v", "d"), (5, 3)),
        (("d", "h", "k"), (3, 2, 4)),
        (("h", "k", "d"), (2, 4, 3)),
        (("d", "v"), (3, 5)),
        (("h", "h"), (2, 2)),
        (("h", "h"), (2, 2)),
        (("d",), (3,)),
    ]
    spec, x = build(tensors, 2, jax.random.PRNGKey(3))
    plan, members, orders = stacked_plan(spec, x)
    assert sorted(members) == [(0, 3), (1, 2), (4, 5), (6,)]
    assert len(plan.tensors) == 4
    assert dict(zip(members, orders, strict=True)) == {
        (0, 3): (None, (1, 0)),  # the readout (d, v) read as (v, d)
        (1, 2): (None, (2, 0, 1)),  # (h, k, d) read as (d, h, k)
        (4, 5): (None, None),
        (6,): (None,),
    }
    layer = UNFLinear(spec, 3)
    params = jax.eval_shape(layer.init, jax.random.PRNGKey(4), x)["params"]
    params = jax.tree_util.tree_map(
        lambda p: jax.random.normal(jax.random.PRNGKey(5), p.shape), params
    )
    fast = jax.jit(layer.apply)({"params": params}, x)
    keys = sorted(spec)
    expected = oracle_unf(
        [(k, spec[k]) for k in keys], [np.asarray(x[k]) for k in keys], params, 3, 2
    )
    for k, want in zip(keys, expected, strict=True):
        np.testing.assert_allclose(np.asarray(fast[k]), want, rtol=2e-4, atol=2e-4)
    perms = random_permutations(jax.random.PRNGKey(6), spec, x)
    assert (
        max_abs_diff(
            jax.jit(layer.apply)({"params": params}, permute(x, spec, perms)),
            permute(fast, spec, perms),
        )
        < 1e-4
    )


@SETTINGS
@given(tensors=weight_spaces(max_tensors=5), seed=st.integers(0, 2**16))
def test_unf_stack_is_equivariant(tensors, seed):
    make_net = lambda spec: NeuralFunctional(spec, pointwise=(4,), equivariant=(5, 2))
    spec, perms, out, plain = drawn_net_outputs(make_net, tensors, 3, seed)
    assert max_abs_diff(out, permute(plain, spec, perms)) < 1e-4


@SETTINGS
@given(tensors=weight_spaces(max_tensors=4), seed=st.integers(0, 2**16))
def test_invariant_network_is_invariant(tensors, seed):
    make_net = lambda spec: InvariantNetwork(spec, equivariant=(4,), head=(8, 3))
    _, _, out, plain = drawn_net_outputs(make_net, tensors, 2, seed)
    np.testing.assert_allclose(out, plain, atol=1e-4)


def transformer_like_space(d=4, heads=2, head_dim=3, ff=5, vocab=6, seq=3, blocks=2):
    """Shared residual id across blocks, heads and head_dim ids, fixed positional axis."""
    spec = {"embed": (ByChoice("vocab"), "d"), "pos": (None, "d")}
    shapes = {"embed": (vocab, d), "pos": (seq, d)}
    for b in range(blocks):
        h, qk, v, f = f"b{b}/heads", f"b{b}/qk", f"b{b}/v", f"b{b}/ff"
        spec |= {
            f"b{b}/ln": ("d",),
            f"b{b}/q": ("d", h, qk),
            f"b{b}/k": ("d", h, qk),
            f"b{b}/v": ("d", h, v),
            f"b{b}/out": (h, v, "d"),
            f"b{b}/ff1": ("d", f),
            f"b{b}/ff2": (f, "d"),
        }
        shapes |= {
            f"b{b}/ln": (d,),
            f"b{b}/q": (d, heads, head_dim),
            f"b{b}/k": (d, heads, head_dim),
            f"b{b}/v": (d, heads, head_dim),
            f"b{b}/out": (heads, head_dim, d),
            f"b{b}/ff1": (d, ff),
            f"b{b}/ff2": (ff, d),
        }
    return spec, shapes


def test_transformer_space_equivariance_with_shared_residual_id():
    spec, shapes = transformer_like_space()
    key = jax.random.PRNGKey(0)
    x = {
        k: jax.random.normal(jax.random.fold_in(key, i), (*s, 2))
        for i, (k, s) in enumerate(shapes.items())
    }
    # One layer: a stack is equivariant when its layers are (test_unf_stack_is_equivariant).
    net = NeuralFunctional(spec, equivariant=(1,))
    variables = random_variables(net, 0, x)
    perms, out, plain = outputs_under_permutation(net, variables, spec, x, jax.random.PRNGKey(1))
    assert max_abs_diff(out, permute(plain, spec, perms)) < 1e-4


def test_conv_space_fixed_spatial_axes_and_nfn():
    spec = {
        "c0": (Spatial("0h"), Spatial("0w"), ByChoice("img"), "c1"),
        "c0b": ("c1",),
        "c1": (Spatial("1h"), Spatial("1w"), "c1", "c2"),
        "c1b": ("c2",),
        "head": ("c2", ByChoice("cls")),
    }
    shapes = {"c0": (3, 3, 1, 4), "c0b": (4,), "c1": (3, 3, 4, 5), "c1b": (5,), "head": (5, 3)}
    key = jax.random.PRNGKey(0)
    x = {
        k: jax.random.normal(jax.random.fold_in(key, i), (*s, 2))
        for i, (k, s) in enumerate(shapes.items())
    }
    for kind, ids_spec in [("unf", spec), ("nfn", nfn_spec(spec))]:
        net = NeuralFunctional(spec, pointwise=(3,), equivariant=(2,), kind=kind)
        variables = random_variables(net, 0, x)
        perms, out, plain = outputs_under_permutation(
            net, variables, ids_spec, x, jax.random.PRNGKey(1)
        )
        assert max_abs_diff(out, permute(plain, ids_spec, perms)) < 1e-4
    # NFN mixes spatial positions densely, UNF shares weights across them: NFN is larger
    unf = jax.eval_shape(NeuralFunctional(spec, equivariant=(2,)).init, key, x)
    nfn = jax.eval_shape(NeuralFunctional(spec, equivariant=(2,), kind="nfn").init, key, x)
    size = lambda v: sum(p.size for p in jax.tree_util.tree_leaves(v))
    assert size(nfn) > size(unf)


@pytest.mark.parametrize(
    ("out_ids", "in_ids", "expected"),
    [
        (("r", "c"), ("r", "c"), 4),
        (("h", "h"), ("h", "h"), 15),
        (("h",), ("h",), 2),
        (("h",), ("g",), 1),
        (("a", "b", "c"), ("a", "b", "c"), 8),
        ((), ("h", "h"), 2),
    ],
)
def test_basis_counts(out_ids, in_ids, expected):
    assert count_terms(out_ids, in_ids) == expected
    assert len(list(all_valid_partitions(out_ids, in_ids))) == expected


@SETTINGS
@given(tensors=weight_spaces())
def test_plan_term_counts_are_the_bell_products(tensors):
    spec, x = build(tensors, 1, jax.random.PRNGKey(0))
    plan = plan_for(spec, x)
    for out, out_layout in enumerate(plan.tensors):
        for inp, in_layout in enumerate(plan.tensors):
            expected = math.prod(
                bell(sum(1 for i in (*out_layout.ids, *in_layout.ids) if i == perm_id))
                for perm_id in set(out_layout.ids) | set(in_layout.ids)
            )
            assert (
                plan.num_terms(out, inp) == expected == count_terms(out_layout.ids, in_layout.ids)
            )


def test_bell_numbers():
    assert [bell(n) for n in range(7)] == [1, 1, 2, 5, 15, 52, 203]
    for n in range(5):
        assert bell(n) == sum(1 for _ in set_partitions(range(n)))


def test_parameter_count_matches_basis_size():
    spec = {"w": ("h", "h"), "b": ("h",), "v": ("h", ByChoice("o"))}
    x = {"w": jnp.ones((3, 3, 2)), "b": jnp.ones((3, 2)), "v": jnp.ones((3, 4, 2))}
    features = 5
    variables = jax.eval_shape(UNFLinear(spec, features).init, jax.random.PRNGKey(0), x)
    kernels = sum(p.size for n, p in variables["params"].items() if n.startswith("kernel"))
    ids = [("h", "h"), ("h",), ("h", ByChoice("o"))]
    assert kernels == sum(count_terms(o, i) for o, i in itertools.product(ids, ids)) * 2 * features
    biases = sum(p.size for n, p in variables["params"].items() if n.startswith("bias"))
    # equivariant constants: partitions of each output's axes (Bell numbers per id)
    assert biases == (bell(2) + bell(1) + 1) * features


def test_paper_optimizer_network_parameter_count():
    # UNF paper, 8x8 MLP task: 64 -> 32 -> 10, 19 input channels, three per-parameter
    # Dense(32) layers and a UNF layer with one output: 3,783 with alpha, beta, gamma0.
    spec = {
        "Dense_0": {"kernel": (ByChoice("in"), "h"), "bias": ("h",)},
        "Dense_1": {"kernel": ("h", ByChoice("out")), "bias": (ByChoice("out"),)},
    }
    x = {
        "Dense_0": {"kernel": jnp.zeros((64, 32, 19)), "bias": jnp.zeros((32, 19))},
        "Dense_1": {"kernel": jnp.zeros((32, 10, 19)), "bias": jnp.zeros((10, 19))},
    }
    net = NeuralFunctional(spec, pointwise=(32, 32, 32), equivariant=(1,))
    variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
    assert sum(p.size for p in jax.tree_util.tree_leaves(variables)) + 3 == 3783


def test_unf_is_size_independent():
    spec = {"k0": (ByChoice("in"), "h"), "b0": ("h",), "k1": ("h", ByChoice("out"))}
    small = {"k0": jnp.ones((3, 4, 2)), "b0": jnp.ones((4, 2)), "k1": jnp.ones((4, 2, 2))}
    wide = {"k0": jnp.ones((3, 9, 2)), "b0": jnp.ones((9, 2)), "k1": jnp.ones((9, 2, 2))}
    net = NeuralFunctional(spec, pointwise=(4,), equivariant=(3, 1))
    variables = jax.jit(net.init)(jax.random.PRNGKey(0), small)
    out = jax.jit(net.apply)(variables, wide)
    assert out["k0"].shape == (3, 9, 1)


def test_layer_rejects_tree_without_channel_axis():
    spec = {"w": ("h", "g")}
    with pytest.raises(ValueError, match="channel axis"):
        UNFLinear(spec, 2).init(jax.random.PRNGKey(0), {"w": jnp.ones((3, 4))})


def test_unknown_kind_is_an_error():
    spec = {"w": ("h", "g")}
    with pytest.raises(ValueError, match="unknown neural functional kind"):
        NeuralFunctional(spec, equivariant=(1,), kind="gnn").init(
            jax.random.PRNGKey(0), {"w": jnp.ones((3, 4, 1))}
        )


def test_deep_sets_is_pointwise():
    spec = {"w": ("h", "g")}
    net = NeuralFunctional(spec, pointwise=(4, 1), activation=nn.tanh)
    x = {"w": jax.random.normal(jax.random.PRNGKey(0), (3, 4, 2))}
    variables = net.init(jax.random.PRNGKey(1), x)
    out = net.apply(variables, x)["w"]
    single = net.apply(variables, {"w": x["w"][:1, :1]})["w"]
    np.testing.assert_allclose(out[0, 0], single[0, 0], atol=1e-6)


def test_per_term_reference_equals_fast_layer():
    from lopt.nf.reference import per_term_apply

    spec, shapes = transformer_like_space(blocks=1)
    key = jax.random.PRNGKey(0)
    x = {
        k: jax.random.normal(jax.random.fold_in(key, i), (*s, 2))
        for i, (k, s) in enumerate(shapes.items())
    }
    layer = UNFLinear(spec, 3)
    params = jax.jit(layer.init)(key, x)["params"]
    params = jax.tree_util.tree_map(lambda p: jax.random.normal(key, p.shape), params)
    fast = jax.jit(layer.apply)({"params": params}, x)
    slow = jax.jit(lambda p, inputs: per_term_apply(spec, p, inputs, 3))(params, x)
    assert max_abs_diff(fast, slow) < 1e-4


def test_layers_pass_stacked_features_along():
    spec = {"a": ("d",), "b": ("d",), "w": ("d", "h"), "v": ("d", "h"), "u": ("h",)}
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    shapes = {"a": (4,), "b": (4,), "w": (4, 3), "v": (4, 3), "u": (3,)}
    x = {
        name: jax.random.normal(key, (*shape, 2))
        for key, (name, shape) in zip(keys, shapes.items(), strict=True)
    }
    stacked = stack_features(spec, x)
    assert len(stacked.tensors) == 3  # (a, b), (v, w), u
    np.testing.assert_array_equal(unstack_features(stacked)["w"], x["w"])

    layer = UNFLinear(spec, 3)
    variables = layer.init(jax.random.PRNGKey(1), x)
    from_tree = layer.apply(variables, x)
    from_stacked = layer.apply(variables, stacked)
    assert isinstance(from_stacked, type(stacked))
    for name in spec:
        np.testing.assert_allclose(unstack_features(from_stacked)[name], from_tree[name], 1e-6)

    other = {**spec, "u": ("d",)}
    with pytest.raises(ValueError, match="another spec"):
        UNFLinear(other, 3).init(jax.random.PRNGKey(1), stacked)


def mlp_space_features(key, channels=3):
    spec = {"w0": ("i", "h"), "b0": ("h",), "w1": ("h", "o"), "b1": ("o",)}
    shapes = {"w0": (5, 4), "b0": (4,), "w1": (4, 3), "b1": (3,)}
    keys = jax.random.split(key, len(shapes))
    x = {
        name: jax.random.normal(k, (*shape, channels))
        for k, (name, shape) in zip(keys, shapes.items(), strict=True)
    }
    return spec, x


def test_vmapped_gradients_equal_per_example_gradients():
    spec, x = mlp_space_features(jax.random.PRNGKey(0))
    net = NeuralFunctional(spec, equivariant=(4, 1))
    variables = random_variables(net, 1, x)
    batch = jax.tree_util.tree_map(lambda a: jnp.stack([a, 2 * a - 1, -a]), x)

    def loss(v, inputs):
        return sum(jnp.sum(out**2) for out in jax.tree_util.tree_leaves(net.apply(v, inputs)))

    batched = jax.jit(jax.vmap(jax.grad(loss), (None, 0)))(variables, batch)
    per_example = jax.jit(jax.grad(loss))
    for index in range(3):

        def pick(a, index=index):
            return a[index]

        single = per_example(variables, jax.tree_util.tree_map(pick, batch))
        got = jax.tree_util.tree_map(pick, batched)
        for want, have in zip(
            jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(got), strict=True
        ):
            np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5)


def test_layer_inputs_stay_computed_once_under_vmap():
    # a cond on a batched predicate would become a select, which XLA fuses through
    spec, x = mlp_space_features(jax.random.PRNGKey(0))
    net = NeuralFunctional(spec, equivariant=(4, 1))
    variables = net.init(jax.random.PRNGKey(1), x)
    batch = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), x)
    jaxpr = str(
        jax.make_jaxpr(jax.vmap(jax.vmap(net.apply, (None, 0)), (None, 0)))(
            variables, jax.tree_util.tree_map(lambda a: jnp.stack([a]), batch)
        )
    )
    assert "cond[" in jaxpr
    assert "select_n" not in jaxpr


def test_nan_entry_gives_the_oracle_result():
    # a NaN entry reaches every output through the means, exactly as in the oracle
    tensors = [(("i", "h"), (5, 4)), (("h",), (4,)), (("h", "o"), (4, 3)), (("o",), (3,))]
    spec, x = build(tensors, 2, jax.random.PRNGKey(0))
    x["w2"] = x["w2"].at[0, 0, 0].set(jnp.nan)
    layer = UNFLinear(spec, 3)
    params = layer.init(jax.random.PRNGKey(1), x)["params"]
    fast = jax.jit(layer.apply)({"params": params}, x)
    keys = sorted(spec)
    expected = oracle_unf(
        [(k, spec[k]) for k in keys], [np.asarray(x[k]) for k in keys], params, 3, 2
    )
    for k, want in zip(keys, expected, strict=True):
        assert np.isnan(want).all()
        assert np.isnan(np.asarray(fast[k])).all()


def test_large_reductions_equal_the_reference_values_and_gradients():
    # reductions of 80,000 entries and more run through shared buffers
    from lopt.nf.reference import per_term_apply
    from lopt.nf.xla_boundary import SHARED_SIZE as _SHARED_SIZE

    spec = {"w": ("a", "b", "c"), "v": ("c",)}
    x = {
        "w": jax.random.normal(jax.random.PRNGKey(0), (2, 200, 200, 2)),
        "v": jax.random.normal(jax.random.PRNGKey(1), (200, 2)),
    }
    assert x["w"][0].size >= _SHARED_SIZE  # the mean over a: (200, 200, 2)
    layer = UNFLinear(spec, 3)
    params = layer.init(jax.random.PRNGKey(2), x)["params"]

    def fast_loss(p, inputs):
        out = layer.apply({"params": p}, inputs)
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree_util.tree_leaves(out))

    def reference_loss(p, inputs):
        out = per_term_apply(spec, p, inputs, 3)
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree_util.tree_leaves(out))

    fast = jax.jit(jax.value_and_grad(fast_loss, argnums=(0, 1)))(params, x)
    slow = jax.jit(jax.value_and_grad(reference_loss, argnums=(0, 1)))(params, x)
    np.testing.assert_allclose(fast[0], slow[0], rtol=1e-4)
    for have, want in zip(
        jax.tree_util.tree_leaves(fast[1]), jax.tree_util.tree_leaves(slow[1]), strict=True
    ):
        np.testing.assert_allclose(have, want, rtol=2e-3, atol=2e-4 * float(np.abs(want).max()))
