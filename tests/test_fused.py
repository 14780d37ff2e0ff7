"""The multi-tensor engine computes what the per-leaf path computes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import fused as fused_engine

FACTORIES = {
    "adam": lambda fused: adam_jax.adam(1e-2, fused=fused),
    "adam-l2-mask": lambda fused: adam_jax.adam(
        1e-2, weight_decay=0.1, fused=fused,
        mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    "adamw-schedule": lambda fused: adam_jax.adamw(
        adam_jax.schedules.warmup_cosine(1e-2, 3, 20), weight_decay=0.1, fused=fused),
    "amsgrad": lambda fused: adam_jax.amsgrad(1e-2, fused=fused),
    "nadam": lambda fused: adam_jax.nadam(1e-2, fused=fused),
    "nadamw": lambda fused: adam_jax.nadamw(1e-2, fused=fused),
    "radam": lambda fused: adam_jax.radam(1e-2, fused=fused),
    "adamax": lambda fused: adam_jax.adamax(1e-2, fused=fused),
    "adamaxw": lambda fused: adam_jax.adamaxw(1e-2, fused=fused),
    "adabelief": lambda fused: adam_jax.adabelief(1e-2, fused=fused),
    "adam-bf16-moments": lambda fused: adam_jax.adam(
        1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16, fused=fused),
    "maximize": lambda fused: adam_jax.adam(1e-2, maximize=True, fused=fused),
}


def _params():
  rng = np.random.default_rng(0)
  f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  return {
      "dense": [{"w": f32(8, 4), "b": f32(4)} for _ in range(3)],
      "norm": {"scale": f32(4), "bias": f32(4)},
      "scalar": f32(),
      "half": jnp.asarray(rng.standard_normal(6), jnp.bfloat16),
      "big": f32(300),
      "empty": jnp.zeros((0, 2), jnp.float32),
  }


def _run(tx, steps=8):
  params = _params()
  state = tx.init(params)

  @jax.jit
  def step(params, state, t):
    grads = jax.tree.map(
        lambda p: (jnp.sin(p.astype(jnp.float32) * t) + 0.1 * p.astype(jnp.float32)).astype(
            p.dtype), params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for t in range(steps):
    params, state = step(params, state, jnp.asarray(t + 1.0, jnp.float32))
  return params, state


@pytest.fixture
def one_device(monkeypatch):
  """The tests run with 8 simulated devices; the engine only runs with one."""
  monkeypatch.setattr(fused_engine, "_single_device", lambda: True)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_fused_equals_per_leaf(name, one_device):
  p_fused, s_fused = _run(FACTORIES[name](True))
  p_plain, s_plain = _run(FACTORIES[name](False))
  assert jax.tree.structure(s_fused) == jax.tree.structure(s_plain)
  for a, b in zip(jax.tree.leaves((p_fused, s_fused)), jax.tree.leaves((p_plain, s_plain))):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=1e-5, atol=1e-6)


def test_small_leaves_really_share_one_computation():
  calls = []

  def leaf_fn(g, m):
    calls.append(g.shape)
    return g * 2, m + g

  cols = [[jnp.ones(3), jnp.ones((2, 2)), jnp.ones(5, jnp.bfloat16), jnp.ones(10**6)],
          [jnp.zeros(3), jnp.zeros((2, 2)), jnp.zeros(5, jnp.bfloat16), jnp.zeros(10**6)]]
  out = fused_engine.map_leaves(leaf_fn, cols, fused=True)
  # float32 small leaves: one bucket of 3 + 4 elements; bf16 alone; the big leaf alone.
  assert sorted(calls) == sorted([(7,), (5,), (10**6,)])
  assert out[1][0].shape == (2, 2) and float(out[1][0][1, 1]) == 2.0
  assert out[2][1].dtype == jnp.bfloat16
  calls.clear()
  fused_engine.map_leaves(leaf_fn, cols, fused=False)
  assert len(calls) == 4


def test_state_structure_mirrors_params_with_engine_on(one_device):
  params = _params()
  state = adam_jax.scale_by_adam(fused=True).init(params)
  _, new_state = adam_jax.scale_by_adam(fused=True).update(params, state, params)
  assert jax.tree.structure(new_state.mu) == jax.tree.structure(params)
  assert optax.tree.get(new_state, "nu")["dense"][0]["w"].shape == (8, 4)


def test_engine_is_opt_in(one_device):
  assert fused_engine.enabled(None) is False
  assert fused_engine.enabled(False) is False
  assert fused_engine.enabled(True) is True


def test_engine_stays_off_with_several_devices():
  assert jax.device_count() == 8
  assert fused_engine.enabled(True) is False


def test_engine_really_runs_in_the_equality_tests(one_device, monkeypatch):
  calls = []
  real = fused_engine.map_leaves
  monkeypatch.setattr(fused_engine, "map_leaves",
                      lambda fn, cols, *, fused, **kw: calls.append(fused) or real(
                          fn, cols, fused=fused, **kw))
  _run(FACTORIES["adam"](True), steps=1)
  assert calls and all(calls)


def test_donated_step_does_not_copy_state(one_device):
  params = _params()
  tx = adam_jax.adam(1e-2, fused=True)
  state = tx.init(params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
  text = compiled.as_text()
  # Every donated param and moment buffer is aliased to an output.
  n_donated = len(jax.tree.leaves((params, state)))
  assert text.count("may-alias") + text.count("must-alias") >= n_donated - 2
