"""A 100-step training loop traces and compiles its step once.

A state whose dtype, weak type or structure drifts between steps (an int64 count,
a weakly typed moment, a schedule state appearing after step 1) would make every
call retrace; so would a learning rate baked in as a constant.
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

STEPS = 100

OPTIMIZERS = {
    # Every alias with its defaults, and variants with schedules, options and chains.
    **{name: functools.partial(helpers.make_alias, name, 1e-3) for name in helpers.ALIASES},
    "adamw-schedules": lambda: adam_jax.adamw(
        schedules.warmup_cosine(1e-3, 10, STEPS), weight_decay=schedules.step_decay(1e-2, 30)),
    "adam-amsgrad-l2-maximize": lambda: adam_jax.adam(1e-3, weight_decay=0.1, amsgrad=True,
                                                      maximize=True),
    "adam-lowp-moments": lambda: adam_jax.adam(1e-3, mu_dtype=jnp.bfloat16,
                                               nu_dtype=jnp.float32),
    "nadamw-schedule": lambda: adam_jax.nadamw(schedules.exponential_lr(1e-3, 0.99)),
    "cautious_adamw-schedule": lambda: adam_jax.cautious_adamw(
        schedules.warmup_cosine(1e-3, 10, STEPS)),
    "schedule_free_adamw-warmup": lambda: adam_jax.schedule_free_adamw(1e-3, warmup_steps=10),
    "adamw8bit-schedule": lambda: adam_jax.adamw8bit(schedules.warmup_cosine(1e-3, 10, STEPS),
                                                     block_size=4, min_quantized_size=0),
    "chain-skip-nonfinite": lambda: optax.chain(
        optax.clip_by_global_norm(1.0), optax.apply_if_finite(adam_jax.adamw(1e-3), 5)),
    "prodigy-schedule": lambda: adam_jax.prodigy(schedules.cosine_annealing(1.0, STEPS),
                                                 weight_decay=1e-2),
    "dadapt_adamw": lambda: adam_jax.dadapt_adamw(weight_decay=1e-2),
    "mechanic_adamw": lambda: adam_jax.mechanic_adamw(schedules.warmup_cosine(1.0, 10, STEPS)),
}


def _setup(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.standard_normal((4, 2)), dtype),
            "b": jnp.zeros(2, dtype), "none": None}
  xs = jnp.asarray(rng.standard_normal((STEPS, 8, 4)), dtype)
  return params, xs


def _loss(params, x):
  pred = x @ params["w"] + params["b"][None, :]
  return jnp.mean(pred.astype(jnp.float32) ** 2)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_training_loop_compiles_once(name):
  tx = OPTIMIZERS[name]()
  traces = []

  @jax.jit
  def step(params, state, x):
    traces.append(1)
    grads = jax.grad(_loss)(params, x)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  dtype = jnp.float16 if "lowp" in name else jnp.float32
  params, xs = _setup(dtype)
  state = tx.init(params)
  start = params
  for t in range(STEPS):
    params, state = step(params, state, xs[t])
  assert len(traces) == 1
  assert step._cache_size() == 1
  assert not np.array_equal(np.asarray(params["w"]), np.asarray(start["w"]))


def test_learning_rate_as_an_argument_compiles_once():
  """The optimizer is built inside the step from a traced learning rate that changes."""
  traces = []

  @jax.jit
  def step(params, state, x, lr):
    traces.append(1)
    tx = adam_jax.adamw(lr, weight_decay=lr * 0.1)
    updates, state = tx.update(jax.grad(_loss)(params, x), state, params)
    return optax.apply_updates(params, updates), state

  params, xs = _setup()
  state = adam_jax.adamw(1e-3, weight_decay=1e-4).init(params)
  lrs = np.geomspace(1e-2, 1e-4, STEPS).astype(np.float32)
  for t in range(STEPS):
    params, state = step(params, state, xs[t], jnp.asarray(lrs[t]))
  assert len(traces) == 1
  assert step._cache_size() == 1
  # The value really reached the update: a zero learning rate leaves params alone.
  same, _ = step(params, state, xs[0], jnp.float32(0.0))
  np.testing.assert_array_equal(np.asarray(same["w"]), np.asarray(params["w"]))
  assert len(traces) == 1
