"""Diagnostics: eps dominance, effective learning rate, monitor(tx), summaries, plots."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import diagnostics as dg
from tests.helpers import make_params

F32 = jnp.float32


def _tree_f32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, F32), tree)


def _grads(params, t, scale=1.0):
  """Deterministic gradients like params, of magnitude ~ ``scale``."""
  leaves, treedef = jax.tree.flatten(params)
  out = []
  for i, p in enumerate(leaves):
    k = jnp.arange(p.size, dtype=F32).reshape(p.shape)
    out.append((scale * (0.5 * p + 0.3 * jnp.sin(0.7 * t + k + i) - 0.1 * (i + 1))).astype(F32))
  return treedef.unflatten(out)


def _run(tx, params, steps, scale=1.0):
  """Runs ``tx`` under jit; returns (params, state, [updates per step])."""

  @jax.jit
  def step(params, state, t):
    updates, state = tx.update(_grads(params, t, scale), state, params)
    return optax.apply_updates(params, updates), state, updates

  state = tx.init(params)
  ups = []
  for t in range(1, steps + 1):
    params, state, u = step(params, state, jnp.asarray(t, F32))
    ups.append(u)
  return params, state, ups


# ----------------------------------------------------------------------------- eps dominance


def _adam_state(count, nu):
  nu = _tree_f32(nu)
  return adam_jax.ScaleByAdamState(
      count=jnp.asarray(count, jnp.int32), mu=jax.tree.map(jnp.zeros_like, nu), nu=nu
  )


def test_eps_dominance_known_answers_on_constructed_state():
  b2, count, eps = 0.9, 3, 1e-4
  bc2 = 1 - b2**count
  # sqrt(v_hat) = 1e-6, 1e-5 (dominated), 1e-3, 1e-1 (not) in "a"; all dominated in "b".
  nu = {
      "a": np.array([1e-12, 1e-10, 1e-6, 1e-2]) * bc2,
      "b": np.full((2, 3), 1e-10 * bc2),
  }
  state = _adam_state(count, nu)
  frac = dg.eps_dominated_fraction(state, eps, b2=b2)
  np.testing.assert_allclose(float(frac), 8 / 10, rtol=1e-6)
  per = dg.eps_dominated_fraction(state, eps, b2=b2, per_leaf=True)
  assert set(per) == {"a", "b"}
  np.testing.assert_allclose(float(per["a"]), 0.5)
  np.testing.assert_allclose(float(per["b"]), 1.0)
  # Without bias correction "a"'s 1e-3 entry would be dominated at eps = 5e-4.
  assert float(dg.eps_dominated_fraction(state, 5e-4, b2=b2, per_leaf=True)["a"]) == 0.5


def test_tiny_gradients_eps_everywhere_normal_gradients_nowhere():
  params = _tree_f32(make_params(0))
  for scale, want in ((1e-12, 1.0), (1.0, 0.0)):
    _, state, _ = _run(adam_jax.adam(1e-3), params, 5, scale=scale)
    assert float(dg.eps_dominated_fraction(state)) == want
    per = dg.eps_dominated_fraction(state, per_leaf=True)
    assert set(per) == {"b", "deep/0", "deep/1", "w"}
    assert all(float(v) == want for v in per.values())


def test_before_first_step_is_nan_and_missing_state_raises():
  params = _tree_f32(make_params(0))
  assert math.isnan(float(dg.eps_dominated_fraction(adam_jax.adam(1e-3).init(params))))
  with pytest.raises(ValueError, match="no Adam-like state"):
    dg.eps_dominated_fraction(optax.sgd(0.1).init(params))
  with pytest.raises(ValueError, match="eps"):
    dg.eps_dominated_fraction(adam_jax.adam(1e-3).init(params), eps=-1.0)
  with pytest.raises(ValueError, match="b2"):
    dg.eps_dominated_fraction(adam_jax.adam(1e-3).init(params), b2=1.0)


def test_amsgrad_states_use_the_running_maximum_with_each_convention():
  count, eps = 1, 1e-8
  tiny, big = np.full(4, 1e-30), np.full(4, 1e-17)
  # adam_jax (torch convention): nu_max is raw, bias-corrected here:
  # sqrt(1e-17 / 1e-3) = 1e-7 > eps.
  ours = adam_jax.ScaleByAmsgradState(
      count=jnp.asarray(count, jnp.int32), mu=jnp.zeros(4, F32),
      nu=jnp.asarray(tiny, F32), nu_max=jnp.asarray(big, F32))
  assert float(dg.eps_dominated_fraction(ours, eps)) == 0.0
  # optax keeps the bias-corrected maximum: sqrt(1e-17) ~ 3e-9 < eps.
  theirs = optax.ScaleByAmsgradState(
      count=jnp.asarray(count, jnp.int32), mu=jnp.zeros(4, F32),
      nu=jnp.asarray(big, F32), nu_max=jnp.asarray(big, F32))
  assert float(dg.eps_dominated_fraction(theirs, eps)) == 1.0


@pytest.mark.slow
def test_state_is_found_inside_wrappers_and_several_states_are_pooled():
  params = {"x": jnp.ones(3, F32), "y": jnp.ones(5, F32)}
  inner = optax.chain(
      optax.clip_by_global_norm(1.0), optax.inject_hyperparams(adam_jax.adam)(1e-3))
  tx = optax.multi_transform(
      {"x": inner, "y": optax.chain(adam_jax.scale_by_adam(), optax.scale(-1e-3))},
      {"x": "x", "y": "y"},
  )
  tx = dg.monitor(tx)
  grads = {"x": jnp.full(3, 1e-12, F32), "y": jnp.ones(5, F32)}
  _, state = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(float(dg.eps_dominated_fraction(state)), 3 / 8)
  per = dg.eps_dominated_fraction(state, per_leaf=True)
  assert {k: float(v) for k, v in per.items()} == {"x": 1.0, "y": 0.0}
  np.testing.assert_allclose(float(state.stats.eps_dominated_fraction), 3 / 8)
  # Two Adam states: no per-leaf eps column in the monitor; summarize leaves it out.
  assert np.all(np.isnan(np.asarray(state.stats.per_leaf.column("eps_dominated_fraction"))))
  assert not any(k.startswith("eps_dominated_fraction/") for k in dg.summarize(state))


def test_optax_adam_state_is_read_too():
  params = _tree_f32(make_params(0))
  with jax.numpy_dtype_promotion("standard"):  # optax mixes float and int32 powers
    _, tiny, _ = _run(optax.adam(1e-3), params, 3, scale=1e-12)
    _, normal, _ = _run(optax.adam(1e-3), params, 3)
  assert isinstance(tiny[0], optax.ScaleByAdamState)
  assert float(dg.eps_dominated_fraction(tiny)) == 1.0
  assert float(dg.eps_dominated_fraction(normal)) == 0.0


def test_eps_dominance_matches_numpy_after_training():
  params = _tree_f32(make_params(1))
  eps, b2 = 0.4, 0.99
  _, state, _ = _run(adam_jax.adam(1e-2, b2=b2, eps=eps), params, 7)
  adam_state = state[0]
  v = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(adam_state.nu)])
  want = np.mean(np.sqrt(v / (1 - b2**7)) < eps)
  assert 0 < want < 1
  np.testing.assert_allclose(float(dg.eps_dominated_fraction(state, eps, b2=b2)), want)


# ----------------------------------------------------------------------------- effective lr


def test_effective_learning_rate_percentiles_match_numpy_and_schedule_uses_count():
  params = _tree_f32(make_params(2))
  eps, b2 = 1e-3, 0.95
  sched = optax.linear_schedule(1e-2, 1e-3, 10)
  _, state, _ = _run(adam_jax.adam(sched, b2=b2, eps=eps), params, 4)
  qs = (0, 10, 50, 90, 100)
  got = dg.effective_learning_rate(state, sched, eps=eps, b2=b2, percentiles=qs)
  nu = state[0].nu
  lr = float(sched(4))
  assert set(got) == {"b", "deep/0", "deep/1", "w"}
  for name, leaf in (("w", nu["w"]), ("b", nu["b"]), ("deep/1", nu["deep"][1])):
    v_hat = np.asarray(leaf, np.float64) / (1 - b2**4)
    want = np.percentile(lr / (np.sqrt(v_hat) + eps), qs)
    np.testing.assert_allclose(np.asarray(got[name]), want, rtol=1e-5)
  with pytest.raises(ValueError, match="percentiles"):
    dg.effective_learning_rate(state, 1e-3, percentiles=(50, 101))


# ----------------------------------------------------------------------------- eps advisor


def test_advise_eps_tiny_gradients_gets_a_smaller_eps_that_fixes_it():
  params = _tree_f32(make_params(3))
  _, state, _ = _run(adam_jax.adam(1e-3, eps=1e-8), params, 5, scale=1e-10)
  advice = dg.advise_eps(state, 1e-8)
  assert advice.dominated_fraction == 1.0
  roots = np.sqrt(np.concatenate(
      [np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(state[0].nu)]) / (1 - 0.999**5))
  assert advice.suggested_eps <= 0.1 * np.percentile(roots, 1) * (1 + 1e-5)
  assert math.log10(advice.suggested_eps) == round(math.log10(advice.suggested_eps))
  assert "try eps=" in advice.message and "\n" not in advice.message
  assert float(dg.eps_dominated_fraction(state, advice.suggested_eps)) <= 0.01


def test_advise_eps_keeps_a_good_eps_and_leaves_dead_elements_out():
  # Half of "w" never sees a gradient (like constant input pixels).
  params = {"w": jnp.ones(10, F32)}
  grads = {"w": jnp.asarray([0.0] * 5 + [0.1] * 5, F32)}
  tx = adam_jax.adam(1e-3)
  _, state = tx.update(grads, tx.init(params))
  assert float(dg.eps_dominated_fraction(state)) == 0.5
  advice = dg.advise_eps(state)
  assert advice.dominated_fraction == 0.0
  assert advice.suggested_eps == 1e-8
  assert "keep it" in advice.message and "50.0%" in advice.message
  before = dg.advise_eps(tx.init(params))
  assert math.isnan(before.dominated_fraction) and before.suggested_eps == 1e-8
  with pytest.raises(ValueError, match="tolerance"):
    dg.advise_eps(state, tolerance=0.0)


# ----------------------------------------------------------------------------- monitor


ALIASES = {
    "adam": lambda: adam_jax.adam(1e-2),
    "adam_l2": lambda: adam_jax.adam(1e-2, weight_decay=1e-2),
    "adamw": lambda: adam_jax.adamw(1e-2, weight_decay=1e-2),
    "amsgrad": lambda: adam_jax.amsgrad(1e-2),
    "nadam": lambda: adam_jax.nadam(1e-2),
    "nadamw": lambda: adam_jax.nadamw(1e-2, weight_decay=1e-2),
    "radam": lambda: adam_jax.radam(1e-2),
    "adamax": lambda: adam_jax.adamax(1e-2),
    "adamaxw": lambda: adam_jax.adamaxw(1e-2, weight_decay=1e-2),
    "adabelief": lambda: adam_jax.adabelief(1e-2),
}


@pytest.mark.slow
def test_monitor_updates_are_identical_to_the_wrapped_alias():
  full = _tree_f32(make_params(4))
  params = {"w": full["w"], "b": full["b"]}  # two leaves keep the ten compiles cheap

  def both(tx, params):
    """Five steps of ``tx`` and of ``monitor(tx)`` from the same params, in one program."""
    mon = dg.monitor(tx)

    def body(carry, t):
      p, s, pm, sm = carry
      u, s = tx.update(_grads(p, t), s, p)
      um, sm = mon.update(_grads(pm, t), sm, pm)
      return (optax.apply_updates(p, u), s, optax.apply_updates(pm, um), sm), (u, um)

    ts = jnp.arange(1, 6, dtype=F32)
    carry = (params, tx.init(params), params, mon.init(params))
    (_, s, _, sm), (u, um) = jax.lax.scan(body, carry, ts)
    return s, sm, u, um

  for name, make in ALIASES.items():
    s, sm, u, um = jax.jit(both, static_argnums=0)(make(), params)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(um)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(sm.inner_state)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
    assert int(sm.stats.count) == 5


def _rms(x):
  x = np.asarray(x, np.float64)
  return np.sqrt(np.mean(x * x))


@pytest.mark.parametrize("packed", [True, False])
def test_monitor_stats_match_numpy(monkeypatch, packed):
  if not packed:  # every leaf takes the path of leaves of 2**24 elements and more
    monkeypatch.setattr(dg._monitor, "_EXACT_F32_COUNT", 0)
  params = _tree_f32(make_params(5))
  eps, b2 = 0.5, 0.99
  tx = dg.monitor(adam_jax.adam(3e-2, b2=b2, eps=eps), eps=eps, b2=b2)
  p_before, _, _ = _run(tx, params, 3)
  p_after, state, ups = _run(tx, params, 4)
  stats = state.stats
  u_leaves = [np.asarray(u, np.float64) for u in jax.tree.leaves(ups[-1])]
  p_leaves = [np.asarray(p, np.float64) for p in jax.tree.leaves(p_before)]
  assert stats.per_leaf.names == ("b", "deep/0", "deep/1", "w")
  got_u = np.asarray(stats.per_leaf.column("update_rms"))
  got_p = np.asarray(stats.per_leaf.column("param_rms"))
  got_r = np.asarray(stats.per_leaf.column("update_to_param_ratio"))
  assert got_u.shape == (4,)
  for u, p, gu, gp, gr in zip(u_leaves, p_leaves, got_u, got_p, got_r):
    np.testing.assert_allclose(gu, _rms(u), rtol=1e-5)
    np.testing.assert_allclose(gp, _rms(p), rtol=1e-5)
    np.testing.assert_allclose(gr, _rms(u) / _rms(p), rtol=1e-5)
  all_u = np.concatenate([u.ravel() for u in u_leaves])
  all_p = np.concatenate([p.ravel() for p in p_leaves])
  np.testing.assert_allclose(float(stats.update_rms), _rms(all_u), rtol=1e-5)
  np.testing.assert_allclose(float(stats.param_rms), _rms(all_p), rtol=1e-5)
  np.testing.assert_allclose(
      float(stats.update_to_param_ratio),
      np.linalg.norm(all_u) / np.linalg.norm(all_p), rtol=1e-5)
  nus = [np.asarray(v, np.float64) for v in jax.tree.leaves(state.inner_state[0].nu)]
  nu = np.concatenate([v.ravel() for v in nus])
  want = np.mean(np.sqrt(nu / (1 - b2**4)) < eps)
  assert 0 < want < 1
  np.testing.assert_allclose(float(stats.eps_dominated_fraction), want)
  np.testing.assert_allclose(
      np.asarray(stats.per_leaf.column("eps_dominated_fraction")),
      [np.mean(np.sqrt(v / (1 - b2**4)) < eps) for v in nus], rtol=1e-6)
  assert int(stats.nonfinite_grads) == 0


def test_monitor_ratio_for_zero_params_and_no_adam_state():
  params = {"z": jnp.zeros(3, F32), "o": jnp.ones(2, F32)}
  tx = dg.monitor(optax.sgd(0.5))
  grads = {"z": jnp.ones(3, F32), "o": jnp.zeros(2, F32)}
  _, state = tx.update(grads, tx.init(params), params)
  per_leaf = state.stats.per_leaf.as_dict()
  assert float(per_leaf["update_to_param_ratio/z"]) == math.inf
  assert float(per_leaf["update_to_param_ratio/o"]) == 0.0
  with pytest.raises(ValueError, match="unknown statistic"):
    state.stats.per_leaf.column("loss")
  np.testing.assert_allclose(float(state.stats.update_to_param_ratio),
                             math.sqrt(3 * 0.25) / math.sqrt(2), rtol=1e-6)
  assert math.isnan(float(state.stats.eps_dominated_fraction))
  with pytest.raises(ValueError, match="needs params"):
    tx.update(grads, state)


def test_monitor_counts_nonfinite_gradients_cumulatively_and_saturates():
  params = {"a": jnp.ones(4, F32), "b": jnp.ones(2, F32)}
  tx = dg.monitor(adam_jax.adam(1e-3))
  step = jax.jit(tx.update)
  state = tx.init(params)
  nan, inf = float("nan"), float("inf")
  _, state = step({"a": jnp.asarray([nan, 1, inf, 2], F32), "b": jnp.asarray([-inf, 0], F32)},
                  state, params)
  assert int(state.stats.nonfinite_grads) == 3
  _, state = step({"a": jnp.ones(4, F32), "b": jnp.asarray([1, nan], F32)}, state, params)
  assert int(state.stats.nonfinite_grads) == 4
  _, state = step({"a": jnp.ones(4, F32), "b": jnp.ones(2, F32)}, state, params)
  assert int(state.stats.nonfinite_grads) == 4
  big = state._replace(stats=state.stats._replace(
      counters=jnp.asarray([5, 2**31 - 2], jnp.int32)))
  _, big = step({"a": jnp.full(4, nan, F32), "b": jnp.ones(2, F32)}, big, params)
  assert int(big.stats.nonfinite_grads) == 2**31 - 1
  assert step._cache_size() == 1


def test_monitor_under_vmap_matches_separate_runs():
  params = _tree_f32(make_params(6))
  lrs = jnp.asarray([1e-3, 1e-2, 1e-1], F32)

  def train(lr):
    tx = dg.monitor(adam_jax.adam(lr))
    state = tx.init(params)
    p = params
    for t in range(1, 4):
      u, state = tx.update(_grads(p, jnp.asarray(t, F32)), state, p)
      p = optax.apply_updates(p, u)
    return state.stats

  batched = jax.jit(jax.vmap(train))(lrs)
  ratios = np.asarray(batched.update_to_param_ratio)
  assert ratios.shape == (3,)
  for i, lr in enumerate([1e-3, 1e-2, 1e-1]):
    single = jax.jit(train)(jnp.asarray(lr, F32))
    np.testing.assert_allclose(ratios[i], float(single.update_to_param_ratio), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(batched.per_leaf.values)[i],
                               np.asarray(single.per_leaf.values), rtol=1e-5)
  assert ratios[0] < ratios[1] < ratios[2]


@pytest.mark.slow
def test_monitor_inside_chain_and_summarize():
  params = _tree_f32(make_params(7))
  plain = optax.chain(optax.clip_by_global_norm(0.5), adam_jax.adam(1e-2))
  wrapped = optax.chain(optax.clip_by_global_norm(0.5), dg.monitor(adam_jax.adam(1e-2)))
  _, _, u_ref = _run(plain, params, 3)
  p_last, state, u_mon = _run(wrapped, params, 3)
  for a, b in zip(jax.tree.leaves(u_ref), jax.tree.leaves(u_mon)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  summary = dg.summarize(state, p_last, learning_rate=1e-2)
  stats = state[1].stats
  assert all(isinstance(v, float) for v in summary.values())
  assert summary["step"] == 3.0
  per_leaf = stats.per_leaf.as_dict()
  assert summary["update_to_param_ratio/w"] == float(per_leaf["update_to_param_ratio/w"])
  assert summary["param_rms/deep/1"] == float(per_leaf["param_rms/deep/1"])
  assert summary["update_rms"] == float(stats.update_rms)
  assert summary["eps_dominated_fraction"] == float(stats.eps_dominated_fraction)
  assert summary["nonfinite_grads"] == 0.0
  assert "eps_dominated_fraction/w" in summary and "effective_lr_p50/b" in summary
  eff = dg.effective_learning_rate(state, 1e-2)
  assert summary["effective_lr_p95/w"] == float(eff["w"][2])
  # Without a monitor, params give param_rms.
  _, adam_state, _ = _run(adam_jax.adam(1e-2), params, 2)
  plain_summary = dg.summarize(adam_state, params)
  np.testing.assert_allclose(plain_summary["param_rms/b"], _rms(params["b"]), rtol=1e-6)
  assert "update_rms/w" not in plain_summary and "eps_dominated_fraction" in plain_summary
  with pytest.raises(ValueError, match="nothing to summarize"):
    dg.summarize(optax.sgd(0.1).init(params), params)
  batched = jax.tree.map(lambda x: jnp.stack([x, x]), state)
  with pytest.raises(ValueError, match="not a scalar"):
    dg.summarize(batched)


@pytest.mark.slow
def test_monitor_with_flax_nnx_optimizer_has_clean_leaf_names():
  nnx = pytest.importorskip("flax.nnx")

  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.hidden = nnx.Linear(4, 8, rngs=rngs)
      self.out = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
      return self.out(nnx.relu(self.hidden(x)))

  model = MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, dg.monitor(adam_jax.adam(1e-2)), wrt=nnx.Param)
  x, y = jnp.ones((5, 4), F32), jnp.asarray([0, 1, 0, 1, 1], jnp.int32)

  @nnx.jit
  def step(model, optimizer):
    loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    optimizer.update(model, nnx.grad(loss)(model))

  step(model, optimizer)
  step(model, optimizer)
  summary = dg.summarize(optimizer.opt_state)
  assert summary["step"] == 2.0
  assert {k for k in summary if k.startswith("update_to_param_ratio/")} == {
      f"update_to_param_ratio/{m}/{p}" for m in ("hidden", "out") for p in ("bias", "kernel")}
  assert summary["update_to_param_ratio/hidden/kernel"] > 0


# ----------------------------------------------------------------------------- plots


@pytest.mark.slow
def test_plot_history_rows_and_columns_draw_the_same_figure(tmp_path):
  pytest.importorskip("matplotlib")
  rows = [
      {"step": float(s), "update_to_param_ratio": 1e-3 / s, "update_to_param_ratio/w": 2e-3 / s,
       "eps_dominated_fraction": 0.1 * s, "eps_dominated_fraction/w": 0.05 * s}
      for s in range(1, 6)
  ]
  cols = {k: [r[k] for r in rows] for k in rows[0]}
  a = dg.plot_history(rows, tmp_path / "rows", title="t")
  b = dg.plot_history(cols, tmp_path / "cols", title="t")
  c = dg.plot_history(rows[:3], tmp_path / "short", title="t")
  assert a.endswith("diagnostics.png")
  with open(a, "rb") as fa, open(b, "rb") as fb, open(c, "rb") as fc:
    da, db, dc = fa.read(), fb.read(), fc.read()
  assert da[:8] == b"\x89PNG\r\n\x1a\n"
  assert da == db and da != dc
  with pytest.raises(ValueError, match="empty"):
    dg.plot_history([], tmp_path)
  with pytest.raises(ValueError, match="no update_to_param_ratio"):
    dg.plot_history([{"loss": 1.0}], tmp_path)


def test_learnt_distance_states_are_not_read_as_adam():
  # D-Adaptation and Prodigy keep d^2-scaled second moments: not Adam's eps regime.
  params = {"w": jnp.ones(3, F32)}
  for tx in (adam_jax.prodigy(), adam_jax.dadapt_adamw()):
    with pytest.raises(ValueError, match="no Adam-like state"):
      dg.eps_dominated_fraction(tx.init(params))
  tx = optax.chain(adam_jax.prodigy(), adam_jax.adam(1e-3))
  _, state = tx.update({"w": jnp.ones(3, F32)}, tx.init(params), params)
  # Only Adam's state is read: one element per param, none below eps.
  assert dg.eps_dominated_fraction(state, per_leaf=True).keys() == {"w"}
  assert float(dg.eps_dominated_fraction(state)) == 0.0
