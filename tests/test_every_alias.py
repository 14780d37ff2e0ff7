"""The checks every alias must pass, driven by the registry (``adam_jax.optimizers()``).

An alias added to ``adam_jax/aliases.py`` with ``@_register`` is in this table at once:
jit without recompiling, vmap over its hyperparameters, low-precision and odd leaves,
checkpoint resume and sharded state. Options an alias needs here live in
``tests/helpers.ALIAS_OPTIONS``.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import checkpoint
from tests import helpers

ALIASES = helpers.ALIASES


def _grads(params, k):
  return jax.tree.map(lambda a: jnp.sin(a + k).astype(a.dtype), params)


def _train(tx, params, steps):
  """``steps`` steps of ``tx`` on the gradients of sum(sin(p) * p)."""
  state = tx.init(params)
  for _ in range(steps):
    g = jax.grad(lambda q: sum(jnp.sum(jnp.sin(a) * a) for a in jax.tree.leaves(q)))(params)
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
  return params, state


def test_registry_is_every_alias_in_the_public_surface():
  def is_alias(name):
    obj = getattr(adam_jax, name)
    if not inspect.isfunction(obj) or name.startswith(("scale_by_", "add_")):
      return False
    params = list(inspect.signature(obj).parameters)
    return bool(params) and params[0] == "learning_rate"

  aliases = {name for name in adam_jax.__all__ if is_alias(name)}
  assert set(adam_jax.optimizers()) == aliases
  for name in adam_jax.optimizers():
    assert adam_jax.get_optimizer(name) is getattr(adam_jax, name)
  with pytest.raises(ValueError, match="unknown optimizer 'adamz'.*adamw"):
    adam_jax.get_optimizer("adamz")


@pytest.mark.parametrize("name", ALIASES)
def test_jit_compiles_once_while_the_learning_rate_changes(name):
  params = jax.tree.map(jnp.asarray, helpers.make_params(seed=0))
  traces = []

  @jax.jit
  def step(p, s, g, lr):
    traces.append(1)
    u, s = helpers.make_alias(name, lr).update(g, s, p)
    return optax.apply_updates(p, u), s

  state = helpers.make_alias(name, 1e-2).init(params)
  for k, lr in enumerate((1e-3, 1e-2, 3e-2, 1e-1)):
    params, new_state = step(params, state, _grads(params, k), jnp.asarray(lr, jnp.float32))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    state = new_state
  assert len(traces) == 1 and step._cache_size() == 1
  inner = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "_fields"))
           if hasattr(s, "_fields") and s._fields]
  assert inner and all(isinstance(s, tuple) for s in inner)  # NamedTuple states
  assert int(jax.tree.leaves(inner[0])[0]) == 4  # the count leads every state


@pytest.mark.parametrize("name", ALIASES)
def test_vmap_over_hyperparameters_matches_separate_runs(name):
  params = {"w": jnp.asarray(np.linspace(-1, 1, 8).reshape(4, 2), jnp.float32),
            "b": jnp.ones(2), "deep": jnp.zeros(())}
  has_b1 = helpers.alias_takes(name, "b1")

  def train(lr, b1):
    options = {"b1": b1} if has_b1 else {}
    return _train(helpers.make_alias(name, lr, **options), params, 4)[0]

  lrs = jnp.asarray([1e-2, 5e-2], jnp.float32)
  b1s = jnp.asarray([0.9, 0.5], jnp.float32)
  batched = jax.jit(jax.vmap(train))(lrs, b1s)
  single_run = jax.jit(train)
  for i in range(2):
    single = single_run(lrs[i], b1s[i])
    for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
      np.testing.assert_allclose(a[i], b, rtol=2e-5, atol=1e-6)
  assert not np.allclose(batched["w"][0], batched["w"][1])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", ALIASES)
def test_low_precision_params_give_finite_updates_in_their_dtype(name, dtype):
  params = {"w": jnp.zeros((4, 3), dtype), "b": jnp.ones(3, dtype), "deep": jnp.zeros((), dtype)}
  options = {"nu_dtype": jnp.float32} if helpers.alias_takes(name, "nu_dtype") else {}
  tx = helpers.make_alias(name, 1e-2, **options)
  state = tx.init(params)
  update = jax.jit(tx.update)
  # Zero gradients first: optax's float16 eps underflows there and gives NaN. Then two
  # steps of ones: ADOPT and Mechanic move only from their second step with a gradient.
  ones = jax.tree.map(jnp.ones_like, params)
  for grads in (jax.tree.map(jnp.zeros_like, params), ones, ones):
    u, state = update(grads, state, params)
    for leaf in jax.tree.leaves(u):
      assert leaf.dtype == dtype
      assert bool(jnp.all(jnp.isfinite(leaf)))
  assert any(bool(jnp.any(leaf != 0)) for leaf in jax.tree.leaves(u))


@pytest.mark.parametrize("name", ALIASES)
def test_scalars_empty_arrays_and_none_leaves(name):
  params = {"s": jnp.asarray(2.0), "e": jnp.zeros((0, 3)), "n": None, "v": [jnp.ones(2), None]}
  tx = helpers.make_alias(name, 1e-2)
  state = tx.init(params)
  grads = {"s": jnp.asarray(1.0), "e": jnp.zeros((0, 3)), "n": None, "v": [jnp.ones(2), None]}
  update = jax.jit(tx.update)
  for _ in range(3):  # ADOPT and Mechanic move only from their second step
    updates, state = update(grads, state, params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert updates["e"].shape == (0, 3)
  assert float(updates["s"]) < 0


@pytest.mark.parametrize("name", ALIASES)
def test_checkpoint_resume_is_bitwise_identical(name, tmp_path):
  params = jax.tree.map(jnp.asarray, helpers.make_params(seed=3))
  tx = helpers.make_alias(name, 3e-2)

  @jax.jit
  def step(carry, k):
    p, s = carry
    u, s = tx.update(_grads(p, k), s, p)
    return optax.apply_updates(p, u), s

  def run(carry, start, stop):
    for k in range(start, stop):
      carry = step(carry, jnp.asarray(k, jnp.float32))
    return carry

  carry = jax.device_put((params, tx.init(params)), jax.devices()[0])
  want = run(carry, 0, 8)
  path = checkpoint.save(tmp_path / "ckpt", run(carry, 0, 3))
  like = jax.eval_shape(lambda p: (p, helpers.make_alias(name, 3e-2).init(p)), params)
  got = run(checkpoint.restore(path, like=like), 3, 8)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert np.asarray(g).tobytes() == np.asarray(w).tobytes()


@pytest.mark.parametrize("name", ALIASES)
def test_state_is_sharded_like_the_params_and_the_step_matches_one_device(name):
  P = jax.sharding.PartitionSpec
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  specs = {"w": P("data", None), "b": P(), "s": P()}
  rng = np.random.default_rng(0)
  values = {"w": rng.standard_normal((16, 8)).astype(np.float32),
            "b": rng.standard_normal(8).astype(np.float32), "s": np.float32(0.5)}
  place = lambda tree: {k: jax.device_put(v, jax.NamedSharding(mesh, specs[k]))
                        for k, v in tree.items()}
  tx = helpers.make_alias(name, 1e-2)

  def run(params):
    state = jax.jit(tx.init)(params)
    step = jax.jit(lambda p, s, k: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(_grads(p, k), s, p)))
    hlo = step.lower(params, state, jnp.float32(0)).compile().as_text()
    for k in range(3):
      params, state = step(params, state, jnp.float32(k))
    return params, state, hlo

  params0 = place(values)
  state0 = jax.jit(tx.init)(params0)
  for path, leaf in jax.tree_util.tree_flatten_with_path(state0)[0]:
    key = path[-1]
    if (isinstance(key, jax.tree_util.DictKey) and key.key in values
        and leaf.shape == np.shape(values[key.key])):
      assert leaf.sharding.is_equivalent_to(params0[key.key].sharding, leaf.ndim), path
  params, state, hlo = run(params0)
  for p, p0 in zip(jax.tree.leaves(params), jax.tree.leaves(params0)):
    assert p.sharding.is_equivalent_to(p0.sharding, p.ndim)
  if name not in helpers.REDUCES_OVER_ELEMENTS:
    collectives = ("all-gather", "all-reduce", "all-to-all", "collective-permute",
                   "reduce-scatter")
    assert not [c for c in collectives if c in hlo]
  want = run(jax.device_put(values, jax.devices()[0]))
  for got, w in zip(jax.tree.leaves((params, state)), jax.tree.leaves(want[:2])):
    np.testing.assert_allclose(np.asarray(got), np.asarray(w), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", [jnp.int32, jnp.bool_, jnp.uint8], ids=["int32", "bool", "uint8"])
@pytest.mark.parametrize("name", ALIASES)
def test_integer_and_boolean_leaves_are_refused_by_name_with_the_fix(name, kind):
  """No alias casts an integer leaf to zeros or fails without naming it; the fix the
  message gives (optax.multi_transform with optax.set_to_zero) then trains the rest."""
  params = {"layer": {"w": jnp.ones((3, 2)), "steps": jnp.ones((4,), kind)}, "b": jnp.ones(2)}
  tx = helpers.make_alias(name, 1e-2)
  for init in (tx.init, jax.jit(tx.init)):
    with pytest.raises(ValueError, match=r"'layer/steps' has dtype .*multi_transform"):
      init(params)
  labels = jax.tree.map(
      lambda p: "train" if jnp.issubdtype(p.dtype, jnp.inexact) else "frozen", params)
  fixed = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  state = fixed.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(3):  # ADOPT and Mechanic move only from their second step
    updates, state = jax.jit(fixed.update)(grads, state, params)
  assert not np.any(np.asarray(updates["layer"]["steps"]))
  assert np.any(np.asarray(updates["layer"]["w"]))


@pytest.mark.parametrize("name", ALIASES)
def test_no_state_array_is_empty_unless_its_param_is(name):
  """orbax refuses zero-size arrays, and Flax would give them their param's sharding."""
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3), "s": jnp.ones(())}
  for options in ({}, {"min_quantized_size": None}):  # 8-bit: quantized and float32 leaves
    if options and not helpers.alias_takes(name, "min_quantized_size"):
      continue
    state = helpers.make_alias(name, 1e-2, **options).init(params)
    assert all(np.size(x) for x in jax.tree.leaves(state)), state
