"""Prodigy, D-Adaptation, Mechanic and reduce-on-plateau.

Trajectories against the float64 references of ``tests/references/numpy_lr_free.py``
(in float64, where they agree to rounding, and in float32), agreement with optax's
``contrib`` versions where the conventions coincide, the plateau rule against a
transcription of torch's, jit without recompilation, vmap over traced
hyperparameters, state sharded like the params, checkpoint resume bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType

import adam_jax
from adam_jax import checkpoint
from tests import helpers
from tests import test_checkpoint as ckpt
from tests import test_sharding as shard
from tests.references import numpy_lr_free as ref

STEPS = 60


def _run(tx, params, steps, dtype=jnp.float32, grads_fn=helpers.grad_leaves):
  """A jitted step on host-computed gradients; returns (trajectory, state, compiled step)."""
  traj, state, _, step = helpers.run_host_gradients(tx, params, steps, dtype, grads_fn)
  return traj, state, step


MASK = {"w": True, "b": False, "deep": [False, True]}
DECAYS = [False, False, True, True]  # leaves in tree order: b, deep[0], deep[1], w


def _masked_wd(weight_decay):
  return [weight_decay if d else 0.0 for d in DECAYS]


def _lr_schedule(count):
  c = jnp.minimum(count, STEPS).astype(jnp.asarray(1.0).dtype)  # float64 under x64
  return 0.5 + 0.5 * jnp.cos(jnp.pi * c / STEPS)


def _lr_schedule_np(k):
  return 0.5 + 0.5 * np.cos(np.pi * min(k, STEPS) / STEPS)


# name: (tx factory, reference(params) -> (traj, scalars), state scalar getter)
CASES = {
    "prodigy": (
        lambda: adam_jax.prodigy(),
        lambda p: ref.prodigy(p, helpers.grad_leaves, STEPS),
        lambda s: s[0].d,
    ),
    "prodigy-options": (
        lambda: adam_jax.prodigy(b1=0.8, b2=0.99, b3=0.9, eps=1e-3, d0=1e-3, d_coef=0.5,
                                 weight_decay=0.1, bias_correction=True),
        lambda p: ref.prodigy(p, helpers.grad_leaves, STEPS, b1=0.8, b2=0.99, b3=0.9, eps=1e-3,
                              d0=1e-3, d_coef=0.5, weight_decay=0.1, bias_correction=True),
        lambda s: s[0].d,
    ),
    "prodigy-schedule-safeguard": (
        lambda: adam_jax.prodigy(_lr_schedule, safeguard_warmup=True),
        lambda p: ref.prodigy(p, helpers.grad_leaves, STEPS, lr=_lr_schedule_np,
                              safeguard_warmup=True),
        lambda s: s[0].d,
    ),
    "dadapt_adamw": (
        lambda: adam_jax.dadapt_adamw(),
        lambda p: ref.dadapt_adam(p, helpers.grad_leaves, STEPS),
        lambda s: s.d,
    ),
    "dadapt_adamw-options": (
        lambda: adam_jax.dadapt_adamw(_lr_schedule, b1=0.8, b2=0.99, eps=1e-3, d0=1e-3,
                                      weight_decay=0.1, bias_correction=True),
        lambda p: ref.dadapt_adam(p, helpers.grad_leaves, STEPS, lr=_lr_schedule_np, b1=0.8,
                                  b2=0.99, eps=1e-3, d0=1e-3, weight_decay=0.1,
                                  bias_correction=True),
        lambda s: s.d,
    ),
    "mechanic_adamw": (
        lambda: adam_jax.mechanic_adamw(),
        lambda p: ref.mechanic(p, helpers.grad_leaves, STEPS, ref.adamw_step_fn()),
        lambda s: jnp.sum(s.s),
    ),
    "mechanize-options": (
        lambda: adam_jax.mechanize(adam_jax.adamw(0.5, b2=0.99, weight_decay=0.1),
                                   weight_decay=0.1, eps=1e-6, s_init=1e-4,
                                   betas=(0.9, 0.999)),
        lambda p: ref.mechanic(p, helpers.grad_leaves, STEPS,
                               ref.adamw_step_fn(lr=0.5, b2=0.99, weight_decay=0.1),
                               weight_decay=0.1, eps=1e-6, s_init=1e-4, betas=(0.9, 0.999)),
        lambda s: jnp.sum(s.s),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_trajectory_and_learnt_scale_match_the_reference(name):
  make_tx, make_ref, scalar = CASES[name]
  params = helpers.make_params(seed=1, dtype=np.float64)
  with jax.enable_x64(True):
    got, state, _ = _run(make_tx(), params, STEPS, dtype=jnp.float64)
    got_scalar = float(scalar(state))
  want, scalars = make_ref(helpers.leaves64(params))
  helpers.assert_traj_close(got, want, rtol=1e-9, atol=1e-10)
  np.testing.assert_allclose(got_scalar, scalars[-1], rtol=1e-9)
  # The learnt scale moved far from where it started: the test sees the method at work.
  assert scalars[-1] > 100 * max(scalars[1], 1e-8)


# float32: the estimate is sensitive early, where x_0 - x_k and the scale are tiny
# (x_0 - x_k loses its digits to cancellation when x has moved by ~1e-6), so the
# float32 runs are held to the reference with a larger d_0 / s_init.
FLOAT32 = {
    "prodigy": (lambda: adam_jax.prodigy(d0=1e-2),
                lambda p: ref.prodigy(p, helpers.grad_leaves, STEPS, d0=1e-2)),
    "dadapt_adamw": (lambda: adam_jax.dadapt_adamw(d0=1e-3, weight_decay=0.1, mask=MASK),
                     None),
    "mechanic_adamw": (lambda: adam_jax.mechanic_adamw(),
                       lambda p: ref.mechanic(p, helpers.grad_leaves, STEPS,
                                              ref.adamw_step_fn())),
}


@pytest.mark.parametrize("name", sorted(FLOAT32))
def test_float32_trajectory_matches_the_reference(name):
  make_tx, make_ref = FLOAT32[name]
  params = helpers.make_params(seed=1)
  got, _, _ = _run(make_tx(), params, STEPS)
  if make_ref is None:  # masked decay: the reference decays leaf by leaf
    want, _ = ref.dadapt_adam(helpers.leaves64(params), helpers.grad_leaves, STEPS, d0=1e-3,
                              weight_decay=_masked_wd(0.1))
  else:
    want, _ = make_ref(helpers.leaves64(params))
  helpers.assert_traj_close(got, want, rtol=1e-4, atol=1e-4)


def test_masked_and_coupled_weight_decay_of_prodigy():
  params = helpers.make_params(seed=2, dtype=np.float64)
  with jax.enable_x64(True):
    masked, _, _ = _run(adam_jax.prodigy(d0=1e-3, weight_decay=0.2, mask=MASK), params, STEPS,
                        dtype=jnp.float64)
    coupled, _, _ = _run(adam_jax.prodigy(d0=1e-3, weight_decay=0.2,
                                          decoupled_weight_decay=False), params, STEPS,
                         dtype=jnp.float64)
  p64 = helpers.leaves64(params)
  want, _ = ref.prodigy(p64, helpers.grad_leaves, STEPS, d0=1e-3, weight_decay=_masked_wd(0.2))
  helpers.assert_traj_close(masked, want, rtol=1e-9, atol=1e-10)

  def l2_grads(leaves, t):
    return [g + 0.2 * p for g, p in zip(helpers.grad_leaves(leaves, t), leaves)]

  want, _ = ref.prodigy(p64, l2_grads, STEPS, d0=1e-3)
  helpers.assert_traj_close(coupled, want, rtol=1e-9, atol=1e-10)


def test_references_are_sharp_enough_to_see_the_conventions():
  p = helpers.leaves64(helpers.make_params(seed=1))
  pairs = [
      (ref.prodigy(p, helpers.grad_leaves, STEPS)[0],
       ref.prodigy(p, helpers.grad_leaves, STEPS, bias_correction=True)[0]),
      (ref.dadapt_adam(p, helpers.grad_leaves, STEPS)[0],
       ref.dadapt_adam(p, helpers.grad_leaves, STEPS, bias_correction=True)[0]),
      (ref.mechanic(p, helpers.grad_leaves, STEPS, ref.adamw_step_fn())[0],
       ref.mechanic(p, helpers.grad_leaves, STEPS, ref.adamw_step_fn(), weight_decay=0.0)[0]),
  ]
  for a, b in pairs:
    with pytest.raises(AssertionError):
      helpers.assert_traj_close(a, b)


# ------------------------------------------------------- against optax.contrib


def test_dadapt_with_bias_correction_is_optax_contrib_dadapt_adamw():
  params = helpers.make_params(seed=3)
  ours, _, _ = _run(adam_jax.dadapt_adamw(weight_decay=0.1, bias_correction=True), params, 40)
  with jax.numpy_dtype_promotion("standard"):  # optax.contrib mixes int and float
    theirs, _, _ = _run(optax.contrib.dadapt_adamw(weight_decay=0.1), params, 40)
  helpers.assert_traj_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_prodigy_with_bias_correction_and_no_eps_is_optax_contrib_prodigy():
  """optax puts the new estimate into d * eps: with eps = 0 the methods coincide."""
  params = helpers.make_params(seed=3)
  ours, _, _ = _run(adam_jax.prodigy(eps=0.0, d0=1e-3, bias_correction=True), params, 40)
  with jax.numpy_dtype_promotion("standard"):  # optax.contrib mixes int and float
    theirs, _, _ = _run(optax.contrib.prodigy(eps=0.0, estim_lr0=1e-3), params, 40)
  helpers.assert_traj_close(ours, theirs, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ learning a rate


@pytest.mark.parametrize("name", ["prodigy", "dadapt_adamw", "mechanic_adamw"])
@pytest.mark.parametrize("scale", [1e-2, 1e2])
def test_the_learnt_rate_follows_the_distance_to_the_solution(name, scale):
  """min |x - x*|^2 / 2 from 0, with x* 100x farther in one run: no rate is tuned, yet
  both runs get within 5% of x*; Adam at a fixed rate cannot serve both distances."""
  target = jnp.linspace(-1.0, 1.0, 16) * scale
  tx = adam_jax.get_optimizer(name)()
  x = jnp.zeros(16)
  state = tx.init(x)

  @jax.jit
  def step(x, state):
    u, state = tx.update(x - target, state, x)
    return optax.apply_updates(x, u), state

  for _ in range(1500):
    x, state = step(x, state)
  assert float(jnp.linalg.norm(x - target) / jnp.linalg.norm(target)) < 0.05


# ------------------------------------------------- jit, vmap, dtypes, validation

ALIASES = {
    "prodigy": lambda h: adam_jax.prodigy(d_coef=h, weight_decay=1e-2),
    "prodigy-d0-b2-b3": lambda h: adam_jax.prodigy(d0=h * 1e-3, b2=0.9 + 0.09 * h, b3=h),
    "dadapt_adamw-d0-b1": lambda h: adam_jax.dadapt_adamw(d0=h * 1e-3, b1=h),
    "mechanize-betas": lambda h: adam_jax.mechanize(adam_jax.adam(1.0), s_init=1e-2,
                                                    betas=jnp.stack([h, 0.99 + 0.0 * h])),
    "dadapt_adamw": lambda h: adam_jax.dadapt_adamw(h, weight_decay=1e-2),
    "mechanic_adamw": lambda h: adam_jax.mechanic_adamw(s_init=h * 1e-6),
    "reduce_on_plateau": lambda h: optax.chain(adam_jax.adam(1e-2),
                                               adam_jax.reduce_on_plateau(factor=h, patience=1)),
}


def _update(tx, g, s, p):
  if isinstance(tx, optax.GradientTransformationExtraArgs):
    loss = sum(jnp.sum(a * a) for a in jax.tree.leaves(p))
    return tx.update(g, s, p, value=loss)
  return tx.update(g, s, p)


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_jit_does_not_recompile_and_state_is_a_namedtuple_pytree(name):
  params = jax.tree.map(jnp.asarray, helpers.make_params(seed=0))
  tx = ALIASES[name](0.5)
  state = tx.init(params)

  @jax.jit
  def step(p, s, g):
    u, s = _update(tx, g, s, p)
    return optax.apply_updates(p, u), s

  for k in range(3):
    grads = jax.tree.map(lambda a, k=k: jnp.sin(a + k), params)
    params, new_state = step(params, state, grads)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    state = new_state
  assert step._cache_size() == 1
  named = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "_fields"))
           if hasattr(s, "_fields") and "count" in s._fields]
  assert named and all(int(s.count) == 3 for s in named)


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_vmap_over_a_traced_hyperparameter_matches_separate_runs(name):
  params = {"w": jnp.asarray(np.linspace(-1, 1, 6).reshape(3, 2), jnp.float32),
            "b": jnp.ones(2), "deep": jnp.zeros(())}

  def train(h):
    tx = ALIASES[name](h)
    p, s = params, tx.init(params)
    for _ in range(6):
      g = jax.grad(lambda q: sum(jnp.sum(jnp.sin(3 * a) * a) for a in jax.tree.leaves(q)))(p)
      u, s = _update(tx, g, s, p)
      p = optax.apply_updates(p, u)
    return p

  hs = jnp.asarray([0.3, 0.9], jnp.float32)
  batched = jax.jit(jax.vmap(train))(hs)
  single_run = jax.jit(train)
  for i, h in enumerate(hs):
    single = single_run(h)
    for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
      np.testing.assert_allclose(a[i], b, rtol=2e-5, atol=1e-6)
  assert not np.allclose(batched["w"][0], batched["w"][1])


@pytest.mark.parametrize("name", ["prodigy", "dadapt_adamw", "mechanic_adamw"])
def test_low_precision_params_keep_float32_state_and_their_dtype(name):
  params = {"w": jnp.full((4, 3), 0.5, jnp.bfloat16), "b": jnp.ones(3, jnp.float16)}
  start = {"prodigy": {"d0": 1e-2}, "dadapt_adamw": {"d0": 1e-2},
           "mechanic_adamw": {"s_init": 1e-3}}
  tx = adam_jax.get_optimizer(name)(**start[name])
  state = tx.init(params)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  for k in range(30):
    grads = jax.tree.map(lambda a, k=k: (a - 0.1 * k).astype(a.dtype), params)
    u, state = step(grads, state, params)
    params = optax.apply_updates(params, u)
  assert params["w"].dtype == jnp.bfloat16 and params["b"].dtype == jnp.float16
  moments = [x for x in jax.tree.leaves(state) if x.ndim == 2]
  assert moments and all(x.dtype in (jnp.float32, jnp.bfloat16) for x in moments)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))
  assert float(jnp.abs(params["b"].astype(jnp.float32) - 1).max()) > 5e-3  # they moved


@pytest.mark.parametrize("name", ["prodigy", "dadapt_adamw", "mechanic_adamw"])
def test_bfloat16_params_train_as_the_float32_run(name):
  """With their defaults (d0 = 1e-6: first steps that bfloat16 params round away) each
  learns its rate and follows the float32 run: estimates, sums and moments are float32
  whatever the params' dtype, and Prodigy's distance travelled is a float32 sum of its
  updates (the difference of bfloat16 params would stay 0, and d with it)."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((128, 16)).astype(np.float32)
  y = x @ rng.standard_normal((16, 4)).astype(np.float32)
  start = {"w": rng.standard_normal((16, 4)) * 0.1 + 1.0, "b": np.ones(4)}

  def run(dtype):
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), start)
    tx = adam_jax.get_optimizer(name)()
    loss = lambda p: jnp.mean(((jnp.asarray(x, dtype) @ p["w"] + p["b"][None]).astype(jnp.float32)
                               - y) ** 2)

    @jax.jit
    def step(params, state):
      value, grads = jax.value_and_grad(loss)(params)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state, value

    state, losses = tx.init(params), []
    for _ in range(200):
      params, state, value = step(params, state)
      losses.append(float(value))
    return np.asarray(losses), state

  want, state32 = run(jnp.float32)
  got, state16 = run(jnp.bfloat16)
  for k in (50, 100, 199):  # bfloat16's own rounding bounds how low its loss can go
    assert got[k] <= 1.25 * want[k] + 1e-2 * want[0], (k, got[k], want[k])
  assert got[-1] < 1e-2 * got[0]
  fields = {"prodigy": ("d", "r", "s", "delta", "mu", "nu"),
            "dadapt_adamw": ("d", "r", "s", "mu", "nu"),
            "mechanic_adamw": ("s", "m", "v", "r", "delta")}[name]
  for field in fields:
    for leaf in jax.tree.leaves(optax.tree.get(state16, field)):
      assert leaf.dtype == jnp.float32, field
  if name != "mechanic_adamw":
    d16, d32 = float(optax.tree.get(state16, "d")), float(optax.tree.get(state32, "d"))
    assert 0.5 < d16 / d32 < 2, (d16, d32)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: adam_jax.prodigy(d0=0.0), "d0"),
        (lambda: adam_jax.prodigy(b3=1.0), "b3"),
        (lambda: adam_jax.prodigy(d_coef=-1.0), "d_coef"),
        (lambda: adam_jax.dadapt_adamw(b2=1.5), "b2"),
        (lambda: adam_jax.dadapt_adamw(-1.0), "learning_rate"),
        (lambda: adam_jax.mechanize("adam"), "GradientTransformation"),
        (lambda: adam_jax.mechanize(adam_jax.adam(1.0), s_init=0.0), "s_init"),
        (lambda: adam_jax.mechanize(adam_jax.adam(1.0), betas=(0.9, 1.5)), "betas"),
        (lambda: adam_jax.reduce_on_plateau(factor=1.0), "factor"),
        (lambda: adam_jax.reduce_on_plateau(threshold_mode="relative"), "threshold_mode"),
        (lambda: adam_jax.reduce_on_plateau(mode="up"), "mode"),
        (lambda: adam_jax.reduce_on_plateau(accumulation_size=0), "accumulation_size"),
    ],
)
def test_bad_hyperparameters_raise_at_construction(make, name):
  with pytest.raises(ValueError, match=name):
    make()


def test_params_and_value_are_required():
  params = {"w": jnp.ones(2)}
  for tx in (adam_jax.prodigy(weight_decay=1e-2), adam_jax.dadapt_adamw(weight_decay=1e-2),
             adam_jax.mechanic_adamw()):
    with pytest.raises(ValueError, match="params"):
      tx.update(params, tx.init(params))
  # Without a decay Prodigy needs no params: its distance travelled is in the state.
  tx = adam_jax.prodigy()
  assert tx.update(params, tx.init(params))[0]["w"].shape == (2,)
  tx = adam_jax.reduce_on_plateau()
  with pytest.raises(ValueError, match="value="):
    tx.update(params, tx.init(params), params)


# ----------------------------------------------------- sharding and checkpoints

LR_FREE = {
    "prodigy": lambda: adam_jax.prodigy(weight_decay=1e-2),
    "dadapt_adamw": lambda: adam_jax.dadapt_adamw(weight_decay=1e-2),
    "mechanic_adamw": lambda: adam_jax.mechanic_adamw(),
}


@pytest.mark.parametrize("name", sorted(LR_FREE))
@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit],
                         ids=["auto", "explicit"])
def test_state_is_sharded_like_the_params_and_matches_one_device(name, axis_type):
  mesh, specs = shard._mesh(shard.FSDP, axis_type)
  values, grad_values = shard._values(0), [shard._values(i) for i in (1, 2, 3)]
  with shard._context(mesh, axis_type):
    params = shard._place(values, mesh, specs)
    grads = [shard._place(g, mesh, specs) for g in grad_values]
    state0, new_params, state, _ = shard._run(LR_FREE[name](), params, grads)
  shard.assert_state_mirrors(state0, params)
  shard.assert_state_mirrors(state, params)
  shard.assert_same_shardings(new_params, params)
  shard.assert_same_shardings(state, state0)
  want = shard._single_device_run(LR_FREE[name](), values, grad_values)
  for got, w in zip(jax.tree.leaves((new_params, state)), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(w), rtol=1e-5, atol=1e-6)


CHECKPOINTED = {
    **LR_FREE,
    "prodigy-schedule": lambda: adam_jax.prodigy(adam_jax.schedules.cosine_annealing(1.0, 10)),
    "mechanize-nadam": lambda: adam_jax.mechanize(adam_jax.nadam(1.0)),
}


@pytest.mark.parametrize("name", sorted(CHECKPOINTED))
def test_resume_is_bitwise_identical(name, tmp_path):
  tx = CHECKPOINTED[name]()
  params = ckpt._params()
  step = ckpt._make_step(tx)
  carry = jax.device_put((params, tx.init(params)), jax.devices()[0])
  uninterrupted = ckpt._run(step, carry, 0, ckpt.STEPS)
  stopped = ckpt._run(step, carry, 0, ckpt.STOP)
  path = checkpoint.save(tmp_path / "ckpt", stopped)
  like = jax.eval_shape(lambda p: (p, CHECKPOINTED[name]().init(p)), params)
  resumed = ckpt._run(step, checkpoint.restore(path, like=like), ckpt.STOP, ckpt.STEPS)
  ckpt._assert_bitwise(resumed, uninterrupted)
  assert step._cache_size() == 1
  assert not np.array_equal(uninterrupted[0]["w"], stopped[0]["w"])


# --------------------------------------------------------------- reduce on plateau

VALUES = [1.0, 0.9, 0.95, 0.91, 0.9, 0.92, 0.899, 0.8999, 0.93, 0.94, 0.95, 0.5, 0.6, 0.7,
          0.8, 0.9, 1.0, 1.1, 0.49, 0.48, 0.485, 0.49, 0.5, 0.51, 0.52, 0.53, -0.1, -0.1,
          -0.0999, -0.2, -0.2, -0.2, -0.2, -0.2, -0.2, -0.2]
RULES = {
    "rel-defaults-patience2": dict(patience=2),
    "rel-threshold-cooldown": dict(factor=0.5, patience=1, threshold=0.05, cooldown=2),
    "abs-threshold": dict(factor=0.5, patience=1, threshold=0.01, threshold_mode="abs"),
    "abs-cooldown-min": dict(factor=0.3, patience=0, threshold=0.0, threshold_mode="abs",
                             cooldown=1, min_scale=0.02),
    "max-rel": dict(factor=0.5, patience=1, threshold=0.01, mode="max"),
    "max-abs-cooldown": dict(factor=0.5, patience=0, threshold=0.05, threshold_mode="abs",
                             cooldown=3, mode="max"),
    "eps-skips-small-drops": dict(factor=0.5, patience=0, min_scale=0.1, eps=0.06),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_plateau_scale_follows_torch_rule(name):
  kw = RULES[name]
  tx = adam_jax.reduce_on_plateau(**kw)
  ref_kw = {("min_lr" if k == "min_scale" else k): v for k, v in kw.items()}
  want = ref.reduce_on_plateau(VALUES, **ref_kw)
  update = jax.jit(tx.update)
  state = tx.init({"w": jnp.zeros(2)})
  got = []
  for v in VALUES:
    u, state = update({"w": jnp.ones(2)}, state, None, value=jnp.float32(v))
    got.append(float(u["w"][0]))
    assert float(state.scale) == got[-1]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert min(want) < 1.0  # the sequence does reduce under this rule
  assert update._cache_size() == 1


def test_plateau_rule_counts_differently_from_optax_contrib():
  """torch (and this) reduces on the patience+1-th value without improvement; optax on the
  patience-th."""
  values = [1.0, 1.0, 1.0, 1.0]
  ours, theirs = adam_jax.reduce_on_plateau(patience=2), optax.contrib.reduce_on_plateau(
      patience=2)
  s1, s2 = ours.init(jnp.zeros(1)), theirs.init(jnp.zeros(1))
  scales = []
  for v in values:
    _, s1 = ours.update(jnp.ones(1), s1, value=v)
    with jax.numpy_dtype_promotion("standard"):  # optax.contrib mixes int and float
      _, s2 = theirs.update(jnp.ones(1), s2, value=v)
    scales.append((float(s1.scale), float(s2.scale)))
  assert scales[2] == (1.0, pytest.approx(0.1)) and scales[3][0] == pytest.approx(0.1)
  assert ref.reduce_on_plateau(values, patience=2) == pytest.approx([1, 1, 1, 0.1])


def test_plateau_accumulates_values_into_one_decision():
  values = np.asarray(VALUES[:24], np.float32)
  tx = adam_jax.reduce_on_plateau(factor=0.5, patience=0, accumulation_size=3)
  want = ref.reduce_on_plateau(values.reshape(-1, 3).mean(axis=1), factor=0.5, patience=0)
  state = tx.init(None)
  got = []
  for v in values:
    _, state = tx.update(jnp.ones(1), state, value=v)
    got.append(float(state.scale))
  np.testing.assert_allclose(got[2::3], want, rtol=1e-6)
  np.testing.assert_allclose(got[0::3][1:], want[:-1], rtol=1e-6)  # no decision in between
  assert min(want) < 1.0


def test_plateau_chains_with_an_alias_and_scales_its_updates():
  params = {"w": jnp.ones(3)}
  base = adam_jax.adamw(1e-2)
  tx = optax.chain(base, adam_jax.reduce_on_plateau(factor=0.5, patience=0))
  state, base_state = tx.init(params), base.init(params)
  g = {"w": jnp.asarray([1.0, -2.0, 3.0])}
  for k, loss in enumerate([1.0, 2.0, 3.0]):
    u, state = tx.update(g, state, params, value=loss)
    want, base_state = base.update(g, base_state, params)
    np.testing.assert_allclose(u["w"], want["w"] * 0.5**k, rtol=1e-6)


def test_plateau_with_flax_nnx_optimizer():
  from flax import nnx

  model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
  tx = optax.chain(adam_jax.adam(1e-2), adam_jax.reduce_on_plateau(factor=0.5, patience=0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.ones((8, 4))

  @nnx.jit
  def train_step(model, optimizer, value):
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads, value=value)

  for value in (1.0, 1.0, 1.0):
    train_step(model, optimizer, jnp.float32(value))
  plateau_state = optimizer.opt_state[1]
  assert float(plateau_state.scale[...]) == 0.25
