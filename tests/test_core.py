"""jit, vmap, dtypes, validation and errors of the core transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests import helpers
from tests.references import numpy_adam as ref

# --- jit and recompilation ------------------------------------------------------------


def test_jit_equals_eager():
  params = helpers.make_params(seed=4)
  tx = adam_jax.adamw(1e-2, weight_decay=0.1, amsgrad=True)
  jitted = helpers.run_jax(tx, params, 10, jit=True)
  eager = helpers.run_jax(tx, params, 10, jit=False)
  helpers.assert_traj_close(jitted, eager, rtol=1e-6, atol=1e-7)


# --- vmap over hyperparameters ---------------------------------------------------------


def _train_quadratic(tx, steps=25):
  params = {"w": jnp.linspace(-1.0, 1.0, 6)}
  state = tx.init(params)

  def body(carry, _):
    params, state = carry
    grads = jax.grad(lambda p: jnp.sum((p["w"] - 0.3) ** 2 * jnp.arange(1.0, 7.0)))(params)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(body, (params, state), None, length=steps)
  return params["w"]


def test_vmap_over_hyperparameters_equals_separate_runs():
  lrs = jnp.asarray([1e-3, 1e-2, 5e-2, 1e-1], jnp.float32)
  b1s = jnp.asarray([0.0, 0.5, 0.9, 0.95], jnp.float32)
  wds = jnp.asarray([0.0, 1e-2, 1e-1, 0.5], jnp.float32)
  eps = jnp.asarray([1e-8, 1e-6, 1e-4, 1e-3], jnp.float32)

  def train(lr, b1, wd, e):
    return _train_quadratic(adam_jax.adamw(lr, b1=b1, weight_decay=wd, eps=e, b2=0.99))

  together = jax.jit(jax.vmap(train))(lrs, b1s, wds, eps)
  for i in range(4):
    alone = _train_quadratic(adam_jax.adamw(float(lrs[i]), b1=float(b1s[i]),
                                            weight_decay=float(wds[i]), eps=float(eps[i]),
                                            b2=0.99))
    np.testing.assert_allclose(np.asarray(together[i]), np.asarray(alone), rtol=2e-5,
                               atol=2e-6)
  # The runs really differ from each other.
  assert float(jnp.abs(together[0] - together[3]).max()) > 1e-2


@pytest.mark.parametrize("name", ["radam", "adamax", "adabelief", "nadam"])
def test_vmap_over_betas_for_variants(name):
  make = {
      "radam": lambda b2: adam_jax.radam(1e-2, b2=b2),
      "adamax": lambda b2: adam_jax.adamax(1e-2, b2=b2),
      "adabelief": lambda b2: adam_jax.adabelief(1e-2, b2=b2),
      "nadam": lambda b2: adam_jax.nadam(1e-2, b2=b2),
  }[name]
  b2s = jnp.asarray([0.9, 0.99, 0.999], jnp.float32)
  together = jax.vmap(lambda b2: _train_quadratic(make(b2)))(b2s)
  for i, b2 in enumerate((0.9, 0.99, 0.999)):
    alone = _train_quadratic(make(b2))
    np.testing.assert_allclose(np.asarray(together[i]), np.asarray(alone), rtol=1e-4,
                               atol=1e-5)


# --- dtypes -----------------------------------------------------------------------------


def test_optax_float16_zero_gradients_give_nan():
  # The bug ours fixes (every alias: tests/test_every_alias.py): optax's eps
  # underflows to zero in float16.
  params = {"w": jnp.ones(4, jnp.float16)}
  # optax gives NaN here (its eps underflows to zero in float16): the bug we fix.
  with jax.numpy_dtype_promotion("standard"):
    tx = optax.adam(1e-3)
    u, _ = tx.update({"w": jnp.zeros(4, jnp.float16)}, tx.init(params), params)
  assert bool(jnp.any(jnp.isnan(u["w"])))


def test_float16_updates_match_float32_reference():
  params = helpers.make_params(seed=5, dtype=np.float16)
  got = helpers.run_jax(adam_jax.adam(1e-2, eps=1e-6), params, 20, dtype=jnp.float16)
  want = ref.adam(helpers.leaves64(params), helpers.grad_leaves, 20, lr=1e-2, eps=1e-6)
  helpers.assert_traj_close(got, want, rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_moment_dtypes_are_kept(dtype):
  params = {"w": jnp.ones((2, 3), jnp.float32), "h": jnp.ones(3, dtype)}
  tx = adam_jax.adam(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=dtype, amsgrad=True)
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  adam_state = state[0]
  assert adam_state.mu["w"].dtype == jnp.bfloat16
  assert adam_state.nu["w"].dtype == dtype
  assert adam_state.nu_max["h"].dtype == dtype
  assert updates["w"].dtype == jnp.float32 and updates["h"].dtype == dtype


def test_default_moment_dtype_is_param_dtype():
  params = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(2, jnp.float32),
            "c": jnp.ones(2, jnp.complex64)}
  state = adam_jax.scale_by_adam().init(params)
  assert state.mu["a"].dtype == jnp.bfloat16 and state.nu["a"].dtype == jnp.bfloat16
  assert state.mu["c"].dtype == jnp.complex64 and state.nu["c"].dtype == jnp.float32


def test_bfloat16_moments_track_float32_trajectory():
  params = helpers.make_params(seed=6)
  low = helpers.run_jax(adam_jax.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
                        params, 50)
  full = helpers.run_jax(adam_jax.adam(1e-2), params, 50)
  helpers.assert_traj_close(low, full, rtol=2e-2, atol=2e-2)


def test_float64_with_x64_matches_reference_tightly():
  with jax.enable_x64(True):
    params = helpers.make_params(seed=7, dtype=np.float64)
    got = helpers.run_jax(adam_jax.adamw(3e-2, weight_decay=0.1, amsgrad=True), params, 60,
                          dtype=jnp.float64)
  want = ref.adam(helpers.leaves64(params), helpers.grad_leaves, 60, lr=3e-2, weight_decay=0.1,
                  decoupled=True, amsgrad=True)
  helpers.assert_traj_close(got, want, rtol=1e-12, atol=1e-12)


# --- validation and errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: adam_jax.adam(-1e-3), "learning_rate"),
        (lambda: adam_jax.adam(1e-3, b1=1.0), "b1"),
        (lambda: adam_jax.adam(1e-3, b1=-0.1), "b1"),
        (lambda: adam_jax.adamw(1e-3, b2=1.5), "b2"),
        (lambda: adam_jax.adam(1e-3, eps=-1e-8), "eps"),
        (lambda: adam_jax.adam(1e-3, eps_root=-1.0), "eps_root"),
        (lambda: adam_jax.adamw(1e-3, weight_decay=-0.1), "weight_decay"),
        (lambda: adam_jax.radam(1e-3, b2=float("nan")), "b2"),
        (lambda: adam_jax.adabelief(1e-3, b1=np.array([0.9, 1.2])), "b1"),
        (lambda: adam_jax.schedules.step_decay(1e-3, step_size=0), "step_size"),
        (lambda: adam_jax.schedules.step_decay(1e-3, step_size=5, gamma=1.5), "gamma"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_parameter(make, name):
  with pytest.raises(ValueError, match=name):
    make()


def test_valid_range_is_in_the_message():
  with pytest.raises(ValueError, match=r"b1 must be in \[0.0, 1.0\), got 1.0"):
    adam_jax.adam(1e-3, b1=1.0)


def test_gradient_structure_mismatch_says_so():
  tx = adam_jax.adam(1e-3)
  state = tx.init({"w": jnp.ones(2), "b": jnp.ones(2)})
  with pytest.raises(ValueError, match="structure differs"):
    tx.update({"w": jnp.ones(2)}, state, {"w": jnp.ones(2)})


def test_weight_decay_without_params_says_so():
  tx = adam_jax.adamw(1e-3, weight_decay=0.1)
  params = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match="needs the params"):
    tx.update(params, tx.init(params))


# --- pieces -----------------------------------------------------------------------------


def test_coupled_and_decoupled_decay_differ_as_documented():
  params = {"w": jnp.asarray([2.0, -2.0])}
  grads = {"w": jnp.zeros(2)}
  coupled = adam_jax.adam(0.1, weight_decay=0.5)
  decoupled = adam_jax.adamw(0.1, weight_decay=0.5)
  u_c, _ = coupled.update(grads, coupled.init(params), params)
  u_d, _ = decoupled.update(grads, decoupled.init(params), params)
  # Coupled: the decay gradient is normalised by Adam -> a step of lr per coordinate.
  np.testing.assert_allclose(np.asarray(u_c["w"]), [-0.1, 0.1], rtol=1e-5)
  # Decoupled: lr * wd * param.
  np.testing.assert_allclose(np.asarray(u_d["w"]), [-0.1, 0.1], rtol=1e-6)
  params = {"w": jnp.asarray([4.0, -4.0])}
  u_c, _ = coupled.update(grads, coupled.init(params), params)
  u_d, _ = decoupled.update(grads, decoupled.init(params), params)
  np.testing.assert_allclose(np.asarray(u_c["w"]), [-0.1, 0.1], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(u_d["w"]), [-0.2, 0.2], rtol=1e-6)


def test_weight_decay_schedule_follows_count():
  tx = adam_jax.add_weight_decay(lambda count: 0.1 * (count + 1).astype(jnp.float32))
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  zeros = {"w": jnp.zeros(2)}
  seen = []
  for _ in range(3):
    u, state = tx.update(zeros, state, params)
    seen.append(float(u["w"][0]))
  np.testing.assert_allclose(seen, [0.1, 0.2, 0.3], rtol=1e-6)


def test_maximize_ascends():
  params = {"w": jnp.zeros(2)}
  tx = adam_jax.adam(0.1, maximize=True)
  grads = {"w": jnp.asarray([1.0, -1.0])}
  u, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(u["w"]), [0.1, -0.1], rtol=1e-5)


def test_count_saturates_instead_of_wrapping():
  tx = adam_jax.scale_by_adam()
  params = {"w": jnp.ones(2)}
  state = tx.init(params)._replace(count=jnp.asarray(2**31 - 1, jnp.int32))
  u, state = tx.update({"w": jnp.ones(2)}, state, params)
  assert int(state.count) == 2**31 - 1
  assert bool(jnp.all(jnp.isfinite(u["w"])))


# --- schedules --------------------------------------------------------------------------


def test_step_decay_is_torch_steplr():
  s = adam_jax.schedules.step_decay(0.1, step_size=3, gamma=0.5)
  want = [0.1 * 0.5 ** (k // 3) for k in range(10)]
  np.testing.assert_allclose([float(s(k)) for k in range(10)], want, rtol=1e-6)


def test_exponential_lr_is_torch_exponentiallr():
  s = adam_jax.schedules.exponential_lr(0.1, gamma=0.9)
  np.testing.assert_allclose([float(s(k)) for k in range(6)], [0.1 * 0.9**k for k in range(6)],
                             rtol=1e-6)
  t = adam_jax.schedules.exponential_decay(0.1, transition_steps=1, decay_rate=0.9)
  np.testing.assert_allclose([float(t(k)) for k in range(6)], [0.1 * 0.9**k for k in range(6)],
                             rtol=1e-6)


def test_cosine_annealing_is_torch_formula():
  s = adam_jax.schedules.cosine_annealing(0.1, t_max=10, eta_min=0.01)
  want = [0.01 + 0.5 * 0.09 * (1 + np.cos(np.pi * k / 10)) for k in range(11)]
  np.testing.assert_allclose([float(s(k)) for k in range(11)], want, rtol=1e-5)


def test_schedules_accept_traced_values():
  def lr_at(init, k):
    return adam_jax.schedules.cosine_annealing(init, t_max=10, eta_min=0.01)(k)

  got = jax.vmap(lr_at, in_axes=(0, None))(jnp.asarray([0.1, 0.2]), 5)
  np.testing.assert_allclose(np.asarray(got), [0.055, 0.105], rtol=1e-5)


def test_warmup_cosine_rises_then_decays():
  s = adam_jax.schedules.warmup_cosine(1.0, warmup_steps=4, total_steps=12)
  values = [float(s(k)) for k in range(13)]
  np.testing.assert_allclose(values[:5], [0.0, 0.25, 0.5, 0.75, 1.0], rtol=1e-6)
  assert all(a >= b for a, b in zip(values[4:], values[5:]))
  assert values[12] == pytest.approx(0.0, abs=1e-7)


def test_first_update_uses_schedule_at_count_zero():
  tx = adam_jax.adam(adam_jax.schedules.step_decay(0.1, step_size=1, gamma=0.5))
  params = {"w": jnp.zeros(1)}
  state = tx.init(params)
  steps = []
  for _ in range(3):
    u, state = tx.update({"w": jnp.ones(1)}, state, params)
    steps.append(-float(u["w"][0]))
  np.testing.assert_allclose(steps, [0.1, 0.05, 0.025], rtol=1e-4)
