"""The CPU kernel of ``scale_by_adam`` (``adam_jax/native/adam_cpu.cc``) against its XLA program.

The tests run with eight CPU devices, where ``native=None`` keeps the XLA program
(the kernel has no sharding rule): the kernel is asked for with ``native=True``,
and its default on one device is checked in a subprocess. Nothing is built when
this module is imported: the ``kernel`` fixture builds it (or skips) on first use.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import native
from tests import helpers

# Leaves of many sizes: a scalar, an empty leaf, sizes that are not multiples of
# any vector width, and two leaves larger than the kernel's chunks of 32K
# elements, so that chunks span several leaves and split others.
SHAPES = {"scalar": (), "empty": (0,), "one": (1,), "seven": (7,), "w": (5, 3),
          "odd": (33, 31), "big": (40001,), "deep": [(17,), (257, 129)]}


@pytest.fixture(scope="module")
def kernel():
  if not native.available("adam"):
    pytest.skip(f"CPU kernel: {native.status('adam')}")


def _params(seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s), dtype), SHAPES,
                      is_leaf=lambda s: isinstance(s, tuple))


def _custom_calls(tx, params) -> int:
  text = jax.jit(tx.update).lower(params, tx.init(params), params).as_text()
  return text.count(native.ADAM_TARGET)


ALIASES = [
    ("adam", dict()),
    ("adam", dict(weight_decay=1e-2)),  # coupled: the decay enters the gradient
    ("adam", dict(maximize=True, eps_root=1e-8)),
    ("adamw", dict(weight_decay=1e-1)),
    ("adamw", dict(weight_decay=1e-1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))),
    ("adamw", dict(b1=0.8, b2=0.95, eps=1e-6, amsgrad=True, nesterov=True)),
    ("amsgrad", dict(weight_decay=1e-3)),
    ("nadam", dict()),
    ("nadamw", dict(weight_decay=1e-2, maximize=True)),
]


@jax.jit
def _gradient(params, t):
  """A gradient that moves with the params and the step, computed on its own: inside
  the optimizer's program XLA would fuse (and round) it differently per path."""
  wave = lambda p: jnp.sin(0.3 * t + jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape))
  return jax.tree.map(lambda p: jnp.tanh(2 * p) + 0.5 * wave(p), params)


def _trajectory(tx, params, steps):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step)
  state, out = tx.init(params), []
  for t in range(steps):
    params, state = step(params, state, _gradient(params, jnp.float32(t)))
    out.append([np.asarray(x) for x in jax.tree.leaves((params, state))])
  return out


@pytest.mark.parametrize("name, kwargs", ALIASES)
def test_trajectory_equals_the_xla_program(kernel, name, kwargs):
  make = adam_jax.get_optimizer(name)
  lr = lambda t: 3e-2 * jnp.minimum(1.0, (t.astype(jnp.float32) + 1) / 10)  # warm-up
  runs = [_trajectory(make(lr, **kwargs, native=nat), _params(), 60) for nat in (False, True)]
  assert _custom_calls(make(lr, **kwargs, native=True), _params()) == 1
  # The same operations in the same order: equal up to float32 rounding, params
  # and state, over 60 steps (nearly every element bit for bit; XLA rounds the
  # one-element leaves differently, and this gradient amplifies the difference).
  helpers.assert_traj_close(runs[1], runs[0], rtol=1e-5, atol=1e-6)
  assert not np.array_equal(runs[1][-1][0], runs[1][0][0])  # the params moved


@pytest.mark.parametrize("nesterov, amsgrad", [(False, False), (True, False), (False, True),
                                               (True, True)])
def test_one_step_equals_the_xla_program_from_any_state(kernel, nesterov, amsgrad):
  rng = np.random.default_rng(1)
  params = _params(1)
  txs = [adam_jax.scale_by_adam(nesterov=nesterov, amsgrad=amsgrad, native=nat)
         for nat in (False, True)]
  state = txs[0].init(params)
  draw = lambda p: jnp.asarray(rng.standard_normal(p.shape) * np.exp(rng.uniform(-9, 3, p.shape)),
                               jnp.float32)
  for _ in range(4):  # moments of every magnitude
    _, state = jax.jit(txs[0].update)(jax.tree.map(draw, params), state)
  g = jax.tree.map(draw, params)
  (u0, s0), (u1, s1) = (jax.jit(tx.update)(g, state) for tx in txs)
  for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u0, s0))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=3e-7, atol=0)


def test_large_trees_stream_the_update_and_agree(kernel):
  # From 2**22 parameters the kernel writes the update with non-temporal stores,
  # from an aligned vector on: leaves of odd sizes put the start anywhere.
  rng = np.random.default_rng(7)
  sizes = [(2**21 + 3,), (5,), (1000, 1001), (2**20 + 70017,)]
  params = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in sizes]
  assert sum(p.size for p in params) >= 2**22
  txs = [adam_jax.scale_by_adam(nesterov=True, native=nat) for nat in (False, True)]
  state = txs[0].init(params)
  _, state = jax.jit(txs[0].update)(params, state)
  g = [jnp.asarray(rng.standard_normal(p.shape), jnp.float32) for p in params]
  (u0, s0), (u1, s1) = (jax.jit(tx.update)(g, state) for tx in txs)
  for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u0, s0))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=3e-7, atol=0)


def test_non_finite_gradients_give_the_same_nan_and_inf(kernel):
  g = jnp.asarray([1.0, np.nan, np.inf, -np.inf, 0.0, -2.0] * 3, jnp.float32)
  params = jnp.zeros_like(g)
  for amsgrad in (False, True):
    txs = [adam_jax.scale_by_adam(amsgrad=amsgrad, native=nat) for nat in (False, True)]
    state = txs[0].init(params)
    _, state = jax.jit(txs[0].update)(jnp.ones_like(g), state)
    (u0, s0), (u1, s1) = (jax.jit(tx.update)(g, state) for tx in txs)
    for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u0, s0))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # NaN where NaN
    assert np.isnan(np.asarray(u1)).any()


def test_traced_hyperparameters_and_schedules(kernel):
  params = _params(2)
  grads = jax.tree.map(lambda p: jnp.cos(3 * p), params)

  @jax.jit
  def steps(b1, b2, eps, lr, wd):
    out = []
    for nat in (False, True):
      tx = adam_jax.nadamw(lambda t: lr / (1 + t.astype(jnp.float32)), b1, b2, eps,
                           weight_decay=wd, native=nat)
      p, state = params, tx.init(params)
      for _ in range(3):
        u, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, u)
      out.append(p)
    return out

  args = [jnp.float32(x) for x in (0.85, 0.99, 1e-6, 1e-2, 1e-2)]
  assert steps.lower(*args).as_text().count(native.ADAM_TARGET) == 3  # one call per step
  xla, nat = steps(*args)
  for a, b in zip(jax.tree.leaves(nat), jax.tree.leaves(xla)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_moments_are_updated_in_place_when_the_state_is_donated(kernel):
  params = _params(3)
  tx = adam_jax.adam(1e-3, native=True)

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  jitted = jax.jit(step, donate_argnums=(0, 1))
  state = tx.init(params)
  compiled = jitted.lower(params, state, params).compile()
  hlo = compiled.as_text()
  assert hlo.count(native.ADAM_TARGET) == 1 and "output_to_operand_aliasing" in hlo
  copies = [ln for ln in hlo.splitlines() if " copy(" in ln or "copy-start" in ln]
  assert all("f32[0]" in ln for ln in copies)  # no copy of a buffer, but of empty ones
  n = sum(p.size for p in jax.tree.leaves(params))
  # The only temporary is the update (4 bytes per parameter), read by apply_updates.
  assert compiled.memory_analysis().temp_size_in_bytes <= 4 * n + 4096
  big = lambda s: s[0].mu["deep"][1]
  before = big(state).unsafe_buffer_pointer(), state[0].nu["deep"][1].unsafe_buffer_pointer()
  grads = jax.tree.map(jnp.sin, params)
  params, state = jitted(params, state, grads)
  assert (big(state).unsafe_buffer_pointer(),
          state[0].nu["deep"][1].unsafe_buffer_pointer()) == before
  assert np.abs(np.asarray(big(state))).max() > 0


def test_state_that_is_not_donated_is_left_intact(kernel):
  params = _params(4)
  tx = adam_jax.scale_by_adam(native=True)
  state = tx.init(params)
  _, state = jax.jit(tx.update)(params, state)
  kept = [np.array(x) for x in jax.tree.leaves(state)]
  jax.jit(tx.update)(params, state)
  for a, b in zip(jax.tree.leaves(state), kept):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_one_custom_call_for_the_float32_leaves_only(kernel):
  params = {"a": jnp.zeros((3, 5)), "b": jnp.zeros(7, jnp.bfloat16), "c": jnp.zeros(()),
            "d": jnp.zeros(9, jnp.float16), "e": jnp.zeros((0, 4))}
  tx = adam_jax.adam(1e-2, native=True)
  text = jax.jit(tx.update).lower(params, tx.init(params), params).as_text()
  calls = [ln for ln in text.splitlines() if native.ADAM_TARGET in ln]
  assert len(calls) == 1
  assert "bf16" not in calls[0] and "f16" not in calls[0] and "f32[0,4]" not in calls[0]
  # Other dtypes run the XLA program and give the same numbers with the kernel on.
  grads = jax.tree.map(lambda p: jnp.ones_like(p), params)
  runs = [jax.jit(adam_jax.adam(1e-2, native=nat).update)(grads, tx.init(params), params)
          for nat in (False, True)]
  for a, b in zip(jax.tree.leaves(runs[1]), jax.tree.leaves(runs[0])):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=3e-7)
  only_low = {"b": params["b"], "d": params["d"]}
  assert _custom_calls(adam_jax.adam(1e-2, native=True), only_low) == 0
  assert _custom_calls(adam_jax.adam(1e-2, native=True), {}) == 0


def test_vmap_over_hyperparameters_runs_the_xla_program(kernel):
  params = _params(5)
  grads = jax.tree.map(lambda p: jnp.sin(2 * p), params)

  def run(nat, lr, b1, b2, eps):
    tx = adam_jax.adamw(lr, b1, b2, eps, weight_decay=1e-2, amsgrad=True, native=nat)
    p, state = params, tx.init(params)
    for _ in range(3):
      u, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, u)
    return p

  hyper = [jnp.asarray(x, jnp.float32) for x in
           ([1e-3, 1e-2, 3e-2], [0.8, 0.9, 0.95], [0.99, 0.999, 0.9], [1e-8, 1e-6, 1e-3])]
  grid = {nat: jax.jit(jax.vmap(lambda *h, nat=nat: run(nat, *h))) for nat in (False, True)}
  assert native.ADAM_TARGET not in grid[True].lower(*hyper).as_text()
  got, want = grid[True](*hyper), grid[False](*hyper)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  # Each configuration of the grid is its own run: the kernel, unbatched, agrees.
  one = jax.jit(lambda *h: run(True, *h))(*(h[1] for h in hyper))
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b)[1], rtol=1e-6, atol=1e-7)


def test_default_is_the_xla_program_on_several_devices(kernel):
  assert jax.device_count() > 1
  assert _custom_calls(adam_jax.adam(1e-3), _params()) == 0
  assert _custom_calls(adam_jax.adam(1e-3, native=False), _params()) == 0


def test_kernel_is_opt_in_on_one_cpu_device(kernel, tmp_path):
  # Opt-in until it is measured faster in whole training steps (native.DEFAULT_ON).
  code = (
      "import jax, jax.numpy as jnp, adam_jax\n"
      "p = {'a': jnp.zeros(100), 'b': jnp.zeros((3, 3)), 'c': jnp.zeros(())}\n"
      "count = lambda tx: jax.jit(tx.update).lower(p, tx.init(p), p).as_text()"
      ".count(adam_jax.native.ADAM_TARGET)\n"
      "print(jax.device_count(), count(adam_jax.adamw(1e-3)),"
      " count(adam_jax.adamw(1e-3, native=True)))\n")
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300, check=True).stdout
  assert out.split() == ["1", "0", "1"]


def test_native_true_without_the_kernel_raises(monkeypatch):
  monkeypatch.setattr(native, "available", lambda kernel=None: False)
  tx = adam_jax.adam(1e-3, native=True)
  params = {"w": jnp.zeros(8)}
  with pytest.raises(RuntimeError, match="'adam' is unavailable"):
    tx.update(params, tx.init(params), params)
  # Without the kernel the default runs the XLA program, whatever the device count.
  tx = adam_jax.adam(1e-3)
  tx.update(params, tx.init(params), params)
  with pytest.raises(TypeError, match="native"):
    adam_jax.scale_by_adam(native="yes")


def test_unknown_kernel_names_raise():
  with pytest.raises(ValueError, match="unknown kernel"):
    native.available("adamw")


def test_environment_turns_the_kernel_off_and_builds_nothing(tmp_path):
  code = ("import jax.numpy as jnp, adam_jax\n"
          "from adam_jax import native as n\n"
          "p = {'w': jnp.zeros(10)}\n"
          "tx = adam_jax.adam(1e-3)\n"
          "tx.update(p, tx.init(p), p)\n"
          "print(n.available('adam'), n.status('adam'))\n")
  env = {**os.environ, "ADAM_JAX_NATIVE": "0", "ADAM_JAX_CACHE": str(tmp_path), "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout
  assert out.strip() == "False disabled by ADAM_JAX_NATIVE=0"
  assert not list(tmp_path.iterdir())  # nothing built


def test_meta_gradients_need_the_xla_program(kernel):
  p0 = jnp.linspace(-1.0, 1.0, 5)

  def trained_loss(lr, nat):
    tx = adam_jax.adam(lr, eps_root=1e-8, native=nat)  # eps_root: sqrt is smooth at 0
    p, state = p0, tx.init(p0)
    for _ in range(3):  # the gradients depend on lr from the second step on
      u, state = tx.update(2 * p, state, p)
      p = optax.apply_updates(p, u)
    return jnp.sum(p**2)

  assert np.isfinite(float(jax.grad(trained_loss)(0.1, False)))
  with pytest.raises(ValueError, match="cannot be differentiated"):
    jax.grad(trained_loss)(0.1, True)


def test_flax_nnx_optimizer_trains_with_the_kernel(kernel):
  from flax import nnx

  x = jnp.linspace(-1, 1, 64)[:, None]
  y = 3 * x - 1

  def train(nat):
    model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, adam_jax.adamw(5e-2, weight_decay=1e-4, native=nat),
                        wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
      loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
      opt.update(model, grads)
      return loss

    return [float(step(model, opt)) for _ in range(200)]

  xla, nat = train(False), train(True)
  np.testing.assert_allclose(nat, xla, rtol=1e-5, atol=1e-7)
  assert nat[-1] < 1e-3 * nat[0]
