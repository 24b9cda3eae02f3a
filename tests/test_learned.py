"""The learned update rule and its baselines: features, optax equivalence, equivariance, jax
transformations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import lopt.learned as L
from lopt.learned import features as feats
from lopt.nf import ContextDense
from lopt.nf.spec import ByChoice, Spatial, permute, random_permutations

# --- small models with hand-written specs -----------------------------------------------


class MLP(nn.Module):
    width: int = 8
    classes: int = 3

    @nn.compact
    def __call__(self, x):
        hidden = nn.tanh(nn.Dense(self.width)(x))
        return nn.Dense(self.classes)(hidden)


MLP_SPEC = {
    "Dense_0": {"kernel": (ByChoice("in"), "h"), "bias": ("h",)},
    "Dense_1": {"kernel": ("h", ByChoice("out")), "bias": (ByChoice("out"),)},
}


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        return nn.Dense(3)(x.mean(axis=(1, 2)))


CNN_SPEC = {
    "Conv_0": {"kernel": (Spatial("kh"), Spatial("kw"), ByChoice("in"), "c"), "bias": ("c",)},
    "Dense_0": {"kernel": ("c", ByChoice("out")), "bias": (ByChoice("out"),)},
}


def mlp_params(width=8, seed=0):
    return MLP(width).init(jax.random.key(seed), jnp.zeros((1, 5)))["params"]


def cnn_params(seed=0):
    return CNN().init(jax.random.key(seed), jnp.zeros((1, 6, 6, 2)))["params"]


def random_like(key, tree, extra=()):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten(
        [jax.random.normal(k, (*leaf.shape, *extra)) for k, leaf in zip(keys, leaves, strict=True)]
    )


def data(key, n=64):
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (n, 5))
    y = jnp.argmax(x @ jax.random.normal(kw, (5, 3)), axis=-1)
    return x, y


def mlp_loss(params, batch, width=8):
    x, y = batch
    logits = MLP(width).apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def assert_trees_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


# --- features -----------------------------------------------------------------------------


def test_time_features_match_the_formula():
    values = np.asarray(L.time_features(250))
    taus = np.logspace(0, 5, 11)
    np.testing.assert_allclose(values, np.tanh(250 / taus - 1), rtol=1e-6)
    assert taus[0] == 1 and taus[-1] == 1e5 and values.shape == (11,)


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(1e-4, 1e-1), seed=st.integers(0, 2**16))
def test_normalize_is_scale_free_below_the_clip_and_has_unit_rms(scale, seed):
    x = jax.random.normal(jax.random.key(seed), (7, 5, 3)) * scale
    assume(float(jnp.abs(x * 3.0).max()) < L.features.DEFAULT_CLIP)
    # below the clip bound, normalising removes any overall scale
    y = L.normalize(x)
    np.testing.assert_allclose(L.normalize(x * 3.0), y, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(jnp.sqrt(jnp.mean(y**2, axis=(0, 1))), 1.0, rtol=1e-4)


def test_normalize_clips_before_dividing_and_keeps_zero_tensors_zero():
    x = jnp.array([[100.0], [-100.0], [0.5], [0.0]])
    expected = np.array([1.0, -1.0, 0.5, 0.0]) / np.sqrt((1 + 1 + 0.25) / 4)
    np.testing.assert_allclose(L.normalize(x, clip=1.0)[:, 0], expected, rtol=1e-6)
    assert jnp.all(L.normalize(jnp.zeros((3, 2))) == 0)


def test_weight_space_features_layout():
    params = mlp_params()
    grads = random_like(jax.random.key(1), params)
    momenta = feats.update_feature_momenta(feats.init_feature_momenta(params), grads)
    inputs = jax.jit(L.weight_space_features)(params, grads, momenta, 3)
    kernel = inputs["Dense_0"]["kernel"]
    assert kernel.shape == (5, 8, L.NUM_FEATURES) and L.NUM_FEATURES == 19
    g = grads["Dense_0"]["kernel"]
    np.testing.assert_allclose(kernel[..., 1], L.normalize(g[..., None])[..., 0], rtol=1e-5)
    # the first EMA step puts (1 - γ) g into every momentum channel
    for channel, gamma in enumerate(L.FEATURE_DECAYS):
        np.testing.assert_allclose(
            kernel[..., 2 + channel], L.normalize(((1 - gamma) * g)[..., None])[..., 0], rtol=1e-4
        )
    np.testing.assert_allclose(kernel[2, 3, 8:], L.time_features(3), rtol=1e-6)


# --- the update rule reduces to optax's momentum SGD ---------------------------------------


def run_steps(optimizer_update, optimizer_state, params, steps=8):
    trajectory = []
    for step in range(steps):
        grads = jax.grad(mlp_loss)(params, data(jax.random.key(step)))
        updates, optimizer_state = optimizer_update(grads, optimizer_state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory


@pytest.mark.parametrize("backbone", ["unf", "deepsets"])
def test_zero_beta_is_optax_momentum_sgd_step_by_step(backbone):
    opt = L.make_optimizer(backbone, MLP_SPEC, alpha=0.05, gamma0=0.8)
    theta = opt.init_meta(jax.random.key(0))
    theta["log_beta"] = jnp.asarray(-jnp.inf)  # β = 0: the network's output is switched off
    alpha, beta, gamma0 = L.meta_parameters(theta)
    assert beta == 0
    reference = optax.sgd(learning_rate=float(alpha), momentum=float(gamma0))
    params = mlp_params()
    ours = run_steps(jax.jit(lambda g, s, p: opt.update(theta, g, s, p)), opt.init(params), params)
    theirs = run_steps(jax.jit(reference.update), reference.init(params), params)
    for a, b in zip(ours, theirs, strict=True):
        assert_trees_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backbone", ["unf", "deepsets"])
def test_adam_base_with_a_zero_last_layer_is_optax_adam_step_by_step(backbone):
    opt = L.make_optimizer(
        backbone, MLP_SPEC, alpha=0.01, gamma0=0.8, beta=0.5, base="adam", zero_output=True
    )
    theta = opt.init_meta(jax.random.key(0))
    network = theta["network"]
    last = max(network, key=lambda name: int(name.rsplit("_", 1)[1]))
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(network[last]))
    others = [leaf for name in network if name != last for leaf in jax.tree.leaves(network[name])]
    assert any(np.any(leaf) for leaf in others)  # only the last layer starts at zero
    alpha, _, gamma0 = L.meta_parameters(theta)
    reference = optax.adam(float(alpha), b1=float(gamma0), b2=0.999, eps=1e-8)
    params = mlp_params()
    ours = run_steps(jax.jit(lambda g, s, p: opt.update(theta, g, s, p)), opt.init(params), params)
    theirs = run_steps(jax.jit(reference.update), reference.init(params), params)
    for a, b in zip(ours, theirs, strict=True):
        assert_trees_close(a, b, rtol=1e-5, atol=1e-7)
    # Once the network is switched on, it changes the step: the correction is live.
    theta["network"] = jax.tree.map(lambda x: x + 0.1, network)
    moved = run_steps(jax.jit(lambda g, s, p: opt.update(theta, g, s, p)), opt.init(params), params)
    assert not np.allclose(jax.tree.leaves(moved[-1])[0], jax.tree.leaves(ours[-1])[0])


@pytest.mark.parametrize("num_steps", [8, 40, 2000, 2001])
def test_warmup_cosine_factor_is_optaxs_schedule_at_every_count(num_steps):
    fraction = 0.05
    warmup = round(fraction * num_steps)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, num_steps, end_value=0.0)
    counts = np.arange(0, 2 * num_steps, max(1, num_steps // 97))
    factor = jax.jit(jax.vmap(L.baselines.warmup_cosine_factor, (0, None, None)), static_argnums=2)
    ours = factor(jnp.asarray(counts), jnp.asarray(num_steps), fraction)
    theirs = [float(schedule(c + (1 if warmup else 0))) for c in counts]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_warmup_cosine_schedule_on_the_adam_base_is_adam_cosine_step_by_step():
    steps = 40  # warmup 2 steps: the ramp, the peak and the decay all within the run
    opt = L.make_optimizer(
        "deepsets", MLP_SPEC, alpha=0.02, base="adam", zero_output=True, schedule="warmup_cosine"
    )
    assert opt.needs_num_steps and opt.config["schedule"] == "warmup_cosine"
    theta = opt.init_meta(jax.random.key(0))
    alpha, _, gamma0 = L.meta_parameters(theta)
    baseline = L.make_optimizer(
        "adam_cosine", None, learning_rate=float(alpha), b1=float(gamma0), total_steps=steps
    )
    base_theta = baseline.init_meta(jax.random.key(0))
    params = mlp_params()
    with pytest.raises(ValueError, match="num_steps"):
        opt.init(params)
    ours = run_steps(
        jax.jit(lambda g, s, p: opt.update(theta, g, s, p)),
        opt.init(params, num_steps=steps),
        params,
        steps,
    )
    theirs = run_steps(
        jax.jit(lambda g, s, p: baseline.update(base_theta, g, s, p)),
        baseline.init(params),
        params,
        steps,
    )
    for a, b in zip(ours, theirs, strict=True):  # the rate's product rounds in another order
        assert_trees_close(a, b, rtol=1e-4, atol=1e-6)
    assert_trees_close(ours[-1], ours[-2], rtol=0, atol=0)  # the last step's factor is 0
    with pytest.raises(ValueError, match="unknown schedule"):
        L.make_optimizer("unf", MLP_SPEC, schedule="cosine")
    with pytest.raises(ValueError, match="warmup_fraction"):
        L.make_optimizer("unf", MLP_SPEC, schedule="warmup_cosine", warmup_fraction=1.0)


def first_step(opt, theta, params, count=0):
    """The update of a fresh state whose step count is ``count``."""
    grads = jax.grad(mlp_loss)(params, data(jax.random.key(1)))
    state = opt.init(params)._replace(count=jnp.asarray(count, jnp.int32))
    return grads, opt.update(theta, grads, state, params)[0]


def test_without_time_input_the_rule_ignores_the_step_count():
    params = mlp_params()
    timeless = L.make_optimizer("deepsets", MLP_SPEC, time="none", beta=1.0)
    theta = timeless.init_meta(jax.random.key(0))
    assert theta["network"]["pointwise_0"]["kernel"].shape[0] == feats.NUM_ENTRY_FEATURES
    _, early = first_step(timeless, theta, params, count=0)
    _, late = first_step(timeless, theta, params, count=100_000)
    assert_trees_close(early, late, rtol=0, atol=0)
    timed = L.make_optimizer("deepsets", MLP_SPEC, beta=1.0)
    timed_theta = timed.init_meta(jax.random.key(0))
    _, early = first_step(timed, timed_theta, params, count=0)
    _, late = first_step(timed, timed_theta, params, count=100_000)
    assert not np.allclose(early["Dense_0"]["kernel"], late["Dense_0"]["kernel"])
    with pytest.raises(ValueError, match="time must be one of"):
        L.make_optimizer("unf", MLP_SPEC, time="relative")


def test_fraction_features_match_the_formula_and_stay_in_range_past_the_run():
    values = np.asarray(L.features.fraction_features(250, 1000))
    scales = np.logspace(-2, 0, 11)
    np.testing.assert_allclose(values, np.tanh(0.25 / scales - 1), rtol=1e-6)
    past = L.features.fraction_features(5000, 1000)
    np.testing.assert_array_equal(past, L.features.fraction_features(1000, 1000))


def test_fraction_time_reads_the_fraction_of_the_run_done():
    params = mlp_params()
    opt = L.make_optimizer("unf", MLP_SPEC, time="fraction", beta=1.0)
    theta = opt.init_meta(jax.random.key(0))
    assert opt.needs_num_steps and not L.make_optimizer("unf", MLP_SPEC).needs_num_steps
    with pytest.raises(ValueError, match="num_steps"):
        opt.init(params)
    grads = jax.grad(mlp_loss)(params, data(jax.random.key(1)))

    def update_at(count, num_steps):
        state = opt.init(params, num_steps=num_steps)._replace(count=jnp.asarray(count, jnp.int32))
        return jax.jit(opt.update)(theta, grads, state, params)[0]

    # The same fraction of a run twice as long: the same update.
    assert_trees_close(update_at(100, 1000), update_at(200, 2000), rtol=0, atol=0)
    assert not np.allclose(
        update_at(100, 1000)["Dense_0"]["kernel"], update_at(100, 2000)["Dense_0"]["kernel"]
    )
    # Exported like a schedule: the run's length is given once.
    with pytest.raises(ValueError, match="needs the run's length"):
        L.as_optax(opt, theta)
    optimizer = L.as_optax(opt, theta, num_steps=1000)
    state = optimizer.init(params)
    assert int(state.num_steps) == 1000
    updates, _ = optimizer.update(grads, state, params)
    assert_trees_close(updates, update_at(0, 1000), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backbone", ["unf", "deepsets"])
def test_normalized_output_is_a_unit_rms_term_per_tensor(backbone):
    params = mlp_params()
    alpha, beta = 0.5, 0.25
    opt = L.make_optimizer(backbone, MLP_SPEC, alpha=alpha, beta=beta, normalize_output=True)
    theta = opt.init_meta(jax.random.key(0))
    grads, updates = first_step(opt, theta, params)
    # sgdm base, first step: d = g, so the learned term is -update / alpha - g, over beta.
    learned = jax.tree.map(lambda u, g: (-u / alpha - g) / beta, updates, grads)
    for leaf in jax.tree.leaves(learned):
        assert float(jnp.sqrt(jnp.mean(jnp.square(leaf)))) == pytest.approx(1.0, rel=1e-4)
    # Scale-free: a network whose output is 10x larger takes the same step.
    network = theta["network"]
    last = max(network, key=lambda name: int(name.rsplit("_", 1)[1]))
    louder = {**theta, "network": {**network, last: jax.tree.map(lambda x: 10 * x, network[last])}}
    assert_trees_close(first_step(opt, louder, params)[1], updates, rtol=1e-5, atol=1e-7)
    # A zero last layer stays exactly the base optimizer.
    zero = L.make_optimizer(backbone, MLP_SPEC, normalize_output=True, zero_output=True)
    grads, updates = first_step(zero, zero.init_meta(jax.random.key(0)), params)
    assert_trees_close(updates, jax.tree.map(lambda g: -0.1 * g, grads), rtol=1e-6, atol=0)


def test_initial_meta_parameters_are_the_papers():
    theta = L.make_optimizer("unf", MLP_SPEC).init_meta(jax.random.key(0))
    alpha, beta, gamma0 = L.meta_parameters(theta)
    np.testing.assert_allclose([alpha, beta, gamma0], [0.1, 0.001, 0.9], rtol=1e-6)


@settings(max_examples=5, deadline=None)
@given(lr=st.floats(1e-3, 0.5), momentum=st.floats(0.05, 0.99))
def test_sgdm_baseline_matches_optax(lr, momentum):
    opt = L.make_optimizer("sgdm", MLP_SPEC, learning_rate=lr, momentum=momentum)
    theta = opt.init_meta(jax.random.key(0))
    lr32 = float(jnp.exp(theta["log_learning_rate"]))
    mom32 = float(jax.nn.sigmoid(theta["logit_momentum"]))
    reference = optax.sgd(learning_rate=lr32, momentum=mom32)
    params = mlp_params()
    ours = run_steps(lambda g, s, p: opt.update(theta, g, s, p), opt.init(params), params, 4)
    theirs = run_steps(reference.update, reference.init(params), params, 4)
    assert_trees_close(ours[-1], theirs[-1], rtol=1e-5, atol=1e-7)


def test_adam_baseline_matches_optax():
    opt = L.make_optimizer("adam", None, learning_rate=0.01, b1=0.8, b2=0.99)
    theta = opt.init_meta(jax.random.key(0))
    reference = optax.adam(
        float(jnp.exp(theta["log_learning_rate"])),
        b1=float(jax.nn.sigmoid(theta["logit_b1"])),
        b2=float(jax.nn.sigmoid(theta["logit_b2"])),
    )
    params = mlp_params()
    ours = run_steps(jax.jit(lambda g, s, p: opt.update(theta, g, s, p)), opt.init(params), params)
    theirs = run_steps(jax.jit(reference.update), reference.init(params), params)
    for a, b in zip(ours, theirs, strict=True):
        assert_trees_close(a, b, rtol=1e-5, atol=1e-7)


def test_adam_cosine_baseline_matches_optax_adam_on_a_warmup_cosine_schedule():
    opt = L.make_optimizer("adam_cosine", None, learning_rate=0.05, total_steps=8)
    theta = opt.init_meta(jax.random.key(0))
    peak = float(jnp.exp(theta["log_learning_rate"]))
    schedule = optax.warmup_cosine_decay_schedule(0.0, peak, 0, 8, end_value=0.0)
    assert opt.config["warmup_fraction"] == 0.05 and round(0.05 * 8) == 0
    reference = optax.adam(schedule)
    params = mlp_params()
    ours = run_steps(jax.jit(lambda g, s, p: opt.update(theta, g, s, p)), opt.init(params), params)
    theirs = run_steps(jax.jit(reference.update), reference.init(params), params)
    for a, b in zip(ours, theirs, strict=True):  # the rate's product rounds in another order
        assert_trees_close(a, b, rtol=1e-4, atol=1e-6)
    warm = L.make_optimizer("adam_cosine", None, learning_rate=0.05, total_steps=100)
    assert warm.config["total_steps"] == 100
    with pytest.raises(ValueError, match="total_steps must be a positive integer"):
        L.make_optimizer("adam_cosine", None, learning_rate=0.05, total_steps=0)


# --- equivariance of the whole update --------------------------------------------------------


def permuted_update(opt, theta, params, spec, perm_ids, seed=0):
    """(update of permuted inputs, permuted update), the update, and the update at β = 0."""
    keys = jax.random.split(jax.random.key(seed), 5)
    grads = random_like(keys[0], params)
    state = L.NFOptState(
        jnp.asarray(17, jnp.int32),
        random_like(keys[1], params),
        random_like(keys[2], params, (len(L.FEATURE_DECAYS),)),
    )
    perms = random_permutations(keys[3], spec, params, ids=perm_ids)
    p = lambda tree: permute(tree, spec, perms)
    update = jax.jit(opt.update)
    updates, new_state = update(theta, grads, state, params)
    state_p = L.NFOptState(state.count, p(state.momentum), p(state.feature_momenta))
    updates_p, new_state_p = update(theta, p(grads), state_p, p(params))
    want = (
        p(updates),
        L.NFOptState(new_state.count, p(new_state.momentum), p(new_state.feature_momenta)),
    )
    momentum_only, _ = update({**theta, "log_beta": jnp.asarray(-jnp.inf)}, grads, state, params)
    return (updates_p, new_state_p), want, updates, momentum_only


CASES = [
    ("unf", MLP_SPEC, mlp_params, None),
    ("nfn", MLP_SPEC, mlp_params, None),
    ("deepsets", MLP_SPEC, mlp_params, None),
    ("unf_deep", MLP_SPEC, mlp_params, None),
    ("unf", CNN_SPEC, cnn_params, None),
    ("nfn", CNN_SPEC, cnn_params, ["c", ByChoice("in"), ByChoice("out")]),
    ("deepsets", CNN_SPEC, cnn_params, None),
]


@pytest.mark.parametrize(("backbone", "spec", "make_params", "perm_ids"), CASES)
def test_update_is_equivariant(backbone, spec, make_params, perm_ids):
    params = make_params()
    opt = L.make_optimizer(backbone, spec, hidden=8, depth=2, beta=1.0)
    theta = opt.init_meta(jax.random.key(3), params)
    got, want, updates, momentum_only = permuted_update(opt, theta, params, spec, perm_ids)
    assert_trees_close(got, want, rtol=1e-4, atol=1e-5)
    # the learned term is large enough here that a non-equivariant f would show
    gap = max(
        jax.tree.leaves(jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), updates, momentum_only))
    )
    assert gap > 1e-2


@pytest.mark.parametrize(("backbone", "spec", "make_params", "perm_ids"), CASES)
def test_time_context_equals_the_time_channels_broadcast_to_every_entry(
    backbone, spec, make_params, perm_ids
):
    del perm_ids
    params = make_params()
    opt = L.make_optimizer(backbone, spec, hidden=8, depth=2, beta=1.0, alpha=1.0)
    theta = opt.init_meta(jax.random.key(3), params)
    grads = random_like(jax.random.key(4), params)
    state = opt.init(params)._replace(count=jnp.asarray(37, jnp.int32))
    updates, new_state = jax.jit(opt.update)(theta, grads, state, params)
    # The reference: all 19 channels materialised per entry, read by the same network.
    network = L.nf_optimizer.build_network(backbone, spec, 8, 2)
    inputs = L.weight_space_features(params, grads, new_state.feature_momenta, 37)
    outputs = jax.jit(network.apply)({"params": theta["network"]}, inputs)
    _, _, gamma0 = L.nf_optimizer.meta_parameters(theta)
    momentum = jax.tree.map(lambda m, g: gamma0 * m + g, state.momentum, grads)
    want = jax.tree.map(lambda m, f: -(m + f[..., 0]), momentum, outputs)
    assert_trees_close(updates, want, rtol=1e-5, atol=1e-6)


def test_context_dense_is_dense_on_the_broadcast_context():
    matrix = jax.random.normal(jax.random.key(0), (13, 5))
    context = jax.random.normal(jax.random.key(1), (3,))
    broadcast = jnp.concatenate([matrix, jnp.broadcast_to(context, (13, 3))], axis=-1)
    dense = nn.Dense(4)
    variables = dense.init(jax.random.key(2), broadcast)
    fused = ContextDense(4)
    # Same parameter names, shapes and initial values, and the same outputs.
    fused_variables = fused.init(jax.random.key(2), matrix, context)
    assert_trees_close(fused_variables, variables, rtol=0, atol=0)
    np.testing.assert_allclose(
        fused.apply(variables, matrix, context), dense.apply(variables, broadcast), rtol=1e-5
    )
    params = mlp_params()
    inputs = feats.entry_features(params, params, feats.init_feature_momenta(params))
    with pytest.raises(ValueError, match="context must be one vector"):
        L.nf_optimizer.build_network("unf", MLP_SPEC, 4, 1).init(
            jax.random.key(0), inputs, jnp.zeros((2, 3))
        )


def test_nfn_is_not_equivariant_to_spatial_permutations_but_unf_is():
    params = cnn_params()
    spatial = [Spatial("kh"), Spatial("kw")]
    for backbone, equivariant in (("nfn", False), ("unf", True)):
        opt = L.make_optimizer(backbone, CNN_SPEC, hidden=8, depth=1, beta=1.0)
        theta = opt.init_meta(jax.random.key(4), params)
        got, want, _, _ = permuted_update(opt, theta, params, CNN_SPEC, spatial, seed=2)
        close = all(
            np.allclose(a, b, rtol=1e-4, atol=1e-5)
            for a, b in zip(jax.tree.leaves(got[0]), jax.tree.leaves(want[0]), strict=True)
        )
        assert close == equivariant, backbone


# --- sizes, shapes and jax transformations ---------------------------------------------------


@pytest.mark.parametrize("backbone", ["unf", "nfn", "deepsets", "unf_deep"])
def test_meta_parameters_do_not_depend_on_the_width(backbone):
    opt = L.make_optimizer(backbone, MLP_SPEC, hidden=4, depth=1)
    narrow = jax.eval_shape(lambda k: opt.init_meta(k, mlp_params(8)), jax.random.key(0))
    wide = jax.eval_shape(lambda k: opt.init_meta(k, mlp_params(32)), jax.random.key(0))
    default = jax.eval_shape(opt.init_meta, jax.random.key(0))
    assert jax.tree.map(lambda x: x.shape, narrow) == jax.tree.map(lambda x: x.shape, wide)
    assert jax.tree.map(lambda x: x.shape, narrow) == jax.tree.map(lambda x: x.shape, default)


def test_fixed_axes_need_example_params():
    spec = {**MLP_SPEC, "position": (None, "h")}
    params = {**mlp_params(), "position": jnp.zeros((4, 8))}
    opt = L.make_optimizer("unf", spec, hidden=4, depth=1)
    with pytest.raises(ValueError, match="example params"):
        opt.init_meta(jax.random.key(0))
    shapes = jax.eval_shape(lambda k: opt.init_meta(k, params), jax.random.key(0))
    with_example = L.make_optimizer("unf", spec, hidden=4, depth=1, example_params=params)
    assert jax.eval_shape(with_example.init_meta, jax.random.key(0)) == shapes
    # the fixed axis is folded into channels, so the network's size grows with its length
    longer = {**params, "position": jnp.zeros((6, 8))}
    assert jax.eval_shape(lambda k: opt.init_meta(k, longer), jax.random.key(0)) != shapes
    theta = opt.init_meta(jax.random.key(0), params)
    updates, _ = jax.jit(opt.update)(theta, params, opt.init(params), params)
    assert updates["position"].shape == (4, 8)


def test_vmap_over_theta_and_runs_and_scan_over_steps():
    opt = L.make_optimizer("unf", MLP_SPEC, hidden=4, depth=1, beta=0.5)
    thetas = jax.vmap(opt.init_meta)(jax.random.split(jax.random.key(0), 2))
    runs = jax.vmap(lambda seed: mlp_params(seed=seed))(jnp.arange(3))
    batches = [data(jax.random.key(s)) for s in range(4)]
    batches = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)

    def train(theta, params):
        def step(carry, batch):
            params, state = carry
            loss, grads = jax.value_and_grad(mlp_loss)(params, batch)
            updates, state = opt.update(theta, grads, state, params, loss=loss)
            return (optax.apply_updates(params, updates), state), loss

        (params, state), losses = jax.lax.scan(step, (params, opt.init(params)), batches)
        return params, state.count, losses

    final, counts, losses = jax.jit(
        jax.vmap(jax.vmap(train, in_axes=(None, 0)), in_axes=(0, None))
    )(thetas, runs)
    assert losses.shape == (2, 3, 4) and bool(jnp.all(counts == 4))
    single = jax.jit(train)(
        jax.tree.map(lambda x: x[1], thetas), jax.tree.map(lambda x: x[2], runs)
    )
    np.testing.assert_allclose(losses[1, 2], single[2], rtol=1e-4)
    assert_trees_close(jax.tree.map(lambda x: x[1, 2], final), single[0], rtol=1e-4, atol=1e-6)


# --- configuration and bad input ---------------------------------------------------------------


def test_config_rebuilds_the_optimizer():
    opt = L.make_optimizer("nfn", MLP_SPEC, hidden=5, depth=2, alpha=0.3)
    assert opt.config == {
        "name": "nfn",
        "hidden": 5,
        "depth": 2,
        "clip": 1.0,
        "alpha": 0.3,
        "beta": 0.001,
        "gamma0": 0.9,
        "base": "sgdm",
        "b2": 0.999,
        "eps": 1e-8,
        "zero_output": False,
        "time": "absolute",
        "normalize_output": False,
        "schedule": "constant",
        "warmup_fraction": 0.05,
    }
    again = L.optimizer_from_config(opt.config, MLP_SPEC)
    assert again.config == opt.config
    key = jax.random.key(0)
    assert jax.eval_shape(again.init_meta, key) == jax.eval_shape(opt.init_meta, key)


def test_bad_construction_is_reported():
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        L.make_optimizer("lion", MLP_SPEC)
    with pytest.raises(ValueError, match="unknown hyperparameters \\['lr'\\]"):
        L.make_optimizer("unf", MLP_SPEC, lr=0.1)
    with pytest.raises(ValueError, match="gamma0 must lie strictly between 0 and 1"):
        L.make_optimizer("unf", MLP_SPEC, gamma0=1.0)
    with pytest.raises(ValueError, match="alpha must be positive"):
        L.make_optimizer("deepsets", MLP_SPEC, alpha=0.0)
    with pytest.raises(ValueError, match="needs the permutation spec"):
        L.make_optimizer("unf", None)


def test_update_without_params_or_with_mismatched_grads_is_reported():
    opt = L.make_optimizer("deepsets", MLP_SPEC, hidden=4, depth=1)
    params = mlp_params()
    theta, state = opt.init_meta(jax.random.key(0)), opt.init(params)
    with pytest.raises(ValueError, match="needs the current parameters"):
        opt.update(theta, params, state, None)
    wrong = {**params, "Dense_1": {"kernel": params["Dense_1"]["kernel"]}}
    with pytest.raises(ValueError, match="gradients do not match"):
        opt.update(theta, wrong, state, params)
