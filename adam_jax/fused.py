"""The multi-tensor engine: one elementwise update over many small leaves at once.

An optimizer step over a pytree is, per leaf, a handful of elementwise operations.
XLA compiles each leaf into its own kernel(s), so a model with hundreds of small
leaves (biases, norms) pays hundreds of kernel launches for a few kilobytes each.
The engine groups small leaves whose inputs share dtypes into one flat buffer per
group, runs the leaf function once on it, and splits the results back; large
leaves are updated in place, one kernel each, as before. The state keeps the
param tree's structure: only the computation is regrouped, never the storage.

The numbers are those of the per-leaf path (the same elementwise function on the
same values); tests hold the two paths to float32 rounding for every alias.

It is off by default (``fused=None`` or ``False``) because it is not faster on
the layouts measured so far (``benchmarks/RESULTS.md``): on an H200 a
GPT-2-medium-like tree took 3.86 ms per step with it and 3.56 ms without
(optax: 3.52 ms), and on the CPU XLA's concatenation of many operands costs
more than the per-leaf kernels it saves. It also cannot see the leaves'
shardings inside ``jit``, so it only runs in a process that sees one device
(elsewhere ``fused=True`` falls back to the per-leaf path). ``fused=True`` turns
it on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

#: Leaves with at most this many elements are bucketed; larger ones stay in place.
BUCKET_MAX_SIZE = 2**16


def _single_device() -> bool:
  return jax.device_count() == 1


def enabled(fused: bool | None) -> bool:
  """Resolves the ``fused`` argument of a transformation.

  On only when asked, and only in a process that sees one device: inside ``jit``
  the leaves' shardings are not visible, so with several devices the engine
  cannot keep leaves of different shardings out of one bucket, and it falls back
  to the per-leaf path.
  """
  return bool(fused) and _single_device()


def map_leaves(
    leaf_fn: Callable[..., tuple],
    columns: Sequence[Sequence[Any]],
    *,
    fused: bool,
    max_bucket_size: int | None = None,
) -> list[tuple]:
  """Applies an elementwise ``leaf_fn`` leaf by leaf, bucketing small leaves.

  Args:
    leaf_fn: ``leaf_fn(*arrays) -> tuple`` of arrays (or ``None``) each shaped like
      the first argument; it must act element by element.
    columns: one sequence per argument of ``leaf_fn``, each with one entry per
      leaf (an array, or ``None`` where the argument is absent for every leaf).
    fused: group small leaves into flat buckets; ``False`` is the per-leaf path.
    max_bucket_size: largest leaf (in elements) that is bucketed.

  Returns:
    One output tuple of ``leaf_fn`` per leaf, in order.
  """
  n_leaves = len(columns[0])
  rows = [tuple(col[i] for col in columns) for i in range(n_leaves)]
  if not fused:
    return [leaf_fn(*row) for row in rows]
  limit = BUCKET_MAX_SIZE if max_bucket_size is None else max_bucket_size
  groups: dict[tuple, list[int]] = {}
  for i, row in enumerate(rows):
    size = row[0].size
    if 0 < size <= limit:
      key = tuple(None if a is None else jnp.dtype(a.dtype) for a in row)
      groups.setdefault(key, []).append(i)
  results: list[tuple | None] = [None] * n_leaves
  for members in groups.values():
    if len(members) < 2:
      continue
    flat_args = []
    for j in range(len(columns)):
      col = [rows[i][j] for i in members]
      flat_args.append(None if col[0] is None else jnp.concatenate([a.ravel() for a in col]))
    flat_out = leaf_fn(*flat_args)
    offset = 0
    for i in members:
      shape, size = rows[i][0].shape, rows[i][0].size
      results[i] = tuple(
          None if o is None else o[offset:offset + size].reshape(shape) for o in flat_out
      )
      offset += size
  return [leaf_fn(*rows[i]) if r is None else r for i, r in enumerate(results)]
