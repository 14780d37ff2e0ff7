"""The int32 step counter saturates; bias correction stays finite at both ends of a run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import _numerics as numerics
from adam_jax import schedules

INT32_MAX = 2**31 - 1
LR, B1, B2, EPS = 1e-2, 0.9, 0.999, 1e-8
G = np.array([1.0, -2.0, 0.0, 3e-3])


def _set_counts(state, value):
  """Every ``count`` field in a (chained) optimizer state set to ``value``."""

  def visit(node):
    if isinstance(node, tuple) and hasattr(node, "_fields"):
      node = type(node)(*(visit(x) for x in node))
      if "count" in node._fields:
        node = node._replace(count=jnp.asarray(value, jnp.int32))
      return node
    if isinstance(node, (tuple, list)):
      return type(node)(visit(x) for x in node)
    return node

  return visit(state)


def _counts(state):
  found = []

  def visit(node):
    if isinstance(node, tuple) and hasattr(node, "_fields") and "count" in node._fields:
      found.append(int(node.count))
    if isinstance(node, (tuple, list)):
      for x in node:
        visit(x)

  visit(state)
  return found


# One step from zero moments once the bias corrections are 1 (t -> infinity): float64.
_m = (1 - B1) * G
_v = (1 - B2) * G * G
LATE = {
    "adam": (lambda: adam_jax.adam(LR), _m / (np.sqrt(_v) + EPS)),
    "adamw-schedules": (
        lambda: adam_jax.adamw(schedules.warmup_cosine(LR, 10, 100, end_value=LR),
                               weight_decay=schedules.step_decay(0.0, 1000)),
        _m / (np.sqrt(_v) + EPS)),
    "amsgrad": (lambda: adam_jax.amsgrad(LR), _m / (np.sqrt(_v) + EPS)),
    "nadam": (lambda: adam_jax.nadam(LR), (B1 * _m + (1 - B1) * G) / (np.sqrt(_v) + EPS)),
    "radam": (lambda: adam_jax.radam(LR), _m / (np.sqrt(_v) + EPS)),
    "adamax": (lambda: adam_jax.adamax(LR), _m / (np.abs(G) + EPS)),
    "adabelief": (lambda: adam_jax.adabelief(LR),
                  _m / (np.sqrt((1 - B2) * (G - _m) ** 2 + 1e-16) + 1e-16)),
}


def test_safe_increment_saturates_under_jit():
  inc = jax.jit(numerics.safe_increment)
  assert int(inc(jnp.asarray(INT32_MAX - 1, jnp.int32))) == INT32_MAX
  top = inc(jnp.asarray(INT32_MAX, jnp.int32))
  assert int(top) == INT32_MAX and top.dtype == jnp.int32


@pytest.mark.parametrize("name", sorted(LATE))
def test_step_at_saturated_count(name):
  make, late = LATE[name]
  tx = make()
  params = {"w": jnp.ones(4, jnp.float32)}
  update = jax.jit(tx.update)
  state = _set_counts(tx.init(params), INT32_MAX - 1)
  grads = {"w": jnp.asarray(G, jnp.float32)}
  for _ in range(2):  # reaches 2**31 - 1, then stays there
    updates, state = update(grads, state, params)
    assert _counts(state) and set(_counts(state)) == {INT32_MAX}, _counts(state)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
    assert np.isfinite(np.asarray(updates["w"])).all()
  # The first of the two steps, from zero moments, with bias corrections of 1.
  first, _ = update(grads, _set_counts(tx.init(params), INT32_MAX - 1), params)
  np.testing.assert_allclose(np.asarray(first["w"], np.float64), -LR * late, rtol=2e-5)


def test_bias_correction_at_the_ends():
  for count in (1, 2, 1000, INT32_MAX):
    c = jnp.asarray(count, jnp.int32)
    for b in (0.9, 0.999, 0.9999, jnp.float32(0.999)):
      got = float(numerics.bias_correction(b, c, jnp.float16))
      want = 1 - float(b) ** count
      assert math.isfinite(got) and got > 0
      assert got == pytest.approx(want, rel=1e-5 if isinstance(b, float) else 1e-3)


def test_first_step_with_float16_moments():
  """Count 1, float16 params and moments: finite, and the float64 answer rounded."""
  g16 = np.array([1e-4, -3.0, 0.0, 6e-8, 100.0], np.float16)  # 6e-8: subnormal
  params = {"w": jnp.ones(5, jnp.float16)}
  grads = {"w": jnp.asarray(g16)}
  for tx in (adam_jax.adam(LR), adam_jax.adam(LR, mu_dtype=jnp.float16, nu_dtype=jnp.float16),
             adam_jax.nadam(LR), adam_jax.radam(LR), adam_jax.adabelief(LR),
             adam_jax.adamax(LR), adam_jax.amsgrad(LR)):
    state = tx.init(params)
    assert jax.tree.leaves(state)[1].dtype == jnp.float16
    updates, state = jax.jit(tx.update)(grads, state, params)
    assert updates["w"].dtype == jnp.float16
    for x in jax.tree.leaves((updates, state)):
      assert np.isfinite(np.asarray(x, np.float64)).all()
  # Adam's first step is lr * g / (|g| + eps): +-lr except where g is 0 or below eps.
  tx = adam_jax.adam(LR, mu_dtype=jnp.float16, nu_dtype=jnp.float16)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  g = g16.astype(np.float64)
  want = -LR * g / (np.abs(g) + EPS)
  np.testing.assert_allclose(np.asarray(updates["w"], np.float64), want, rtol=1e-3)


def test_float32_second_moment_holds_large_float16_gradients():
  """(1 - b2) g**2 passes float16's maximum for |g| > 8100; nu_dtype=float32 keeps it."""
  params = {"w": jnp.ones(2, jnp.float16)}
  grads = {"w": jnp.asarray([3e4, -6e4], jnp.float16)}
  tx = adam_jax.adam(LR, nu_dtype=jnp.float32)
  update = jax.jit(tx.update)
  state = tx.init(params)
  for _ in range(3):
    updates, state = update(grads, state, params)
  nu = np.asarray(state[0].nu["w"], np.float64)
  np.testing.assert_allclose(nu, (1 - B2**3) * np.array([3e4, 6e4]) ** 2, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(updates["w"], np.float64), [-LR, LR], rtol=1e-3)


def test_saturated_schedule_state_in_a_chain():
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   adam_jax.adam(schedules.exponential_lr(LR, 0.5)))
  params = {"w": jnp.ones(4, jnp.float32)}
  state = _set_counts(tx.init(params), INT32_MAX)
  updates, state = jax.jit(tx.update)({"w": jnp.asarray(G, jnp.float32)}, state, params)
  assert set(_counts(state)) == {INT32_MAX}
  # 0.5 ** (2**31 - 1) underflows to a zero learning rate: the update is exactly 0.
  assert np.array_equal(np.asarray(updates["w"]), np.zeros(4))


def test_8bit_step_at_saturated_count():
  tx = adam_jax.adam8bit(LR, block_size=2, min_quantized_size=0)
  params = {"w": jnp.ones(4, jnp.float32)}
  update = jax.jit(tx.update)
  state = _set_counts(tx.init(params), INT32_MAX - 1)
  grads = {"w": jnp.asarray(G, jnp.float32)}
  first, state = update(grads, state, params)
  updates, state = update(grads, state, params)
  assert set(_counts(state)) == {INT32_MAX}
  assert all(np.isfinite(np.asarray(x, np.float64)).all() for x in jax.tree.leaves(state))
  assert np.isfinite(np.asarray(updates["w"])).all()
  # Bias corrections of 1, to the 8-bit codec's accuracy.
  np.testing.assert_allclose(np.asarray(first["w"], np.float64), -LR * LATE["adam"][1],
                             rtol=2e-2, atol=1e-4 * LR)
