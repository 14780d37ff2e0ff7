"""Finding Adam's second moments inside any optimizer state."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adam_jax import _numerics as numerics
from adam_jax._tree import path_name

Array = jax.Array

DEFAULT_EPS = 1e-8
DEFAULT_B2 = 0.999


def is_adam_like(node: Any) -> bool:
  r"""A NamedTuple with ``count`` and ``nu``, whose ``nu`` is Adam's second moment.

  D-Adaptation's and Prodigy's states (with a learnt distance ``d``) accumulate
  :math:`d^2 g^2` in ``nu`` and compare it with :math:`d \epsilon`: not Adam's
  regime test, so they are not read.
  """
  fields = getattr(node, "_fields", None)
  return (isinstance(node, tuple) and fields is not None and "count" in fields
          and "nu" in fields and "d" not in fields)



def find(tree: Any, pred: Callable[[Any], bool]) -> list[tuple[Any, Any]]:
  """``(path, node)`` for every node of ``tree`` matching ``pred`` (outermost first)."""
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=pred)[0]
  return [(path, node) for path, node in flat if pred(node)]


def path_str(path: Sequence[Any]) -> str:
  """``"layers/0/kernel"`` for a key path (a trailing ``.value`` of Flax NNX dropped)."""
  return path_name(path) or "."


def scalar(x: Any) -> Array:
  """The array inside ``x`` (unwraps a Flax NNX variable)."""
  leaves = jax.tree.leaves(x)
  if len(leaves) != 1:
    raise ValueError(f"expected one array for the step count, got {len(leaves)}")
  count = jnp.asarray(leaves[0])
  if count.ndim:
    raise ValueError(
        f"the state's step count has shape {count.shape}, not a scalar: for a batched "
        "(vmapped) state, call this under jax.vmap or take one slice, "
        "jax.tree.map(lambda x: x[i], state)"
    )
  return count


class Moment(NamedTuple):
  """The second moment of one Adam-like state: ``v_hat = v / bc2``."""

  count: Array  # shape=(), int32
  paths: list  # leaf path strings, one per array in v
  treedef: Any  # tree structure of the moment
  v: list  # arrays like params, as stored (AMSGrad: the running maximum)
  bc2: Array  # shape=(), float32; bias correction (1 where already applied)

  def v_hat(self) -> list:
    """The bias-corrected second moments, float32."""
    return [jnp.real(v).astype(jnp.float32) / self.bc2 for v in self.v]

  def dominated(self, eps: Any) -> list:
    """Per leaf, a boolean array: ``sqrt(v_hat) < eps``, as ``v < eps**2 * bc2``."""
    thresh = jnp.square(jnp.asarray(eps, jnp.float32)) * self.bc2
    return [jnp.real(v).astype(jnp.float32) < thresh for v in self.v]


def find_moments(opt_state: Any, b2: Any) -> list[Moment]:
  """The bias-corrected second moments of every Adam-like state in ``opt_state``."""
  found = find(opt_state, is_adam_like)
  if not found:
    raise ValueError(
        "no Adam-like state (a NamedTuple with fields `count` and `nu`) was found in "
        f"opt_state of type {type(opt_state).__name__}; pass the state of an Adam-family "
        "optimizer"
    )
  numerics.check_betas(b2=b2)
  out = []
  for _, state in found:
    count = scalar(state.count)
    if isinstance(state, optax.ScaleByAmsgradState):
      # optax keeps the maximum of the bias-corrected second moment.
      moment, bc2 = state.nu_max, jnp.ones((), jnp.float32)
    else:
      moment = state.nu_max if "nu_max" in state._fields else state.nu
      bc2 = numerics.bias_correction(b2, count, jnp.float32)
      bc2 = jnp.where(count > 0, bc2, 1).astype(jnp.float32)
    flat = jax.tree_util.tree_flatten_with_path(moment)[0]
    paths = [path_str(p) for p, _ in flat]
    out.append(Moment(count=count, paths=paths, treedef=jax.tree.structure(moment),
                       v=[jnp.asarray(v) for _, v in flat], bc2=bc2))
  return out


def merge_paths(moments: list[Moment]) -> list[list[str]]:
  """Leaf names; prefixed by the state's index when several states share a name."""
  names = [p for m in moments for p in m.paths]
  if len(names) == len(set(names)):
    return [m.paths for m in moments]
  return [[f"{i}:{p}" for p in m.paths] for i, m in enumerate(moments)]


def resolve_eps(eps: Any) -> Any:
  eps = DEFAULT_EPS if eps is None else eps
  numerics.check_nonnegative(eps=eps)
  return eps

