"""Save and restore optimizer state, or any pytree of arrays, with orbax.

``orbax.checkpoint`` stores a pytree's arrays; read back without a target it gives
nested dicts and lists, so ``ScaleByAdamState``, ``optax.EmptyState`` and every
other NamedTuple is lost (flax issue #4423). :func:`restore` therefore always takes
``like``, a tree with the structure wanted (a real state, or the abstract one from
``jax.eval_shape``), checks the checkpoint against it leaf by leaf and rebuilds it
with exactly that structure. Arrays round-trip bit for bit, so a run interrupted
after step ``k`` and resumed from the checkpoint takes the same steps as one that
never stopped.

Zero-size arrays, which orbax refuses to write, are recorded by shape and dtype
only. orbax-checkpoint is an optional dependency, imported on first use.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adam_jax._tree import key_name

_EMPTY_KEY = "adam_jax_empty_leaves"
_NO_ARRAYS = "adam_jax_no_arrays"


class CheckpointNotFoundError(FileNotFoundError, ValueError):
  """Raised by :func:`restore` when no checkpoint exists at the path given."""


def _orbax():
  try:
    import orbax.checkpoint as ocp
  except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "adam_jax.checkpoint needs orbax-checkpoint: pip install orbax-checkpoint"
    ) from err
  return ocp


def _leaf_name(path: tuple) -> str:
  """``(SequenceKey(0), GetAttrKey('mu'), DictKey('w'))`` -> ``"0.mu.w"``, as orbax names it."""
  return ".".join(key_name(k) for k in path) or "<root>"


def _abstract(leaf: Any) -> jax.ShapeDtypeStruct:
  """Shape, dtype and (for a placed array) sharding of one leaf of ``like``."""
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return leaf
  if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
  return jax.eval_shape(lambda: jnp.asarray(leaf))


def _absolute(path: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(os.fspath(path)).expanduser().absolute()


def save(path: str | os.PathLike, state: Any, *, overwrite: bool = False) -> pathlib.Path:
  """Writes ``state`` (any pytree of arrays) to the directory ``path``.

  Args:
    path: directory to create; relative paths are taken from the working
      directory. Its parent directories are created as needed.
    state: the pytree to save: an optimizer state, ``(params, opt_state)``, ...
      Leaves are arrays (JAX or NumPy); ``None`` and empty nodes are kept.
    overwrite: replace an existing checkpoint at ``path`` instead of raising.

  Returns:
    The absolute path written.

  Raises:
    ValueError: ``path`` exists and ``overwrite`` is false.

  Examples:
    >>> import tempfile, jax.numpy as jnp, adam_jax
    >>> from adam_jax import checkpoint
    >>> tx = adam_jax.adam(1e-3)
    >>> state = tx.init({"w": jnp.ones(3)})
    >>> path = checkpoint.save(tempfile.mkdtemp() + "/step_10", state)
    >>> restored = checkpoint.restore(path, like=state)
    >>> type(restored[0]).__name__
    'ScaleByAdamState'
  """
  ocp = _orbax()
  path = _absolute(path)
  if path.exists() and not overwrite:
    raise ValueError(f"checkpoint path {path} already exists; pass overwrite=True to replace it")
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(state)
  empty = {}
  leaves = []
  for key_path, leaf in leaves_with_path:
    if np.size(leaf) == 0:
      spec = _abstract(leaf)
      empty[_leaf_name(key_path)] = [list(spec.shape), jnp.dtype(spec.dtype).name]
      leaves.append(None)
    else:
      leaves.append(leaf)
  # orbax refuses a tree without arrays (optax.EmptyState(), ()): store a stand-in.
  tree = treedef.unflatten(leaves) if any(x is not None for x in leaves) else {_NO_ARRAYS: None}
  path.parent.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, tree, force=overwrite, custom_metadata={_EMPTY_KEY: empty})
  return path


def _describe(shape: Any, dtype: Any) -> str:
  return f"{jnp.dtype(dtype).name}{list(shape)}"


def restore(path: str | os.PathLike, like: Any) -> Any:
  """Reads the checkpoint at ``path`` into a tree shaped exactly like ``like``.

  Args:
    path: a directory written by :func:`save`.
    like: a tree with the structure, shapes and dtypes to restore: the value
      saved, a fresh ``tx.init(params)``, or its abstract form
      ``jax.eval_shape(tx.init, params)``. Its NamedTuple types (``ScaleByAdamState``,
      ``optax.EmptyState``, chains' tuples) are the restored tree's types. Arrays
      are placed with the sharding of ``like``'s arrays where it has one.

  Returns:
    The restored tree, with ``like``'s structure.

  Raises:
    CheckpointNotFoundError: nothing exists at ``path`` (a ``FileNotFoundError``
      and a ``ValueError``).
    ValueError: ``path`` is not a checkpoint, or it holds leaves that differ from
      ``like``'s in name, shape or dtype.

  Examples:
    >>> import tempfile, jax, jax.numpy as jnp, adam_jax
    >>> from adam_jax import checkpoint
    >>> tx = adam_jax.adam(1e-3)
    >>> params = {"w": jnp.ones(3)}
    >>> _, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    >>> path = checkpoint.save(tempfile.mkdtemp() + "/opt", state)
    >>> restored = checkpoint.restore(path, like=jax.eval_shape(tx.init, params))
    >>> int(restored[0].count), restored[0].nu["w"].dtype
    (1, dtype('float32'))
  """
  ocp = _orbax()
  path = _absolute(path)
  if not path.exists():
    raise CheckpointNotFoundError(f"no checkpoint at {path}: the path does not exist")
  if not path.is_dir():
    raise ValueError(f"{path} is not a checkpoint directory")
  like_with_path, treedef = jax.tree_util.tree_flatten_with_path(like)
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      metadata = checkpointer.metadata(path)
      stored_tree = metadata.item_metadata.tree
    except Exception as err:  # orbax raises several types for a foreign directory
      raise ValueError(f"{path} is not a checkpoint written by adam_jax.checkpoint.save "
                       "(no orbax metadata found)") from err
    stored = {
        _leaf_name(key_path): leaf
        for key_path, leaf in jax.tree_util.tree_flatten_with_path(stored_tree)[0]
    }
    stored_empty = (metadata.custom_metadata or {}).get(_EMPTY_KEY, {})

    abstract = [_abstract(leaf) for _, leaf in like_with_path]
    names = [_leaf_name(key_path) for key_path, _ in like_with_path]
    want_empty = {n: a for n, a in zip(names, abstract) if a.size == 0}
    want_full = {n: a for n, a in zip(names, abstract) if a.size != 0}
    missing = sorted(set(want_full) - set(stored)) + sorted(set(want_empty) - set(stored_empty))
    extra = sorted(set(stored) - set(want_full)) + sorted(set(stored_empty) - set(want_empty))
    if missing or extra:
      raise ValueError(
          f"the checkpoint at {path} holds a different tree than `like`: "
          f"missing {missing[:5]}, not in `like` {extra[:5]}"
      )
    for name, want in want_full.items():
      got = stored[name]
      if tuple(got.shape) != tuple(want.shape) or jnp.dtype(got.dtype) != jnp.dtype(want.dtype):
        raise ValueError(
            f"leaf {name} of the checkpoint at {path} is {_describe(got.shape, got.dtype)}, "
            f"but `like` has {_describe(want.shape, want.dtype)}"
        )
    for name, want in want_empty.items():
      shape, dtype = stored_empty[name]
      if tuple(shape) != tuple(want.shape) or jnp.dtype(dtype) != jnp.dtype(want.dtype):
        raise ValueError(
            f"leaf {name} of the checkpoint at {path} is {_describe(shape, dtype)}, "
            f"but `like` has {_describe(want.shape, want.dtype)}"
        )
    if want_full:
      target = treedef.unflatten([None if a.size == 0 else a for a in abstract])
      leaves = treedef.flatten_up_to(checkpointer.restore(path, target))
    else:
      leaves = [None] * len(abstract)

  for i, a in enumerate(abstract):
    if a.size == 0:
      # Placed (committed) like the arrays orbax restores, so one jitted step sees
      # one signature for the whole tree.
      sharding = a.sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      leaves[i] = jax.device_put(np.zeros(a.shape, a.dtype), sharding)
  return treedef.unflatten(leaves)


__all__ = ["CheckpointNotFoundError", "restore", "save"]
