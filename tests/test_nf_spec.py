"""Permutation specs: validation errors, random permutations and permute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.nf import spec as nfspec
from lopt.nf.spec import ByChoice, Spatial, SpecError

SPEC = {
    "Dense_0": {"kernel": (ByChoice("in"), "h"), "bias": ("h",)},
    "Dense_1": {"kernel": ("h", ByChoice("out")), "bias": (ByChoice("out"),)},
}


def params(hidden=4):
    return {
        "Dense_0": {"kernel": jnp.ones((3, hidden)), "bias": jnp.ones((hidden,))},
        "Dense_1": {"kernel": jnp.ones((hidden, 2)), "bias": jnp.ones((2,))},
    }


def test_valid_spec_passes():
    nfspec.validate(SPEC, params())
    nfspec.validate(SPEC, nfspec.with_channel_axis(params()), channel_axis=True)


def test_empty_spec_is_an_error():
    with pytest.raises(SpecError, match="empty"):
        nfspec.validate({})


def test_structure_mismatch_names_the_tensors():
    tree = params()
    tree["Dense_2"] = {"kernel": jnp.ones((2, 2))}
    with pytest.raises(SpecError, match=r"Dense_2.*kernel"):
        nfspec.validate(SPEC, tree)


def test_wrong_tuple_length_names_path_and_shape():
    bad = {**SPEC, "Dense_1": {"kernel": ("h",), "bias": (ByChoice("out"),)}}
    with pytest.raises(SpecError, match=r"Dense_1.*kernel.*rank 2"):
        nfspec.validate(bad, params())


def test_id_on_axes_of_different_sizes_names_both_axes():
    bad = {**SPEC, "Dense_1": {"kernel": ("h", "h"), "bias": ("h",)}}
    with pytest.raises(SpecError, match=r"'h'.*different sizes.*Dense_1.*size 2.*size 4"):
        nfspec.validate(bad, params())


def test_integer_zero_trap_is_caught():
    # Ids built as -i collide at i = 0: a kernel's height axis (size 3) would share the
    # input-channel id (size 5). Validation must refuse it.
    spec = {"conv": (-0, -1, 0, 1)}  # HWIO: spatial ids -0, -1; channels 0, 1
    tree = {"conv": jnp.ones((3, 3, 5, 7))}
    with pytest.raises(SpecError, match="different sizes"):
        nfspec.validate(spec, tree)


def test_non_tuple_leaf_is_an_error():
    with pytest.raises(SpecError, match="expected a tuple"):
        nfspec.validate({"w": ["h", "g"]})


def test_unhashable_id_is_an_error():
    with pytest.raises(SpecError, match="not hashable"):
        nfspec.validate({"w": ({"a", "b"},)})


def test_symmetry_ids_exclude_by_choice_and_spatial():
    spec = {"k": (Spatial("kh"), Spatial("kw"), ByChoice("in"), "c1"), "b": ("c1",), "f": (None,)}
    assert nfspec.symmetry_ids(spec) == ["c1"]
    assert nfspec.perm_ids(spec) == [
        "c1",
        Spatial("kh"),
        Spatial("kw"),
        ByChoice("in"),
    ]  # leaf order
    assert Spatial("a") != ByChoice("a")


def test_permute_matches_numpy_indexing_and_inverts():
    key = jax.random.PRNGKey(0)
    tree = {
        "Dense_0": {"kernel": jax.random.normal(key, (3, 4)), "bias": jnp.arange(4.0)},
        "Dense_1": {"kernel": jax.random.normal(key, (4, 2)), "bias": jnp.arange(2.0)},
    }
    perms = nfspec.random_permutations(jax.random.PRNGKey(1), SPEC, tree, ids=["h"])
    assert set(perms) == {"h"}
    out = nfspec.permute(tree, SPEC, perms)
    p = np.asarray(perms["h"])
    np.testing.assert_array_equal(
        out["Dense_0"]["kernel"], np.asarray(tree["Dense_0"]["kernel"])[:, p]
    )
    np.testing.assert_array_equal(out["Dense_0"]["bias"], np.asarray(tree["Dense_0"]["bias"])[p])
    np.testing.assert_array_equal(
        out["Dense_1"]["kernel"], np.asarray(tree["Dense_1"]["kernel"])[p, :]
    )
    np.testing.assert_array_equal(out["Dense_1"]["bias"], tree["Dense_1"]["bias"])
    back = nfspec.permute(out, SPEC, nfspec.inverse_permutations(perms))
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, tree)


def test_permute_with_channel_axis_leaves_channels_alone():
    tree = nfspec.with_channel_axis(params())
    tree = jax.tree_util.tree_map(lambda t: jnp.concatenate([t, 2 * t], -1), tree)
    perms = nfspec.random_permutations(jax.random.PRNGKey(2), SPEC, tree)
    out = nfspec.permute(tree, SPEC, perms)
    assert jax.tree_util.tree_map(jnp.shape, out) == jax.tree_util.tree_map(jnp.shape, tree)


def test_hidden_permutation_is_a_symmetry_of_an_mlp():
    key = jax.random.PRNGKey(3)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    tree = {
        "Dense_0": {"kernel": jax.random.normal(k1, (3, 8)), "bias": jax.random.normal(k2, (8,))},
        "Dense_1": {"kernel": jax.random.normal(k3, (8, 2)), "bias": jnp.zeros((2,))},
    }

    def mlp(p, x):
        h = jnp.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
        return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]

    x = jax.random.normal(k4, (5, 3))
    perms = nfspec.random_permutations(key, SPEC, tree, ids=nfspec.symmetry_ids(SPEC))
    np.testing.assert_allclose(mlp(nfspec.permute(tree, SPEC, perms), x), mlp(tree, x), atol=1e-5)
    out_perm = {ByChoice("out"): jnp.array([1, 0])}
    assert not np.allclose(mlp(nfspec.permute(tree, SPEC, out_perm), x), mlp(tree, x))


def test_random_permutations_rejects_unknown_ids():
    with pytest.raises(SpecError, match="do not occur"):
        nfspec.random_permutations(jax.random.PRNGKey(0), SPEC, params(), ids=["nope"])
