"""Trajectories of every alias against float64 NumPy references (60 steps)."""

import numpy as np
import pytest

import adam_jax
from adam_jax import schedules
from tests import helpers
from tests.references import numpy_adam as ref

STEPS = 60

CASES = {
    "adam": (
        lambda: adam_jax.adam(3e-2),
        lambda p: ref.adam(p, helpers.grad_leaves, STEPS, lr=3e-2),
    ),
    "adam-l2": (
        lambda: adam_jax.adam(3e-2, weight_decay=0.1),
        lambda p: ref.adam(p, helpers.grad_leaves, STEPS, lr=3e-2, weight_decay=0.1),
    ),
    "adamw": (
        lambda: adam_jax.adamw(3e-2, weight_decay=0.1),
        lambda p: ref.adam(p, helpers.grad_leaves, STEPS, lr=3e-2, weight_decay=0.1,
                           decoupled=True),
    ),
    "amsgrad": (
        lambda: adam_jax.amsgrad(3e-2, b2=0.9),
        lambda p: ref.adam(p, helpers.grad_leaves, STEPS, lr=3e-2, b2=0.9, amsgrad=True),
    ),
    "amsgrad-adamw": (
        lambda: adam_jax.adamw(3e-2, weight_decay=0.05, amsgrad=True, b2=0.9),
        lambda p: ref.adam(p, helpers.grad_leaves, STEPS, lr=3e-2, b2=0.9, amsgrad=True,
                           weight_decay=0.05, decoupled=True),
    ),
    "nadam": (
        lambda: adam_jax.nadam(3e-2),
        lambda p: ref.adam(p, helpers.grad_leaves, STEPS, lr=3e-2, nesterov=True),
    ),
    "nadamw": (
        lambda: adam_jax.nadamw(3e-2, weight_decay=0.1),
        lambda p: ref.adam(p, helpers.grad_leaves, STEPS, lr=3e-2, nesterov=True,
                           weight_decay=0.1, decoupled=True),
    ),
    "eps_root": (
        lambda: adam_jax.adam(3e-2, eps=1e-3, eps_root=1e-4),
        lambda p: ref.adam(p, helpers.grad_leaves, STEPS, lr=3e-2, eps=1e-3, eps_root=1e-4),
    ),
    "maximize": (
        lambda: adam_jax.adam(1e-2, weight_decay=0.1, maximize=True),
        lambda p: ref.adam(p, helpers.grad_leaves, STEPS, lr=1e-2, weight_decay=0.1,
                           maximize=True),
    ),
    "radam": (
        lambda: adam_jax.radam(3e-2),
        lambda p: ref.radam(p, helpers.grad_leaves, STEPS, lr=3e-2),
    ),
    "radam-l2": (
        lambda: adam_jax.radam(3e-2, b2=0.99, weight_decay=0.1),
        lambda p: ref.radam(p, helpers.grad_leaves, STEPS, lr=3e-2, b2=0.99, weight_decay=0.1),
    ),
    "adamax": (
        lambda: adam_jax.adamax(2e-2),
        lambda p: ref.adamax(p, helpers.grad_leaves, STEPS, lr=2e-2),
    ),
    "adamaxw": (
        lambda: adam_jax.adamaxw(2e-2, weight_decay=0.1),
        lambda p: ref.adamax(p, helpers.grad_leaves, STEPS, lr=2e-2, weight_decay=0.1,
                             decoupled=True),
    ),
    "adabelief": (
        lambda: adam_jax.adabelief(2e-2),
        lambda p: ref.adabelief(p, helpers.grad_leaves, STEPS, lr=2e-2),
    ),
    "adam-step-decay": (
        lambda: adam_jax.adam(schedules.step_decay(5e-2, step_size=10, gamma=0.5)),
        lambda p: ref.adam(p, helpers.grad_leaves, STEPS,
                           lr=lambda k: 5e-2 * 0.5 ** (k // 10)),
    ),
    "adamw-cosine": (
        lambda: adam_jax.adamw(schedules.cosine_annealing(5e-2, t_max=STEPS), weight_decay=0.1),
        lambda p: ref.adam(p, helpers.grad_leaves, STEPS, weight_decay=0.1, decoupled=True,
                           lr=lambda k: 0.5 * 5e-2 * (1 + np.cos(np.pi * k / STEPS))),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_trajectory_matches_float64_reference(name):
  make_tx, make_ref = CASES[name]
  params = helpers.make_params(seed=1)
  got = helpers.run_jax(make_tx(), params, STEPS)
  want = make_ref(helpers.leaves64(params))
  helpers.assert_traj_close(got, want)


def test_reference_catches_a_wrong_update():
  # The comparison is sharp enough to see a small convention change (AMSGrad's
  # bias-corrected maximum, as optax has it) over the trajectory.
  params = helpers.make_params(seed=1)
  import jax
  import optax

  with jax.numpy_dtype_promotion("standard"):  # optax's schedules mix int and float
    got = helpers.run_jax(optax.amsgrad(3e-2, b2=0.9), params, STEPS)
  want = ref.adam(helpers.leaves64(params), helpers.grad_leaves, STEPS, lr=3e-2, b2=0.9,
                  amsgrad=True)
  with pytest.raises(AssertionError):
    helpers.assert_traj_close(got, want)


def test_complex_params_match_reference():
  rng = np.random.default_rng(3)
  params = {"z": (rng.standard_normal((4,)) + 1j * rng.standard_normal((4,))).astype(np.complex64)}
  import jax
  import jax.numpy as jnp
  import optax

  tx = adam_jax.adam(3e-2)
  p = jax.tree.map(jnp.asarray, params)
  state = tx.init(p)
  traj = []
  for t in range(1, 31):
    g = {"z": p["z"] * (0.5 + 0.1j) + jnp.asarray(np.exp(1j * t), jnp.complex64)}
    u, state = tx.update(g, state, p)
    p = optax.apply_updates(p, u)
    traj.append([np.asarray(p["z"])])

  def grads_fn(leaves, t):
    return [leaves[0] * (0.5 + 0.1j) + np.exp(1j * t)]

  want = ref.adam([params["z"].astype(np.complex128)], grads_fn, 30, lr=3e-2)
  helpers.assert_traj_close(traj, want)
  assert state[0].nu["z"].dtype == jnp.float32
