"""Meta-learning: gradients through several optimizer steps are finite and correct.

With ``eps_root = 0`` the derivative of ``sqrt(v)`` is infinite where a gradient
entry is exactly zero (``v = 0``), and ``inf * 0`` makes the meta-gradient NaN
(optax issue #882). A positive ``eps_root`` keeps it finite; these tests use
parameters that get exactly zero gradient to exercise that.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax

STEPS = 5
EPS_ROOT = 1e-8

ALIASES = {
    "adam": lambda lr: adam_jax.adam(lr, eps_root=EPS_ROOT),
    "amsgrad": lambda lr: adam_jax.amsgrad(lr, eps_root=EPS_ROOT),
    "nadam": lambda lr: adam_jax.nadam(lr, eps_root=EPS_ROOT),
    "radam": lambda lr: adam_jax.radam(lr, b2=0.9, eps_root=EPS_ROOT),
    "adamax": lambda lr: adam_jax.adamax(lr),
    "adabelief": lambda lr: adam_jax.adabelief(lr),
}


def _problem(dtype):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((16, 3))
  x[:, 2] = 0.0  # w[2] never gets a gradient
  y = x @ np.array([1.0, -2.0, 0.0]) + 0.1 * rng.standard_normal(16)
  params = {"w": jnp.asarray(rng.standard_normal(3), dtype),
            "unused": jnp.ones(2, dtype)}  # exactly zero gradient throughout
  return jnp.asarray(x, dtype), jnp.asarray(y, dtype), params


def _loss(params, x, y):
  return jnp.mean((x @ params["w"] - y) ** 2) + 0.0 * jnp.sum(params["unused"])


def _trained_loss(make, lr, params, x, y):
  """Validation loss after ``STEPS`` Adam steps from ``params``, differentiable."""
  tx = make(lr)

  def body(_, carry):
    p, s = carry
    g = jax.grad(_loss)(p, x, y)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  p, _ = jax.lax.fori_loop(0, STEPS, body, (params, tx.init(params)))
  return _loss(p, x[::2], y[::2])


def _check(make, lr, params, x, y, direction, h):
  """Meta-gradient, and the loss on both sides of a step along ``(1, direction)``."""
  f = lambda lr, p: _trained_loss(make, lr, p, x, y)
  shift = lambda s: jax.tree.map(lambda p, d: p + s * d, params, direction)
  return jax.grad(f, argnums=(0, 1))(lr, params), f(lr + h, shift(h)), f(lr - h, shift(-h))


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_meta_gradients_are_finite_and_match_finite_differences(name):
  with jax.enable_x64(True):
    x, y, params = _problem(jnp.float64)
    direction = {"w": jnp.asarray([0.3, -0.5, 0.7]), "unused": jnp.asarray([1.0, -1.0])}
    h = 1e-6
    (d_lr, d_params), up, down = jax.jit(_check, static_argnums=(0, 6))(
        ALIASES[name], jnp.float64(0.05), params, x, y, direction, h)
    assert np.isfinite(float(d_lr))
    for leaf in jax.tree.leaves(d_params):
      assert np.isfinite(np.asarray(leaf)).all()
    # Central difference in float64 along (lr, params) = (1, direction): the
    # derivative is right, not only finite.
    fd = (float(up) - float(down)) / (2 * h)
    got = float(d_lr) + sum(float(jnp.vdot(a, b)) for a, b in
                            zip(jax.tree.leaves(d_params), jax.tree.leaves(direction)))
    assert got == pytest.approx(fd, rel=1e-4, abs=1e-8)
    assert abs(float(d_lr)) > 1e-3  # the learning rate matters: not a vacuous check


def test_meta_gradient_in_float32():
  """The same in float32: finite, and the float64 value to float32 accuracy."""
  make = ALIASES["adam"]
  grad_lr = jax.jit(jax.grad(lambda lr, p, x, y: _trained_loss(make, lr, p, x, y)))
  x, y, params = _problem(jnp.float32)
  d_lr = grad_lr(jnp.float32(0.05), params, x, y)
  assert np.isfinite(float(d_lr))
  with jax.enable_x64(True):
    x64, y64, p64 = _problem(jnp.float64)
    want = grad_lr(jnp.float64(0.05), p64, x64, y64)
  assert float(d_lr) == pytest.approx(float(want), rel=1e-3)
