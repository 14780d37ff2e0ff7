"""Per-leaf machinery shared by every transformation in this package.

* ``zeros_like`` / ``init_moments``: moments shaped, typed and sharded like the params.
* ``map_leaves``: the step loop, one ``leaf_fn`` call per gradient leaf, trees in, trees out.
* ``adam_leaf``: Adam's arithmetic on one array (used by the 8-bit, stochastic-rounding
  and lazy transformations too).
* ``moment_transform``: a transformation with :class:`ScaleByAdamState` whose step is
  a given per-leaf function (RAdam, Adamax, AdaBelief, ADOPT).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

try:
  from jax.experimental.shard_alike import shard_alike
except ImportError:  # not in every jax release; without it, zeros are not tied to p
  shard_alike = getattr(jax.sharding, "shard_alike", None)

from adam_jax import _numerics as numerics

Array = jax.Array


class ScaleByAdamState(NamedTuple):
  """State of :func:`adam_jax.scale_by_adam` (field names as in optax)."""

  count: Array  # shape=(), dtype=int32; steps taken, saturating
  mu: optax.Updates  # like params; dtype=mu_dtype (default: param dtype)
  nu: optax.Updates  # like params, real; dtype=nu_dtype (default: param dtype)


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
):
  """One Adam step on one array, computed in at least float32.

  Returns ``(update, mu, nu, nu_max)`` with the update in ``g``'s dtype and each
  moment in its own stored dtype (``nu_max`` is ``None`` without AMSGrad).
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
  bc2 = numerics.bias_correction(b2, count, rd)
  if nesterov:
    bc1_next = numerics.bias_correction(b1, numerics.safe_increment(count), rd)
    mu_hat = b1_c * mu_c / bc1_next.astype(cd) + (1 - b1_c) * g_c / bc1.astype(cd)
  else:
    mu_hat = mu_c / bc1.astype(cd)
  nu_hat = nu_used / bc2
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
) -> optax.GradientTransformation:
  """A transformation with :class:`ScaleByAdamState` whose step is ``leaf_fn``.

  ``leaf_fn(g, mu, nu, count) -> (update, mu, nu)``, with ``count`` already incremented.
  With ``leaf_options``, ``leaf_options(updates)`` gives a tree of one value per leaf of
  ``updates``, passed as a fifth argument (lazy Adam's mask).
  """
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)
  nu_dtype = None if nu_dtype is None else jnp.dtype(nu_dtype)

  def init_fn(params):
    mu, nu = init_moments(params, mu_dtype, nu_dtype)
    return ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

  def update_fn(updates, state, params=None):
    del params
    numerics.tree_check_same_structure(updates, state.mu)
    count = numerics.safe_increment(state.count)
    options = None if leaf_options is None else leaf_options(updates)
    u, mu, nu = map_leaves(lambda g, m, v, *o: leaf_fn(g, m, v, count, *o), updates,
                           state.mu, state.nu, *([] if options is None else [options]),
                           num_outputs=3)
    return u, ScaleByAdamState(count=count, mu=mu, nu=nu)

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
