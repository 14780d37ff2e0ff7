"""adam_jax inside optax pipelines and Flax training loops."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests import helpers

OPTAX_EQUIVALENTS = {
    "adam": (lambda: adam_jax.adam(1e-2), lambda: optax.adam(1e-2)),
    "adamw": (lambda: adam_jax.adamw(1e-2, weight_decay=0.1),
              lambda: optax.adamw(1e-2, weight_decay=0.1)),
    "nadam": (lambda: adam_jax.nadam(1e-2), lambda: optax.nadam(1e-2)),
    "nadamw": (lambda: adam_jax.nadamw(1e-2, weight_decay=0.1),
               lambda: optax.nadamw(1e-2, weight_decay=0.1)),
    # torch's Adamax adds eps inside the max, optax outside: equal at eps=0.
    "adamax": (lambda: adam_jax.adamax(1e-2, eps=0.0), lambda: optax.adamax(1e-2, eps=0.0)),
    "adabelief": (lambda: adam_jax.adabelief(1e-2), lambda: optax.adabelief(1e-2)),
}


@pytest.mark.parametrize("name", sorted(OPTAX_EQUIVALENTS))
def test_agrees_with_optax_where_conventions_match(name):
  ours, theirs = OPTAX_EQUIVALENTS[name]
  params = helpers.make_params(seed=2)
  got = helpers.run_jax(ours(), params, 40)
  with jax.numpy_dtype_promotion("standard"):  # optax mixes int counts and floats
    want = helpers.run_jax(theirs(), params, 40)
  helpers.assert_traj_close(got, want)


def test_state_fields_are_found_by_optax_tree_tools():
  tx = adam_jax.adamw(1e-3)
  state = tx.init({"w": jnp.zeros(3)})
  assert optax.tree.get(state, "mu")["w"].shape == (3,)
  assert optax.tree.get(state, "nu")["w"].shape == (3,)
  assert int(optax.tree.get(state, "count")) == 0


def _loss(params):
  return jnp.sum((params["w"] - 1.0) ** 2) + jnp.sum(params["b"] ** 2)


def _train(tx, steps=30):
  params = {"w": jnp.zeros(4), "b": jnp.ones(2)}
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(_loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return params, state


def test_chain_with_clipping_equals_manual_clipping():
  tx = optax.chain(optax.clip_by_global_norm(0.5), adam_jax.adam(1e-1))
  params, _ = _train(tx)
  assert float(_loss(params)) < float(_loss({"w": jnp.zeros(4), "b": jnp.ones(2)}))
  # Clipping a gradient whose norm is below the threshold is a no-op: the chain
  # then equals plain adam on a rescaled problem; check the first update directly.
  p0 = {"w": jnp.zeros(4), "b": jnp.ones(2)}
  g = jax.grad(_loss)(p0)
  u_chain, _ = tx.update(g, tx.init(p0), p0)
  norm = optax.tree.norm(g)
  g_clipped = jax.tree.map(lambda x: x * 0.5 / norm, g)
  plain = adam_jax.adam(1e-1)
  u_plain, _ = plain.update(g_clipped, plain.init(p0), p0)
  chex_close(u_chain, u_plain)


def chex_close(a, b, rtol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-7)


def test_inject_hyperparams_changes_learning_rate():
  tx = optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-1)
  params = {"w": jnp.zeros(4), "b": jnp.ones(2)}
  state = tx.init(params)
  g = jax.grad(_loss)(params)
  u1, _ = tx.update(g, state, params)
  state.hyperparams["learning_rate"] = jnp.asarray(1e-2)
  u2, _ = tx.update(g, state, params)
  np.testing.assert_allclose(np.asarray(u2["w"]), np.asarray(u1["w"]) / 10, rtol=1e-5)


@pytest.mark.slow
@jax.numpy_dtype_promotion("standard")  # optax.MultiSteps mixes int and float counts
def test_multisteps_accumulates_gradients():
  k = 3
  tx = optax.MultiSteps(adam_jax.adam(1e-1), every_k_schedule=k)
  params = {"w": jnp.zeros(4), "b": jnp.ones(2)}
  state = tx.init(params)
  grads = [jax.tree.map(lambda x, i=i: x * (i + 1), jax.grad(_loss)(params)) for i in range(k)]
  for i, g in enumerate(grads):
    u, state = tx.update(g, state, params)
    if i < k - 1:
      assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(u))
  mean_g = jax.tree.map(lambda *xs: sum(xs) / k, *grads)
  plain = adam_jax.adam(1e-1)
  want, _ = plain.update(mean_g, plain.init(params), params)
  chex_close(u, want)


def test_apply_if_finite_skips_nan_step():
  tx = optax.apply_if_finite(adam_jax.adam(1e-1), max_consecutive_errors=5)
  params = {"w": jnp.zeros(4), "b": jnp.ones(2)}
  state = tx.init(params)
  bad = {"w": jnp.full(4, jnp.nan), "b": jnp.ones(2)}
  u, new_state = jax.jit(tx.update)(bad, state, params)
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(u))
  assert int(new_state.notfinite_count) == 1
  chex_close(new_state.inner_state, state.inner_state)


def test_masked_only_updates_selected_leaves():
  tx = optax.masked(adam_jax.adam(1e-1), {"w": True, "b": False})
  params = {"w": jnp.zeros(4), "b": jnp.ones(2)}
  g = jax.grad(_loss)(params)
  u, _ = tx.update(g, tx.init(params), params)
  np.testing.assert_array_equal(np.asarray(u["b"]), np.asarray(g["b"]))
  assert float(jnp.abs(u["w"]).min()) > 0.09


def test_weight_decay_mask_callable_and_tree_agree():
  params = {"w": jnp.ones(3), "b": jnp.ones(2)}
  g = jax.tree.map(jnp.zeros_like, params)
  by_tree = adam_jax.adamw(1e-1, weight_decay=0.5, mask={"w": True, "b": False})
  by_fn = adam_jax.adamw(1e-1, weight_decay=0.5,
                         mask=lambda p: jax.tree.map(lambda x: x.ndim == 1 and x.size == 3, p))
  u1, _ = by_tree.update(g, by_tree.init(params), params)
  u2, _ = by_fn.update(g, by_fn.init(params), params)
  chex_close(u1, u2)
  np.testing.assert_allclose(np.asarray(u1["w"]), -0.05 * np.ones(3), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(u1["b"]), np.zeros(2))


def test_flax_nnx_optimizer_trains():
  from flax import nnx

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((64, 5)), jnp.float32)
  w_true = jnp.asarray(rng.standard_normal((5, 1)), jnp.float32)
  y = x @ w_true
  model = nnx.Linear(5, 1, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, adam_jax.adamw(5e-2, weight_decay=1e-4), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    opt.update(model, grads)
    return loss

  first = float(step(model, opt))
  for _ in range(150):
    last = float(step(model, opt))
  assert last < 1e-2 * first
  adam_state = opt.opt_state[0]
  assert int(adam_state.count[...]) == 151
  assert adam_state.mu["kernel"][...].shape == (5, 1)


def test_flax_linen_train_state_trains():
  import flax.linen as nn
  from flax.training import train_state

  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((64, 3)), jnp.float32)
  y = jnp.sum(x, axis=1, keepdims=True)
  model = nn.Dense(1)
  params = model.init(jax.random.key(0), x)
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=adam_jax.adam(5e-2))

  @jax.jit
  def step(state):
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean((state.apply_fn(p, x) - y) ** 2))(state.params)
    return state.apply_gradients(grads=grads), loss

  state, first = step(state)
  for _ in range(150):
    state, last = step(state)
  assert float(last) < 1e-2 * float(first)
