"""Shared problem definitions for the tests: pytrees, gradients, runners."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_jax

SHAPES = {"w": (5, 3), "b": (3,), "deep": [(), (2, 2)]}


def make_params(seed: int = 0, dtype=np.float32):
  """A small nested pytree of params (dict, list, scalar leaf)."""
  rng = np.random.default_rng(seed)

  def draw(shape):
    return rng.standard_normal(shape).astype(dtype)

  return {"w": draw((5, 3)), "b": draw((3,)), "deep": [draw(()), draw((2, 2))]}


def grad_leaves(leaves, t):
  """A gradient that depends on the params and the step (deterministic)."""
  out = []
  for i, p in enumerate(leaves):
    p = np.asarray(p, np.float64)
    k = np.arange(p.size, dtype=np.float64).reshape(p.shape)
    out.append(0.5 * p + 0.3 * np.sin(0.7 * t + k + i) - 0.1 * (i + 1))
  return out


def run_jax(tx, params, steps, dtype=jnp.float32, jit=True):
  """Runs ``tx`` for ``steps`` on the gradients of :func:`grad_leaves`.

  Returns the list of param trees after each step (as NumPy float64 leaves).
  """
  params = jax.tree.map(lambda p: jnp.asarray(p, dtype), params)
  state = tx.init(params)
  treedef = jax.tree.structure(params)

  def step(params, state, t):
    leaves = jax.tree.leaves(params)
    grads = [
        (0.5 * p + 0.3 * jnp.sin(0.7 * t + jnp.arange(p.size, dtype=t.dtype).reshape(p.shape) + i)
         - 0.1 * (i + 1)).astype(p.dtype)
        for i, p in enumerate(leaves)
    ]
    grads = treedef.unflatten(grads)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  if jit:
    step = jax.jit(step)
  traj = []
  for t in range(1, steps + 1):
    params, state = step(params, state, jnp.asarray(t, dtype=jnp.real(jnp.zeros((), dtype)).dtype))
    traj.append([np.asarray(p) for p in jax.tree.leaves(params)])
  return traj


def run_host_gradients(tx, params, steps, dtype=jnp.float32, grads_fn=grad_leaves):
  """Runs ``tx`` in a jitted step on gradients computed on the host by ``grads_fn``.

  Returns ``(trajectory, state, params, step)``: the param leaves after each step, the
  final state and params, and the jitted step (to count its compilations).
  """
  p = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
  treedef = jax.tree.structure(p)
  state = tx.init(p)

  @jax.jit
  def step(g, state, p):
    u, state = tx.update(g, state, p)
    return optax.apply_updates(p, u), state

  traj = []
  for t in range(1, steps + 1):
    leaves = [np.asarray(a, np.float64) for a in jax.tree.leaves(p)]
    g = treedef.unflatten([jnp.asarray(a, dtype) for a in grads_fn(leaves, t)])
    p, state = step(g, state, p)
    traj.append([np.asarray(a) for a in jax.tree.leaves(p)])
  return traj, state, p, step


def leaves64(params):
  return [np.asarray(p, np.float64) for p in jax.tree.leaves(params)]


def assert_traj_close(got, want, rtol=1e-5, atol=1e-5):
  assert len(got) == len(want)
  for step, (g_step, w_step) in enumerate(zip(got, want)):
    for g, w in zip(g_step, w_step):
      np.testing.assert_allclose(g, w, rtol=rtol, atol=atol,
                                 err_msg=f"trajectory differs at step {step + 1}")


# ----------------------------------------------------------------------------- the alias table

# Every alias in the registry, so that a new alias joins every table-driven check
# (tests/test_every_alias.py, checkpoints, sharding, properties) without being listed.
ALIASES = adam_jax.optimizers()

# Options that give an alias a state worth testing on the small trees used here; an
# alias not listed runs with its defaults. The 8-bit aliases quantize every leaf in
# blocks of 4 (their defaults would keep these small leaves in float32).
ALIAS_OPTIONS = {
    "adam8bit": {"block_size": 4, "min_quantized_size": 0},
    "adamw8bit": {"block_size": 4, "min_quantized_size": 0},
    # Mechanic's scale starts at 1e-8: a few steps would barely move the params.
    "mechanic_adamw": {"s_init": 1e-2},
}

# Aliases whose step reduces over elements (cautious: a per-leaf mean; Adam-mini:
# per-block second moments; D-Adaptation, Prodigy, Mechanic: sums over all params):
# sharded, they communicate.
REDUCES_OVER_ELEMENTS = frozenset({"adam_mini", "cautious_adamw", "dadapt_adamw",
                                   "mechanic_adamw", "prodigy"})

# Aliases whose moments are not shaped like the params (8-bit codes in blocks).
BLOCKED_STATE = frozenset({"adam8bit", "adamw8bit"})


def make_alias(name, learning_rate=1e-2, **options):
  """The alias ``name`` with the table's options (``options`` override them)."""
  return adam_jax.get_optimizer(name)(learning_rate, **{**ALIAS_OPTIONS.get(name, {}), **options})


def alias_takes(name, option):
  """Whether alias ``name`` has a parameter called ``option``."""
  return option in inspect.signature(adam_jax.get_optimizer(name)).parameters


def batchnorm_mlp(rngs, hidden: int = 32, bias: bool = True):
  """A user's MLP for the 8x8 digits with BatchNorm and Dropout (non-Param state of both kinds).

  ``bias=False``: no bias before the BatchNorm, whose gradient is rounding noise that Adam
  turns into full steps, so that two compilations of the same step agree in eval mode too.
  """
  from flax import nnx

  class BatchNormMLP(nnx.Module):
    def __init__(self):
      self.l1 = nnx.Linear(64, hidden, use_bias=bias, rngs=rngs)
      self.bn = nnx.BatchNorm(hidden, rngs=rngs)
      self.drop = nnx.Dropout(0.2, rngs=rngs)
      self.l2 = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x):
      return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))

  return BatchNormMLP()


def cross_entropy(model, batch):
  """The classification loss of a batch ``(x, y)``, with the accuracy as an aux metric."""
  x, y = batch
  logits = model(x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, {"accuracy": jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))}
