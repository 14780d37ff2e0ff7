"""Per-leaf machinery shared by every transformation in this package.

* ``zeros_like`` / ``init_moments``: moments shaped, typed and sharded like the params.
* ``map_leaves``: the step loop, one ``leaf_fn`` call per gradient leaf, trees in, trees out.
* ``adam_leaf``: Adam's arithmetic on one array (used by the 8-bit, stochastic-rounding
  and lazy transformations too).
* ``moment_transform``: a transformation with optax's ``ScaleByAdamState`` whose step
  is a given per-leaf function (RAdam, Adamax, AdaBelief, ADOPT, lazy Adam).
* ``check_float_leaves``: the error for integer and boolean params, naming the leaf.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

try:
  from jax.experimental.shard_alike import shard_alike
except ImportError:  # not in every jax release; without it, zeros are not tied to p
  shard_alike = getattr(jax.sharding, "shard_alike", None)

from adam_jax import _numerics as numerics
from adam_jax._tree import path_name

Array = jax.Array


# optax's own class, so that ``isinstance``, tree maps across an optax state and ours,
# and optax's tools (``optax.tree.get``, checkpoints written by optax) work unchanged:
# count (shape=(), int32; steps taken, saturating), mu (like params; mu_dtype, default
# the param dtype), nu (like params, real; nu_dtype, default the param's real dtype).
ScaleByAdamState = optax.ScaleByAdamState


def check_float_leaves(params: Any, who: str) -> None:
  """Raises ``ValueError`` naming the first integer or boolean leaf of ``params``.

  An optimizer moves floating-point (or complex) params; an integer leaf (a step
  counter, a token table) would be cast to zeros or refused deep in the step. The
  message names the leaf and says how to keep such leaves away from the optimizer.
  """
  for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
    dtype = jnp.result_type(p)
    if jnp.issubdtype(dtype, jnp.inexact):
      continue
    name = path_name(path) or "<the params' only leaf>"
    raise ValueError(
        f"{who}: the param {name!r} has dtype {dtype.name}; Adam's family updates "
        "floating-point (and complex) params only. Keep integer and boolean leaves out of "
        "what the optimizer is given: in Flax NNX, nnx.Optimizer(model, tx, wrt=nnx.Param) "
        "with such values in another nnx.Variable type (Linen: optimize variables['params'] "
        "only); with a pytree of params, split them off, or give them no update with "
        "optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels), "
        "labels being 'frozen' for those leaves.")


def abs_sq(g: Array) -> Array:
  """``|g|**2``, real for complex ``g``."""
  if jnp.iscomplexobj(g):
    return jnp.real(g) ** 2 + jnp.imag(g) ** 2
  return g * g


def _sharding_in_type(p: Any) -> bool:
  """Whether traced ``p``'s type carries its whole sharding (every mesh axis explicit)."""
  mesh = jax.typeof(p).sharding.mesh
  return bool(mesh.axis_names) and mesh.are_all_axes_explicit


def zeros_like(p: Any, dtype: Any) -> Array:
  """Zeros of ``p``'s shape in ``dtype``, sharded like ``p``.

  Concrete arrays pass their sharding to ``jnp.zeros_like``, and so do traced
  arrays on explicit-sharding meshes (through their type). Under ``jax.jit`` on
  auto meshes the sharding of an input is only known to the compiler, so the
  zeros are tied to ``p`` with ``shard_alike``: without it, zeros that depend on
  no input are placed on one device (optax's behaviour). On explicit meshes an
  optimization barrier keeps ``p`` an input of the program (``jit`` drops unused
  inputs, and with them the devices the zeros' type names); XLA removes it.
  """
  zeros = jnp.zeros_like(p, dtype=dtype)
  if isinstance(p, jax.core.Tracer):
    if _sharding_in_type(p):
      zeros, _ = jax.lax.optimization_barrier((zeros, p))
    elif shard_alike is not None:
      zeros, _ = shard_alike(zeros, p)
  return zeros


def init_moments(params: Any, mu_dtype: Any, nu_dtype: Any):
  """Zero first and second moments shaped and sharded like ``params``.

  The first moment takes ``mu_dtype`` (default: the param's dtype), the second
  ``nu_dtype`` (default: the real counterpart of the param's dtype). Each
  moment has its param's sharding, also when ``init`` runs under ``jax.jit``.
  """

  def mu0(p):
    return zeros_like(p, mu_dtype or jnp.result_type(p))

  def nu0(p):
    return zeros_like(p, nu_dtype or numerics.real_dtype(jnp.result_type(p)))

  return jax.tree.map(mu0, params), jax.tree.map(nu0, params)


def adam_leaf(
    g: Array,
    mu: Array,
    nu: Array,
    nu_max: Array | None,
    count: Array,
    *,
    b1: ArrayLike,
    b2: ArrayLike,
    eps: ArrayLike,
    eps_root: ArrayLike,
    nesterov: bool,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
):
  """One Adam step on one array, computed in at least float32.

  Returns ``(update, mu, nu, nu_max)`` with the update in ``g``'s dtype and each
  moment in its own stored dtype (``nu_max`` is ``None`` without AMSGrad).
  ``bias_correction_mu`` / ``bias_correction_nu`` set to ``False`` leave the
  first / second moment uncorrected (``optax.amsgrad``'s options).
  """
  cd = numerics.compute_dtype(g.dtype, mu.dtype)
  rd = numerics.real_dtype(cd)
  g_c = g.astype(cd)
  b1_c, b2_r = numerics.hyper(b1, cd), numerics.hyper(b2, rd)
  # m_t = b1 m_{t-1} + (1 - b1) g_t ;  v_t = b2 v_{t-1} + (1 - b2) |g_t|^2
  mu_c = b1_c * mu.astype(cd) + (1 - b1_c) * g_c
  nu_c = b2_r * nu.astype(rd) + (1 - b2_r) * abs_sq(g_c)
  nu_used, nu_max_new = nu_c, None
  if nu_max is not None:
    # AMSGrad (Reddi et al.; torch): max over the raw second moment.
    nu_used = jnp.maximum(nu_max.astype(rd), nu_c)
    nu_max_new = nu_used.astype(nu_max.dtype)
  bc1 = numerics.bias_correction(b1, count, rd)
  if nesterov:
    bc1_next = numerics.bias_correction(b1, numerics.safe_increment(count), rd)
    if not bias_correction_mu:
      bc1 = bc1_next = jnp.ones((), rd)
    mu_hat = b1_c * mu_c / bc1_next.astype(cd) + (1 - b1_c) * g_c / bc1.astype(cd)
  elif bias_correction_mu:
    mu_hat = mu_c / bc1.astype(cd)
  else:
    mu_hat = mu_c
  nu_hat = nu_used / numerics.bias_correction(b2, count, rd) if bias_correction_nu else nu_used
  denom = jnp.sqrt(nu_hat + numerics.hyper(eps_root, rd)) + numerics.hyper(eps, rd)
  update = mu_hat / denom.astype(cd)
  return update.astype(g.dtype), mu_c.astype(mu.dtype), nu_c.astype(nu.dtype), nu_max_new



def map_leaves(
    leaf_fn: Callable[..., tuple], updates: Any, *trees: Any, num_outputs: int
) -> tuple[Any, ...]:
  """The step loop: ``leaf_fn(g, *leaves) -> tuple`` once per leaf of ``updates``.

  Each of ``trees`` has the structure of ``updates`` down to its leaves (its leaves
  may be any pytree or array: Adam-mini's blocks, 8-bit codes) or is ``None``, which
  passes ``None`` for every leaf. Returns ``num_outputs`` trees shaped like
  ``updates``, the i-th made of the i-th outputs of ``leaf_fn``.
  """
  g_leaves, treedef = jax.tree.flatten(updates)
  columns = [[None] * len(g_leaves) if t is None else treedef.flatten_up_to(t)
             for t in trees]
  outs = [leaf_fn(*row) for row in zip(g_leaves, *columns)]
  return tuple(treedef.unflatten([o[i] for o in outs]) for i in range(num_outputs))


def moment_transform(
    leaf_fn: Callable[..., tuple],
    mu_dtype: Any,
    nu_dtype: Any,
    leaf_options: Callable[[Any], Any] | None = None,
    *,
    who: str,
    state_class: Any = ScaleByAdamState,
) -> optax.GradientTransformation:
  """A transformation with state ``state_class(count, mu, nu)`` whose step is ``leaf_fn``.

  ``leaf_fn(g, mu, nu, count) -> (update, mu, nu)``, with ``count`` already incremented.
  With ``leaf_options``, ``leaf_options(updates)`` gives a tree of one value per leaf of
  ``updates``, passed as a fifth argument (lazy Adam's mask). ``who`` names the
  transformation in errors; ``state_class`` is optax's class of the same state
  (``optax.ScaleByAdamState``, or ``optax.ScaleByBeliefState`` for AdaBelief).
  """
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)
  nu_dtype = None if nu_dtype is None else jnp.dtype(nu_dtype)

  def init_fn(params):
    check_float_leaves(params, who)
    mu, nu = init_moments(params, mu_dtype, nu_dtype)
    return state_class(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

  def update_fn(updates, state, params=None):
    del params
    numerics.tree_check_same_structure(updates, state.mu)
    count = numerics.safe_increment(state.count)
    options = None if leaf_options is None else leaf_options(updates)
    u, mu, nu = map_leaves(lambda g, m, v, *o: leaf_fn(g, m, v, count, *o), updates,
                           state.mu, state.nu, *([] if options is None else [options]),
                           num_outputs=3)
    return u, state_class(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def scalar_dtype(params: Any) -> jnp.dtype:
  """The widest real compute dtype of the params' leaves (float32 without leaves)."""
  leaves = jax.tree.leaves(params)
  if not leaves:
    return jnp.dtype(jnp.float32)
  return numerics.real_dtype(numerics.compute_dtype(*[jnp.asarray(p).dtype for p in leaves]))


def real_dot(a: Array, b: Array, dtype: Any) -> Array:
  """``Re <a, b>`` summed over every element, in ``dtype``."""
  if jnp.iscomplexobj(a) or jnp.iscomplexobj(b):
    prod = jnp.real(jnp.conj(a) * b)
  else:
    prod = a * b
  return jnp.sum(prod.astype(dtype), dtype=dtype)
