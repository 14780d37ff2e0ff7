"""Property tests: random pytrees, dtypes and options for every alias.

For any tree (nested dicts, lists and tuples; ``None`` nodes; scalars and empty
arrays), any dtype (float16, bfloat16, float32, float64, complex64, or a mix of
float16, bfloat16 and float32 arrays in one tree) and any combination of options,
over three steps:

* the updates have the params' structure and shapes and the gradients' dtypes;
* the state keeps its structure, shapes, dtypes and weak types, also through
  ``lax.cond`` (whose branches must agree on them);
* finite params and gradients give finite updates and state;
* ``jax.jit`` gives what op-by-op execution gives.

Each alias runs ``ADAM_JAX_HYPOTHESIS_EXAMPLES`` examples (default 3); raise it to
explore further.
"""

import inspect
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
from tests import helpers

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
# The same examples on every run, so that a run's outcome does not depend on the draw;
# ADAM_JAX_HYPOTHESIS_RANDOM=1 explores new ones (with more EXAMPLES, to hunt for bugs).
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    derandomize=not os.environ.get("ADAM_JAX_HYPOTHESIS_RANDOM"),
                    suppress_health_check=[HealthCheck.too_slow])
STEPS = 3
DTYPES = ["float16", "bfloat16", "float32", "float64", "complex64", "mixed"]
MIXED = ["float16", "bfloat16", "float32"]  # "mixed": each array its own dtype
# jit against op-by-op: both compute in float32 (float64) and round once, so they
# differ by an ulp or two of the stored dtype; three steps can add a few more.
TOL = {"float16": 4e-3, "bfloat16": 3e-2, "float32": 2e-5, "float64": 1e-12,
       "complex64": 2e-5, "mixed": 3e-2}
# These keep float32 state whatever the params' dtype (schedule-free: its sum of
# squared step sizes; 8-bit: its block scales), so their float64 updates are
# float32-accurate.
FLOAT32_STATE = {"schedule_free_adamw", "adam8bit", "adamw8bit"}
TOL_FLOAT64_FLOAT32_STATE = 2e-6

_OPTIONS = {"weight_decay", "mask", "mu_dtype", "nu_dtype", "maximize", "amsgrad", "nesterov",
            "eps_root", "decoupled_weight_decay", "use_clipping", "bias_correction_mu",
            "bias_correction_nu"}
_FLAGS = {"amsgrad", "nesterov", "decoupled_weight_decay", "use_clipping", "bias_correction_mu",
          "bias_correction_nu"}


def _accepted(alias):
  """The keyword options ``alias`` accepts besides the learning rate, from its signature."""
  params = inspect.signature(adam_jax.get_optimizer(alias)).parameters
  ok = set(params) & _OPTIONS
  if "block_size" in params:
    ok.add("block")
  if "weight_decay" in params and "Schedule" in str(params["weight_decay"].annotation):
    ok.add("wd_schedule")
  return ok


# Every registered alias, with the options it accepts.
ALIASES = {alias: _accepted(alias) for alias in helpers.ALIASES}


class Shape(tuple):
  """A leaf of the tree of shapes (not a pytree node, unlike a plain tuple)."""


SHAPES = st.sampled_from([(), (0,), (3,), (2, 3), (1, 0, 2), (4, 1)]).map(Shape)


def _trees(depth=3):
  """Shapes nested in dicts, lists and tuples, with ``None`` nodes; at most 8 arrays."""
  leaf = st.one_of(SHAPES, st.none())
  if depth == 0:
    return leaf
  kids = _trees(depth - 1)
  return st.one_of(
      leaf,
      st.dictionaries(st.sampled_from(["a", "b", "w"]), kids, min_size=1, max_size=2),
      st.lists(kids, min_size=1, max_size=2),
      st.lists(kids, min_size=1, max_size=2).map(tuple),
  )


def _is_shape(x):
  return isinstance(x, Shape)


@st.composite
def _options(draw, alias, dtype):
  ok = ALIASES[alias]
  kw = {"maximize": draw(st.booleans())}
  lr = draw(st.sampled_from(["const", "schedule"]))
  if "weight_decay" in ok:
    wd = draw(st.sampled_from([0.0, 0.1] + (["schedule"] if "wd_schedule" in ok else [])))
    kw["weight_decay"] = schedules.step_decay(0.1, 2) if wd == "schedule" else wd
  if "mask" in ok and draw(st.booleans()):
    kw["mask"] = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  if "mu_dtype" in ok and dtype != "complex64":  # a real moment cannot hold complex
    kw["mu_dtype"] = draw(st.sampled_from([None, jnp.bfloat16, jnp.float32]))
  if "nu_dtype" in ok:
    kw["nu_dtype"] = draw(st.sampled_from([None, jnp.bfloat16, jnp.float32]))
  if "block" in ok:  # 8-bit moments: quantize even the smallest arrays, in small blocks
    kw["block_size"] = draw(st.sampled_from([2, 4, 256]))
    kw["min_quantized_size"] = 0
  for flag in sorted(ok & _FLAGS):
    kw[flag] = draw(st.booleans())
  if alias == "adopt" and dtype in ("float16", "mixed"):
    # Unclipped ADOPT divides by eps (1e-6) after a zero first gradient: g * 1e6
    # passes float16's maximum. That is the method; its clipping is what bounds it.
    kw["use_clipping"] = True
  if "eps_root" in ok:
    kw["eps_root"] = draw(st.sampled_from([0.0, 1e-8]))
  return lr, kw


def _make(alias, lr, kw):
  learning_rate = schedules.warmup_cosine(1e-2, 2, 10, init_value=1e-3) if lr == "schedule" \
      else 1e-2
  return getattr(adam_jax, alias)(learning_rate, **kw)


def _dtypes(shape_tree, dtype, rng):
  """The dtype of each leaf: ``dtype``, or for "mixed" a low-precision mix per leaf."""
  pick = lambda _: rng.choice(MIXED) if dtype == "mixed" else dtype
  return jax.tree.map(pick, shape_tree, is_leaf=_is_shape)


def _arrays(shape_tree, dtypes, rng, scale=1.0, zeros=0.0):
  def draw(shape, dtype):
    x = rng.standard_normal(shape) * scale
    if dtype == "complex64":
      x = x + 1j * rng.standard_normal(shape) * scale
    x = np.where(rng.random(shape) < zeros, 0, x)
    return jnp.asarray(x, dtype)

  return jax.tree.map(draw, shape_tree, dtypes, is_leaf=_is_shape)


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
  dtypes = _dtypes(shape_tree, dtype, rng)
  params = _arrays(shape_tree, dtypes, rng)
  grads = [_arrays(shape_tree, dtypes, rng, scale, zeros) for _ in range(STEPS)]
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
  def step(g, s, p, pred):
    u, s_new = tx.update(g, s, p)
    through_cond = jax.lax.cond(pred, lambda s: tx.update(g, s, p)[1], lambda s: s, s)
    return u, s_new, through_cond

  tol = TOL[dtype]
  if alias in FLOAT32_STATE and dtype == "float64":
    tol = TOL_FLOAT64_FLOAT32_STATE
  p, s = params, state0
  for g, (u_eager, s_eager) in zip(grads, eager_out):
    u, s_new, s_cond = step(g, s, p, jnp.asarray(True))
    assert _types(s_new) == types0 and _types(s_cond) == types0
    _assert_close(u, u_eager, tol)
    _assert_close(s_new, s_eager, tol)
    _assert_close(s_cond, s_new, tol)
    p, s = optax.apply_updates(p, u), s_new


@pytest.mark.parametrize("alias", sorted(ALIASES))
@SETTINGS
@given(data=st.data())
def test_properties(alias, data):
  dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
  # params=None would read as "no params given"; None inside a tree is fine.
  shape_tree = data.draw(_trees().filter(lambda tree: tree is not None), label="tree")
  lr, kw = data.draw(_options(alias, dtype), label="options")
  seed = data.draw(st.integers(0, 2**16), label="seed")
  scale = data.draw(st.sampled_from([1e-3, 1.0, 30.0]), label="gradient scale")
  zeros = data.draw(st.sampled_from([0.0, 0.5]), label="fraction of zero gradients")
  with jax.enable_x64(dtype == "float64"):
    _check(alias, dtype, shape_tree, lr, kw, seed, scale, zeros)



# Regressions the property test found: dtype joins refused by strict promotion.


@pytest.mark.parametrize("alias", ["adopt", "adam_mini"])
def test_low_precision_first_moment(alias):
  params = {"w": jnp.ones(3, jnp.float32)}
  tx = getattr(adam_jax, alias)(1e-2, mu_dtype=jnp.bfloat16)
  updates, state = tx.update({"w": jnp.ones(3, jnp.float32)}, tx.init(params), params)
  assert updates["w"].dtype == jnp.float32
  assert state[0].mu["w"].dtype == jnp.bfloat16


def test_schedule_free_mixed_dtype_tree():
  params = {"a": jnp.ones(2, jnp.float16), "b": jnp.ones(2, jnp.bfloat16)}
  tx = adam_jax.schedule_free_adamw(1e-2)
  updates, _ = tx.update(params, tx.init(params), params)
  assert updates["a"].dtype == jnp.float16 and updates["b"].dtype == jnp.bfloat16
