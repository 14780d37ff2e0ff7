"""Schedule-free AdamW, ADOPT, Adam-mini, cautious updates and lazy Adam.

Trajectories against the float64 references of ``tests/references/numpy_modern.py``,
ADOPT on Reddi et al.'s counterexample, Adam-mini's partition on Flax modules, lazy
Adam's untouched rows, jit without recompilation, vmap over hyperparameters,
validation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests import helpers
from tests.references import numpy_adam
from tests.references import numpy_modern as ref

STEPS = 60


def _run(tx, params, steps, grads_fn=helpers.grad_leaves):
  """Runs ``tx`` (jitted step) on host-computed gradients; returns (trajectory, state, params)."""
  traj, state, p, _ = helpers.run_host_gradients(tx, params, steps, grads_fn=grads_fn)
  return traj, state, p


def _sparse_rows_grads(leaves, t):
  """helpers' gradients, with rows (r + t) % 3 == 0 of every 2-D leaf set to zero."""
  out = helpers.grad_leaves(leaves, t)
  for g in out:
    if g.ndim == 2:
      g[(np.arange(g.shape[0]) + t) % 3 == 0] = 0.0
  return out


def _column_ids(shape):
  """Block ids for 'one block per output neuron' (last axis), built by hand."""
  if len(shape) < 2:
    return np.zeros(shape, int)
  return np.broadcast_to(np.arange(shape[-1]), shape)


# ---------------------------------------------------------------- trajectories

CASES = {
    "adopt": (
        lambda: adam_jax.adopt(3e-2, b2=0.99),
        lambda p: ref.adopt(p, helpers.grad_leaves, STEPS, lr=3e-2, b2=0.99),
    ),
    "adopt-unclipped": (
        lambda: adam_jax.adopt(3e-2, b1=0.8, b2=0.5, use_clipping=False),
        lambda p: ref.adopt(p, helpers.grad_leaves, STEPS, lr=3e-2, b1=0.8, b2=0.5,
                            clipping=False),
    ),
    "adopt-decoupled": (
        lambda: adam_jax.adopt(3e-2, weight_decay=0.1, decoupled_weight_decay=True),
        lambda p: ref.adopt(p, helpers.grad_leaves, STEPS, lr=3e-2, weight_decay=0.1,
                            decoupled=True),
    ),
    "adam_mini": (
        lambda: adam_jax.adam_mini(3e-2, weight_decay=0.1),
        lambda p: ref.adam_mini(p, helpers.grad_leaves, STEPS,
                                [_column_ids(a.shape) for a in p], lr=3e-2, weight_decay=0.1),
    ),
    "cautious_adamw": (
        lambda: adam_jax.cautious_adamw(3e-2, weight_decay=0.1),
        lambda p: ref.cautious_adamw(p, helpers.grad_leaves, STEPS, lr=3e-2, weight_decay=0.1),
    ),
    "cautious-around-adam": (
        lambda: adam_jax.cautious(adam_jax.adam(3e-2, b2=0.99)),
        lambda p: ref.cautious_adamw(p, helpers.grad_leaves, STEPS, lr=3e-2, b2=0.99),
    ),
    "lazy_adam": (
        lambda: adam_jax.lazy_adam(3e-2, mask_fn=lambda g: jax.tree.map(lambda a: a.ndim == 2, g)),
        lambda p: ref.lazy_adam(p, _sparse_rows_grads, STEPS, [a.ndim == 2 for a in p], lr=3e-2),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_trajectory_matches_float64_reference(name):
  make_tx, make_ref = CASES[name]
  params = helpers.make_params(seed=1)
  grads_fn = _sparse_rows_grads if name == "lazy_adam" else helpers.grad_leaves
  got, _, _ = _run(make_tx(), params, STEPS, grads_fn)
  want = make_ref(helpers.leaves64(params))
  helpers.assert_traj_close(got, want)


def test_schedule_free_matches_reference_for_y_and_x():
  params = helpers.make_params(seed=2)
  mask = {"w": True, "b": False, "deep": [False, True]}
  tx = adam_jax.schedule_free_adamw(5e-2, b1=0.9, b2=0.99, weight_decay=0.1,
                                    warmup_steps=10, mask=mask)
  got_y, state, p = _run(tx, params, STEPS)
  decay = [False, False, True, True]  # leaves: b, deep[0], deep[1], w
  want_y, want_x = ref.schedule_free_adamw(helpers.leaves64(params), helpers.grad_leaves, STEPS,
                                           lr=5e-2, b1=0.9, b2=0.99, weight_decay=0.1,
                                           warmup_steps=10, decay=decay)
  helpers.assert_traj_close(got_y, want_y)
  x = adam_jax.schedule_free_eval_params(state, p)
  helpers.assert_traj_close([[np.asarray(a) for a in jax.tree.leaves(x)]], want_x[-1:])
  # The evaluation point is not the gradient point: the helper matters.
  assert max(np.abs(a - b).max() for a, b in zip(want_x[-1], want_y[-1])) > 1e-3


def test_references_are_sharp_enough_to_see_the_change():
  params = helpers.leaves64(helpers.make_params(seed=1))
  adam = numpy_adam.adam(params, helpers.grad_leaves, STEPS, lr=3e-2, weight_decay=0.1,
                         decoupled=True)
  caut = ref.cautious_adamw(params, helpers.grad_leaves, STEPS, lr=3e-2, weight_decay=0.1)
  with pytest.raises(AssertionError):
    helpers.assert_traj_close(adam, caut)
  clipped = ref.adopt(params, helpers.grad_leaves, STEPS, lr=3e-2, b2=0.99)
  unclipped = ref.adopt(params, helpers.grad_leaves, STEPS, lr=3e-2, b2=0.99, clipping=False)
  with pytest.raises(AssertionError):
    helpers.assert_traj_close(clipped, unclipped)
  per_leaf = ref.adam_mini(params, helpers.grad_leaves, STEPS,
                           [np.zeros(a.shape, int) for a in params], lr=3e-2)
  per_column = ref.adam_mini(params, helpers.grad_leaves, STEPS,
                             [_column_ids(a.shape) for a in params], lr=3e-2)
  with pytest.raises(AssertionError):
    helpers.assert_traj_close(per_leaf, per_column)


# ------------------------------------------------------------- ADOPT vs Adam

C = 3.0


def _online_counterexample(tx, steps=3000):
  """Reddi et al. (2018): f_t(x) = C x if t % 3 == 1 else -x on [-1, 1]; optimum x = -1."""
  x0 = jnp.zeros([], jnp.float32)

  def body(carry, t):
    x, s = carry
    g = jnp.where(t % 3 == 1, C, -1.0).astype(jnp.float32)
    u, s = tx.update(g, s, x)
    x = jnp.clip(x + u, -1.0, 1.0)  # projected step
    return (x, s), x

  run = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(1, steps + 1)))
  _, xs = run((x0, tx.init(x0)))
  return float(xs[-3:].mean())


@pytest.mark.parametrize("b2", [1 / (1 + C**2), 0.5])
def test_adopt_converges_where_adam_fails(b2):
  lr = lambda count: 0.1 / jnp.sqrt(count.astype(jnp.float32) + 1.0)
  x_adam = _online_counterexample(adam_jax.adam(lr, b1=0.0, b2=b2))
  x_adopt = _online_counterexample(adam_jax.adopt(lr, b1=0.0, b2=b2))
  assert x_adam > -0.5  # Adam is stuck away from the optimum (at +1 for b2 = 1/(1+C^2))
  assert x_adopt < -0.99


# ------------------------------------------------------------------ Adam-mini


def test_adam_mini_partition_on_flax_modules_and_memory():
  from flax import nnx

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(50, 16, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=16, qkv_features=16,
                                         decode=False, rngs=rngs)
      self.norm = nnx.LayerNorm(16, rngs=rngs)
      self.head = nnx.Linear(16, 10, rngs=rngs)

  # What nnx.Optimizer hands to init, built abstractly: only shapes matter here.
  params = nnx.state(nnx.eval_shape(lambda: Model(nnx.Rngs(0))), nnx.Param)
  shapes = adam_jax.adam_mini_block_shapes(nnx.to_pure_dict(params))
  assert shapes["embed"]["embedding"] == (50, 1)  # per token
  assert shapes["attn"]["query"]["kernel"] == (1, 4, 1)  # per head
  assert shapes["attn"]["key"]["kernel"] == (1, 4, 1)
  assert shapes["attn"]["value"]["kernel"] == (1, 4, 4)  # per output neuron
  assert shapes["attn"]["out"]["kernel"] == (1, 1, 16)
  assert shapes["attn"]["query"]["bias"] == (1, 1)  # biases: one value per leaf
  assert shapes["head"]["kernel"] == (1, 10)
  assert shapes["head"]["bias"] == (1,)
  assert shapes["norm"]["scale"] == (1,)

  state = jax.eval_shape(adam_jax.adam_mini(1e-3).init, params)
  blocks = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
  assert [nu.shape for nu in jax.tree.leaves(state[0].nu)] == blocks

  def nbytes(tree):
    return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree))

  ratio = nbytes(state) / nbytes(jax.eval_shape(adam_jax.adamw(1e-3).init, params))
  assert 0.5 <= ratio < 0.55


def test_adam_mini_rejects_a_bad_partition():
  tx = adam_jax.scale_by_adam_mini(partition=lambda path, shape: (5,))
  with pytest.raises(ValueError, match="partition"):
    tx.init({"w": jnp.zeros((2, 3))})


def test_adam_mini_with_per_element_partition_is_adam():
  params = helpers.make_params(seed=4)
  got, _, _ = _run(adam_jax.adam_mini(3e-2, weight_decay=0.0, partition=lambda path, s: ()),
                   params, 20)
  want, _, _ = _run(adam_jax.adam(3e-2), params, 20)
  helpers.assert_traj_close(got, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------- lazy Adam


def test_lazy_adam_leaves_untouched_rows_bitwise_and_dense_adam_does_not():
  rng = np.random.default_rng(0)
  params = {"embed": {"embedding": jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)},
            "w": jnp.asarray(rng.standard_normal((3, 2)), jnp.float32)}
  tx = adam_jax.lazy_adam(0.1)  # default mask: paths mentioning "embed"
  dense = adam_jax.adam(0.1)
  g1 = {"embed": {"embedding": jnp.ones((6, 3))}, "w": jnp.ones((3, 2))}
  rows = jnp.asarray([1.0, 0, 0, 1, 0, 0])[:, None] * jnp.ones((1, 3))
  g2 = {"embed": {"embedding": rows}, "w": jnp.ones((3, 2))}
  step, step_dense = jax.jit(tx.update), jax.jit(dense.update)
  s, sd = tx.init(params), dense.init(params)
  p, pd = params, params
  for g in (g1, g2):
    u, s = step(g, s, p)
    p = optax.apply_updates(p, u)
    ud, sd = step_dense(g, sd, pd)
    pd = optax.apply_updates(pd, ud)
    if g is g1:
      after_first = p
  e, e1, ed = (t["embed"]["embedding"] for t in (p, after_first, pd))
  idle = np.asarray([2, 4, 5])
  np.testing.assert_array_equal(e[idle], e1[idle])  # rows without gradient: unchanged
  assert np.all(np.abs(np.asarray(ed[idle] - e1[idle])) > 1e-3)  # dense Adam keeps moving them
  assert np.all(np.asarray(e[np.asarray([0, 3])] != e1[np.asarray([0, 3])]))
  mu = s[0].mu["embed"]["embedding"]
  np.testing.assert_allclose(mu[idle], 0.1 * np.ones((3, 3)), rtol=1e-6)  # m kept from step 1
  np.testing.assert_allclose(p["w"], pd["w"])  # other leaves: plain Adam


# ------------------------------------------------- validation (jit, vmap, dtypes: test_every_alias)

@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: adam_jax.schedule_free_adamw(1e-3, b1=0.0), "b1"),
        (lambda: adam_jax.schedule_free_adamw(1e-3, b2=1.0), "b2"),
        (lambda: adam_jax.schedule_free_adamw(-1.0), "learning_rate"),
        (lambda: adam_jax.schedule_free_adamw(1e-3, warmup_steps=-5), "warmup_steps"),
        (lambda: adam_jax.adopt(1e-3, b2=1.5), "b2"),
        (lambda: adam_jax.adopt(1e-3, eps=0.0), "eps"),
        (lambda: adam_jax.adam_mini(1e-3, b1=-0.1), "b1"),
        (lambda: adam_jax.adam_mini(1e-3, partition="heads"), "partition"),
        (lambda: adam_jax.cautious_adamw(1e-3, eps=-1.0), "eps"),
        (lambda: adam_jax.cautious("adam"), "GradientTransformation"),
        (lambda: adam_jax.lazy_adam(1e-3, b1=1.0), "b1"),
        (lambda: adam_jax.lazy_adam(-1e-3), "learning_rate"),
    ],
)
def test_bad_hyperparameters_raise_at_construction(make, name):
  with pytest.raises(ValueError, match=name):
    make()


def test_schedule_free_needs_params_and_eval_params_needs_its_state():
  tx = adam_jax.schedule_free_adamw(1e-3)
  state = tx.init({"w": jnp.zeros(2)})
  with pytest.raises(ValueError, match="params"):
    tx.update({"w": jnp.ones(2)}, state)
  with pytest.raises(ValueError, match="schedule-free"):
    adam_jax.schedule_free_eval_params(adam_jax.adamw(1e-3).init({"w": jnp.zeros(2)}),
                                       {"w": jnp.zeros(2)})


def test_lazy_mask_must_be_bools():
  tx = adam_jax.lazy_adam(1e-3, mask_fn=lambda g: jax.tree.map(lambda a: a.ndim, g))
  params = {"w": jnp.zeros((2, 2))}
  with pytest.raises(ValueError, match="mask_fn"):
    tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("name", ["adopt", "adam_mini"])
def test_low_precision_first_moment_under_strict_promotion(name):
  params = {"w": jnp.ones(3, jnp.float32)}
  tx = getattr(adam_jax, name)(1e-2, mu_dtype=jnp.bfloat16)
  state = tx.init(params)
  for _ in range(2):
    updates, state = tx.update({"w": jnp.ones(3, jnp.float32)}, state, params)
  assert updates["w"].dtype == jnp.float32
  assert state[0].mu["w"].dtype == jnp.bfloat16
  assert bool(jnp.all(updates["w"] < 0))


def test_mixed_dtype_trees_under_strict_promotion():
  params = {"a": jnp.ones(2, jnp.float16), "b": jnp.ones(2, jnp.bfloat16)}
  sf = adam_jax.schedule_free_adamw(1e-2)
  for tx in (sf, adam_jax.cautious(adam_jax.adam(1e-2))):
    updates, state = jax.jit(tx.update)(params, tx.init(params), params)
    assert updates["a"].dtype == jnp.float16 and updates["b"].dtype == jnp.bfloat16
    assert all(bool(jnp.all(u < 0)) for u in jax.tree.leaves(updates))
  x = adam_jax.schedule_free_eval_params(sf.init(params), params)
  assert x["a"].dtype == jnp.float16 and x["b"].dtype == jnp.bfloat16


def test_schedule_free_float64_params_are_float64_accurate():
  params = helpers.make_params(seed=3, dtype=np.float64)
  with jax.enable_x64(True):
    tx = adam_jax.schedule_free_adamw(5e-2, b2=0.99, weight_decay=0.1, warmup_steps=5)
    p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    state = tx.init(p)
    update = jax.jit(tx.update)
    treedef = jax.tree.structure(p)
    for t in range(1, 21):
      g = helpers.grad_leaves([np.asarray(a) for a in jax.tree.leaves(p)], t)
      u, state = update(treedef.unflatten([jnp.asarray(a) for a in g]), state, p)
      p = optax.apply_updates(p, u)
    x = adam_jax.schedule_free_eval_params(state, p)
    assert state.lr_sq_sum.dtype == jnp.float64
  want_y, want_x = ref.schedule_free_adamw(helpers.leaves64(params), helpers.grad_leaves, 20,
                                           lr=5e-2, b2=0.99, weight_decay=0.1, warmup_steps=5)
  for got, want in ((p, want_y[-1]), (x, want_x[-1])):
    for a, b in zip(jax.tree.leaves(got), want):
      np.testing.assert_allclose(np.asarray(a), b, rtol=1e-10, atol=1e-10)


def test_schedule_free_traced_b1_and_warmup_match_python_values():
  params = {"w": jnp.asarray(np.linspace(-1, 1, 6).reshape(3, 2), jnp.float32)}

  def train(b1, warmup):
    tx = adam_jax.schedule_free_adamw(5e-2, b1=b1, warmup_steps=warmup)
    p, s = params, tx.init(params)
    for _ in range(4):
      u, s = tx.update(jax.tree.map(jnp.sin, p), s, p)
      p = optax.apply_updates(p, u)
    return adam_jax.schedule_free_eval_params(s, p)["w"]

  b1s = jnp.asarray([0.5, 0.9], jnp.float32)
  warmups = jnp.asarray([0.0, 3.0], jnp.float32)
  batched = jax.jit(jax.vmap(train))(b1s, warmups)
  for i, (b1, warmup) in enumerate([(0.5, 0), (0.9, 3)]):
    np.testing.assert_allclose(batched[i], train(b1, warmup), rtol=1e-5, atol=1e-6)
  assert not np.allclose(batched[0], batched[1])
