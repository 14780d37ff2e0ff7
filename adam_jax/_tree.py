"""Key paths as names: one rule for diagnostics, checkpoints, Adam-mini and lazy Adam."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax


def key_name(entry: Any) -> str:
  """The name of one key-path entry: a dict key, an attribute, a sequence index."""
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def path_name(path: Sequence[Any], separator: str = "/") -> str:
  """``(DictKey('layers'), SequenceKey(0), GetAttrKey('kernel'))`` -> ``"layers/0/kernel"``.

  A trailing ``.value`` (a Flax NNX variable) is dropped. The empty path is ``""``.
  """
  path = tuple(path)
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  return separator.join(key_name(k) for k in path)
