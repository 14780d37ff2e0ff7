"""Non-finite gradients: ``optax.apply_if_finite`` around any alias skips the step exactly.

A step whose gradients hold a NaN or an inf must leave the params and every moment
bit for bit as they were, must not advance the step count (bias correction and
schedules), and must be counted. The library's answer is optax's wrapper, with
``max_consecutive_errors`` large enough never to give up.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import schedules
from tests import helpers

NEVER_GIVE_UP = 2**31 - 1
BAD = {3: np.nan, 4: np.inf, 7: -np.inf}  # step -> value put into one gradient entry

OPTIMIZERS = {
    # Every alias with its defaults, and variants with schedules and options.
    **{name: functools.partial(helpers.make_alias, name, 3e-2) for name in helpers.ALIASES},
    "adamw-schedules-amsgrad": lambda: adam_jax.adamw(
        schedules.warmup_cosine(3e-2, 3, 12, init_value=1e-3),
        weight_decay=schedules.step_decay(0.1, 2), amsgrad=True),
    "nadamw-decay": lambda: adam_jax.nadamw(3e-2, weight_decay=0.1),
    "radam-b2": lambda: adam_jax.radam(3e-2, b2=0.9),
    "adabelief-float32-nu": lambda: adam_jax.adabelief(3e-2, nu_dtype=jnp.float32),
    "adamw8bit-blocks-of-2": lambda: adam_jax.adamw8bit(3e-2, block_size=2,
                                                        min_quantized_size=0),
    "schedule_free_adamw-warmup": lambda: adam_jax.schedule_free_adamw(3e-2, warmup_steps=3),
    "prodigy-d0-decay": lambda: adam_jax.prodigy(d0=1e-3, weight_decay=0.1),
    "dadapt_adamw-d0": lambda: adam_jax.dadapt_adamw(d0=1e-3),
}


def _params(dtype):
  rng = np.random.default_rng(1)
  return {"w": jnp.asarray(rng.standard_normal((3, 2)), dtype), "none": None,
          "deep": [jnp.asarray(rng.standard_normal(4), dtype), jnp.zeros((0,), dtype)]}


def _grads(params, t, bad):
  leaves, treedef = jax.tree.flatten(params)
  out = []
  for i, p in enumerate(leaves):
    k = jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape)
    g = (0.5 * p.astype(jnp.float32) + jnp.sin(0.7 * t + k + i)).astype(p.dtype)
    if i == 0:  # one entry of one leaf goes bad
      g = g.ravel().at[1].set(bad.astype(p.dtype)).reshape(p.shape)
    out.append(g)
  return treedef.unflatten(out)


def _bits(tree):
  return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_bad_steps_are_skipped_bit_for_bit(name):
  dtype = jnp.float16 if "float16" in name else jnp.float32
  tx = optax.apply_if_finite(OPTIMIZERS[name](), max_consecutive_errors=NEVER_GIVE_UP)

  @jax.jit
  def step(params, state, t, bad):
    updates, state = tx.update(_grads(params, t, bad), state, params)
    return optax.apply_updates(params, updates), state

  params = _params(dtype)
  state = tx.init(params)
  # The reference run never sees the bad steps.
  ref_params, ref_state = params, state
  t_clean = 0
  for t in range(10):
    bad = jnp.float32(BAD.get(t, 0.0))
    new_params, new_state = step(params, state, jnp.float32(t_clean), bad)
    if t in BAD:
      # Skipped: params and the wrapped state (moments, counts) untouched.
      assert _bits(new_params) == _bits(params)
      assert _bits(new_state.inner_state) == _bits(state.inner_state)
      assert not bool(new_state.last_finite)
    else:
      # Taken: exactly the step of the run that never saw a bad gradient.
      ref_params, ref_state = step(ref_params, ref_state, jnp.float32(t_clean), bad)
      assert _bits(new_params) == _bits(ref_params)
      assert _bits(new_state.inner_state) == _bits(ref_state.inner_state)
      assert bool(new_state.last_finite)
      if t_clean:  # ADOPT's first step only sets its second moment
        assert _bits(new_params) != _bits(params)
      t_clean += 1
    params, state = new_params, new_state
    for x in jax.tree.leaves((params, state)):
      assert np.isfinite(np.asarray(x, np.float64)).all()
  assert int(state.total_notfinite) == len(BAD)
  assert int(jax.tree.leaves(state.inner_state)[0]) == 10 - len(BAD)  # the count


def test_consecutive_bad_steps_are_counted():
  tx = optax.apply_if_finite(adam_jax.adam(1e-2), max_consecutive_errors=NEVER_GIVE_UP)
  params = {"w": jnp.ones(3)}
  update = jax.jit(tx.update)
  state = tx.init(params)
  nan = {"w": jnp.asarray([1.0, jnp.nan, 1.0])}
  for k in range(1, 6):
    updates, state = update(nan, state, params)
    assert int(state.notfinite_count) == k and int(state.total_notfinite) == k
    assert np.array_equal(np.asarray(updates["w"]), np.zeros(3))
  _, state = update({"w": jnp.ones(3)}, state, params)
  assert int(state.notfinite_count) == 0 and int(state.total_notfinite) == 5
  assert bool(state.last_finite)


def test_without_the_wrapper_a_nan_poisons_the_moments():
  """Why the pairing matters: one bad gradient and Adam's state is NaN for good."""
  tx = adam_jax.adam(1e-2)
  params = {"w": jnp.ones(3)}
  update = jax.jit(tx.update)
  state = tx.init(params)
  _, state = update({"w": jnp.asarray([1.0, jnp.nan, 1.0])}, state, params)
  for _ in range(3):
    updates, state = update({"w": jnp.ones(3)}, state, params)
  assert np.isnan(np.asarray(updates["w"])[1])
  assert np.isfinite(np.asarray(updates["w"])[[0, 2]]).all()
