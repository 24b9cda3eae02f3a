"""Small inner problems with known answers for the meta-training tests.

``QuadraticTask``: ``loss(w, xi) = 0.5 * sum_i a_i (w_i - xi_i)^2`` with a fresh Gaussian
target ``xi ~ N(0, noise^2 I)`` per batch and ``w_0 ~ N(0, init_std^2 I)``.

``LearnedMomentum``: heavy-ball SGD whose meta-parameters are ``log_lr`` and ``momentum``:
``m <- momentum * m + g``, ``w <- w - exp(log_lr) * m``.

Under this pair the expected loss of every inner step is available in closed form (the
first two moments of ``(w, m)`` evolve linearly), so the exact meta-gradient of any
piecewise-constant theta schedule is ``jax.grad`` of :func:`expected_losses`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class QuadraticTask:
    """A noisy diagonal quadratic implementing the Task interface."""

    def __init__(
        self,
        curvature=(0.25, 0.5, 1.0, 2.0),
        noise_std=0.5,
        init_std=1.0,
        test_shift=0.0,
        blowup_fraction=0.0,
    ):
        self.curvature = jnp.asarray(curvature, jnp.float32)
        self.noise_std = float(noise_std)
        self.init_std = float(init_std)
        # Held-out targets are shifted by this much, making the two splits distinguishable.
        self.test_shift = float(test_shift)
        # This fraction of initialisations is scaled by 1e20, so their loss overflows.
        self.blowup_fraction = float(blowup_fraction)
        self.name = "quadratic"
        self.spec = {"w": (None,)}

    @property
    def dim(self) -> int:
        return int(self.curvature.shape[0])

    def init(self, key: jax.Array) -> dict:
        normal_key, blowup_key = jax.random.split(key)
        w = self.init_std * jax.random.normal(normal_key, (self.dim,))
        blowup = jax.random.uniform(blowup_key) < self.blowup_fraction
        return {"w": jnp.where(blowup, 1e20, 1.0) * w}

    def batch(self, key: jax.Array, split: str = "train") -> jax.Array:
        if split not in ("train", "valid", "test"):
            raise ValueError(f"unknown split {split!r}")
        shift = 0.0 if split == "train" else self.test_shift
        return shift + self.noise_std * jax.random.normal(key, (self.dim,))

    def loss(self, params: dict, batch: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum(self.curvature * (params["w"] - batch) ** 2)

    def metrics(self, params: dict, batch: jax.Array) -> dict:
        return {"loss": self.loss(params, batch)}


class MomentumState(NamedTuple):
    momentum: Any


class LearnedMomentum(NamedTuple):
    """Heavy-ball SGD with meta-learned step size and momentum (LearnedOptimizer interface)."""

    log_lr: float = float(np.log(0.3))
    momentum: float = 0.5

    def init_meta(self, key: jax.Array) -> dict:
        del key
        return {"log_lr": jnp.asarray(self.log_lr), "momentum": jnp.asarray(self.momentum)}

    def init(self, params: Any) -> MomentumState:
        return MomentumState(jax.tree.map(jnp.zeros_like, params))

    def update(self, theta, grads, state, params, loss=None):
        del params, loss
        momentum = jax.tree.map(lambda m, g: theta["momentum"] * m + g, state.momentum, grads)
        updates = jax.tree.map(lambda m: -jnp.exp(theta["log_lr"]) * m, momentum)
        return updates, MomentumState(momentum)

    @property
    def config(self) -> dict:
        return {"name": "learned_momentum"}


def expected_losses(task: QuadraticTask, log_lr: jax.Array, momentum: jax.Array) -> jax.Array:
    """Exact ``E[L_t]`` for ``t < T`` of one episode whose step ``t`` uses ``theta_t``.

    Args:
        task: the quadratic.
        log_lr: ``(T,)`` per-step log learning rates.
        momentum: ``(T,)`` per-step momentum coefficients.

    Returns:
        ``(T,)`` expected per-step losses (over init and data noise).
    """
    a = task.curvature
    noise_var = task.noise_std**2
    # Per-coordinate covariance of (w, m): entries ww, wm, mm.
    cov = (jnp.full_like(a, task.init_std**2), jnp.zeros_like(a), jnp.zeros_like(a))

    def step(cov, theta_t):
        lr, beta = jnp.exp(theta_t[0]), theta_t[1]
        ww, wm, mm = cov
        loss = 0.5 * jnp.sum(a * (ww + noise_var))
        # (w, m) <- M (w, m) + c xi with M = [[1 - lr a, -lr beta], [a, beta]], c = [lr a, -a].
        m00, m01, m10, m11 = 1 - lr * a, -lr * beta, a, beta
        c0, c1 = lr * a, -a
        new_ww = m00 * m00 * ww + 2 * m00 * m01 * wm + m01 * m01 * mm + noise_var * c0 * c0
        new_wm = m00 * m10 * ww + (m00 * m11 + m01 * m10) * wm + m01 * m11 * mm
        new_wm = new_wm + noise_var * c0 * c1
        new_mm = m10 * m10 * ww + 2 * m10 * m11 * wm + m11 * m11 * mm + noise_var * c1 * c1
        return (new_ww, new_wm, new_mm), loss

    _, losses = jax.lax.scan(step, cov, jnp.stack([log_lr, momentum], axis=1))
    return losses


def simulate_losses(task, opt, theta, key, num_steps, num_runs):
    """Monte Carlo per-step losses of ``num_runs`` independent runs, ``(num_runs, T)``."""

    def run(key):
        init_key, data_key = jax.random.split(key)
        params = task.init(init_key)
        state = opt.init(params)

        def body(carry, t):
            params, state = carry
            batch = task.batch(jax.random.fold_in(data_key, t))
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            updates, state = opt.update(theta, grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        return jax.lax.scan(body, (params, state), jnp.arange(num_steps))[1]

    return jax.vmap(run)(jax.random.split(key, num_runs))


def test_expected_losses_match_simulation():
    task, opt = QuadraticTask(), LearnedMomentum()
    theta = opt.init_meta(None)
    num_steps, num_runs = 12, 20000
    samples = simulate_losses(task, opt, theta, jax.random.PRNGKey(0), num_steps, num_runs)
    mean, stderr = samples.mean(0), samples.std(0) / np.sqrt(num_runs)
    exact = expected_losses(
        task,
        jnp.full(num_steps, theta["log_lr"]),
        jnp.full(num_steps, theta["momentum"]),
    )
    np.testing.assert_array_less(np.abs(mean - exact), 5 * stderr)
    # The moments must actually move over the run, or the comparison above proves little.
    assert exact[-1] < 0.5 * exact[0]
