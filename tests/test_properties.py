"""Property tests: random pytrees, dtypes and options for every alias.

For any tree (nested dicts, lists and tuples; ``None`` nodes; scalars and empty
arrays), any dtype (float16, bfloat16, float32, float64, complex64) and any
combination of options, over three steps:

* the updates have the params' structure and shapes and the gradients' dtypes;
* the state keeps its structure, shapes, dtypes and weak types, also through
  ``lax.cond`` (whose branches must agree on them);
* finite params and gradients give finite updates and state;
* ``jax.jit`` gives what op-by-op execution gives.

Each alias runs ``ADAM_JAX_HYPOTHESIS_EXAMPLES`` examples (default 3); raise it to
explore further.
"""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adam_jax
from adam_jax import schedules

# To show a failing example hypothesis imports libcst, whose import warns
# (mypy_extensions.TypedDict); warnings are errors here, which would hide the
# failure behind an internal error. Import it once, quietly.
with warnings.catch_warnings():
  warnings.simplefilter("ignore", DeprecationWarning)
  try:
    import libcst  # noqa: F401
  except ImportError:
    pass

EXAMPLES = int(os.environ.get("ADAM_JAX_HYPOTHESIS_EXAMPLES", "3"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
STEPS = 3
DTYPES = ["float16", "bfloat16", "float32", "float64", "complex64"]
# jit against op-by-op: both compute in float32 (float64) and round once, so they
# differ by an ulp or two of the stored dtype; three steps can add a few more.
TOL = {"float16": 4e-3, "bfloat16": 3e-2, "float32": 2e-5, "float64": 1e-12,
       "complex64": 2e-5}

# Keyword options each alias accepts beyond learning_rate, weight_decay, mu_dtype,
# nu_dtype, maximize and mask.
ALIASES = {
    "adam": {"amsgrad", "nesterov", "eps_root"},
    "adamw": {"amsgrad", "nesterov", "eps_root"},
    "amsgrad": {"eps_root"},
    "nadam": {"eps_root"},
    "nadamw": {"eps_root"},
    "radam": {"eps_root", "decoupled_weight_decay"},
    "adamax": set(),
    "adamaxw": set(),
    "adabelief": {"eps_root", "decoupled_weight_decay"},
}


class Shape(tuple):
  """A leaf of the tree of shapes (a plain tuple would be a pytree node)."""


jax.tree_util.register_static(Shape)  # never a node: tree.map sees it as one value
SHAPES = st.sampled_from([(), (0,), (3,), (2, 3), (1, 0, 2), (4, 1)]).map(Shape)


def _shape_trees():
  keys = st.sampled_from(["a", "b", "c", "w"])
  return st.recursive(
      st.one_of(SHAPES, st.none()),
      lambda kids: st.one_of(
          st.dictionaries(keys, kids, min_size=1, max_size=3),
          st.lists(kids, min_size=1, max_size=3),
          st.lists(kids, min_size=1, max_size=3).map(tuple),
      ),
      max_leaves=6,
  ).filter(lambda tree: tree is not None)  # params=None reads as "no params given"


def _is_shape(x):
  return isinstance(x, Shape)


@st.composite
def _options(draw, alias, dtype):
  extra = ALIASES[alias]
  kw = {"maximize": draw(st.booleans())}
  lr = draw(st.sampled_from(["const", "schedule"]))
  wd = draw(st.sampled_from([0.0, 0.1, "schedule"]))
  kw["weight_decay"] = schedules.step_decay(0.1, 2) if wd == "schedule" else wd
  if draw(st.booleans()):
    kw["mask"] = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  if dtype != "complex64":  # a real first moment cannot hold a complex gradient
    kw["mu_dtype"] = draw(st.sampled_from([None, jnp.bfloat16, jnp.float32]))
  kw["nu_dtype"] = draw(st.sampled_from([None, jnp.bfloat16, jnp.float32]))
  for flag in sorted(extra & {"amsgrad", "nesterov", "decoupled_weight_decay"}):
    kw[flag] = draw(st.booleans())
  if "eps_root" in extra:
    kw["eps_root"] = draw(st.sampled_from([0.0, 1e-8]))
  return lr, kw


def _make(alias, lr, kw):
  learning_rate = schedules.warmup_cosine(1e-2, 2, 10, init_value=1e-3) if lr == "schedule" \
      else 1e-2
  return getattr(adam_jax, alias)(learning_rate, **kw)


def _arrays(shape_tree, dtype, rng, scale=1.0, zeros=0.0):
  def draw(shape):
    x = rng.standard_normal(shape) * scale
    if dtype == "complex64":
      x = x + 1j * rng.standard_normal(shape) * scale
    x = np.where(rng.random(shape) < zeros, 0, x)
    return jnp.asarray(x, dtype)

  return jax.tree.map(draw, shape_tree, is_leaf=_is_shape)


def _types(tree):
  return jax.tree.map(lambda x: (x.shape, x.dtype, x.weak_type), tree)


def _assert_finite(tree, what):
  for x in jax.tree.leaves(tree):
    assert np.isfinite(np.asarray(x, np.complex128)).all(), f"non-finite {what}"


def _assert_close(got, want, tol):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    assert g.dtype == w.dtype
    np.testing.assert_allclose(np.asarray(g, np.complex128), np.asarray(w, np.complex128),
                               rtol=tol, atol=tol)


def _check(alias, dtype, shape_tree, lr, kw, seed, scale, zeros):
  rng = np.random.default_rng(seed)
  params = _arrays(shape_tree, dtype, rng)
  grads = [_arrays(shape_tree, dtype, rng, scale, zeros) for _ in range(STEPS)]
  tx = _make(alias, lr, kw)
  state0 = tx.init(params)
  types0 = _types(state0)

  # Op by op.
  eager_out, p, s = [], params, state0
  for g in grads:
    u, s = tx.update(g, s, p)
    assert jax.tree.structure(u) == jax.tree.structure(params)
    assert _types(u) == jax.tree.map(lambda x: (x.shape, x.dtype, False), g)
    assert _types(s) == types0
    _assert_finite(u, "updates")
    _assert_finite(s, "state")
    p = optax.apply_updates(p, u)
    eager_out.append((u, s))

  # Under jit, with the same step also taken through lax.cond.
  @jax.jit
  def step(g, s, p):
    u, s_new = tx.update(g, s, p)
    through_cond = jax.lax.cond(
        jnp.all(jnp.asarray([True])),
        lambda s: tx.update(g, s, p)[1],
        lambda s: s,
        s,
    )
    return u, s_new, through_cond

  p, s = params, state0
  for g, (u_eager, s_eager) in zip(grads, eager_out):
    u, s_new, s_cond = step(g, s, p)
    assert _types(s_new) == types0 and _types(s_cond) == types0
    _assert_close(u, u_eager, TOL[dtype])
    _assert_close(s_new, s_eager, TOL[dtype])
    _assert_close(s_cond, s_new, TOL[dtype])
    p, s = optax.apply_updates(p, u), s_new


@pytest.mark.parametrize("alias", sorted(ALIASES))
@SETTINGS
@given(data=st.data())
def test_properties(alias, data):
  dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
  shape_tree = data.draw(_shape_trees(), label="tree")
  lr, kw = data.draw(_options(alias, dtype), label="options")
  seed = data.draw(st.integers(0, 2**16), label="seed")
  scale = data.draw(st.sampled_from([1e-3, 1.0, 30.0]), label="gradient scale")
  zeros = data.draw(st.sampled_from([0.0, 0.5]), label="fraction of zero gradients")
  with jax.enable_x64(dtype == "float64"):
    _check(alias, dtype, shape_tree, lr, kw, seed, scale, zeros)
