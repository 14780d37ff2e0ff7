"""Training batches from the user's own pipeline: any iterable of batches.

A generator, a grain or torch ``DataLoader``, a ``tf.data`` NumPy iterator, a class of
the user's: each item a pytree of NumPy-convertible arrays whose shapes and dtypes never
change. The runner pulls a chunk of steps' batches on the host (in a background thread,
while the devices train the previous chunk), stacks them and feeds them to the compiled
chunk, so memory depends on the chunk, not on the dataset. Every member of a group sees
the same batches: the seeds vary the initial params and the dropout streams only.
"""

from __future__ import annotations

import concurrent.futures
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np


def is_batch_iterable(data: Any) -> bool:
  """Whether ``data`` is an iterable of batches (not arrays, a pytree of them, or a function)."""
  if isinstance(data, (tuple, list, dict, str, bytes, np.ndarray, jax.Array)) or callable(data):
    return False
  return hasattr(data, "__iter__")


class BatchStream:
  """The user's iterable of training batches, with the structure of its first batch.

  ``one_shot``: ``iter()`` gives the same iterator back (a generator): it can be read once,
  so it feeds one pass of training and cannot be resumed.
  """

  def __init__(self, data: Iterable[Any]):
    self.data = data
    self.one_shot = iter(data) is data
    self._used = False
    first_iter = iter(data)
    try:
      first = next(first_iter)
    except StopIteration:
      raise ValueError("train_data is an empty iterable: it gave no batch") from None
    self.first = jax.tree.map(np.asarray, first)
    self._pending = (first_iter, first) if self.one_shot else None
    leaves = jax.tree.leaves(self.first)
    if not leaves or any(a.ndim == 0 for a in leaves):
      raise ValueError("train_data: each batch must be a pytree of arrays with a leading "
                       "axis of examples")
    self.batch_size = int(leaves[0].shape[0])
    self.spec = jax.tree.map(lambda a: (a.shape, a.dtype), self.first)

  def batches(self, first_step: int) -> Iterator[Any]:
    """The batches from step ``first_step`` on (a fresh pass, the earlier ones skipped)."""
    if self.one_shot:
      if self._used:
        raise ValueError("train_data is a one-shot iterator (a generator) that has been read "
                         "already; pass a re-iterable (a DataLoader, a class with __iter__) "
                         "to train more than one group, rung or run from it")
      self._used = True
      it, first = self._pending
      stream = itertools.chain([first], it)
    else:
      stream = iter(self.data)
    return itertools.islice(stream, first_step, None)

  def shapes(self, length: int | None = None) -> Any:
    """``ShapeDtypeStruct``s of one batch, or of ``length`` stacked batches."""
    lead = () if length is None else (length,)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(lead + a.shape, a.dtype), self.first)


def check_resumable(problem: Any, resume: bool) -> None:
  """Refuses ``resume=True`` with a one-shot iterator: it cannot skip what was trained on."""
  if resume and problem.stream is not None and problem.stream.one_shot:
    raise ValueError("resume=True needs a re-iterable train_data (a DataLoader, a class "
                     "with __iter__): a one-shot iterator such as a generator cannot "
                     "give the batches again to skip the ones already trained on")


class Prefetcher:
  """Stacks the next chunk's batches in a background thread while the devices train."""

  def __init__(self, stream: BatchStream, first_step: int):
    self.stream = stream
    self.it = stream.batches(first_step)
    self.pool = concurrent.futures.ThreadPoolExecutor(1)
    self.pending: concurrent.futures.Future | None = None

  def _pull(self, lo: int, hi: int) -> Any:
    out = []
    for t in range(lo, hi):
      try:
        batch = next(self.it)
      except StopIteration:
        raise ValueError(f"train_data ran out of batches at step {t}: the search needs "
                         f"{hi - lo} more for steps {lo}..{hi - 1}") from None
      batch = jax.tree.map(np.asarray, batch)
      spec = jax.tree.map(lambda a: (a.shape, a.dtype), batch)
      if spec != self.stream.spec:
        raise ValueError(f"train_data's batch at step {t} has shapes and dtypes {spec}, the "
                         f"first batch had {self.stream.spec}: every batch must be alike")
      out.append(batch)
    return jax.tree.map(lambda *a: np.stack(a), *out)

  def request(self, lo: int, hi: int) -> None:
    """Starts stacking the batches of steps ``lo..hi`` (they follow the last requested)."""
    self.pending = self.pool.submit(self._pull, lo, hi)

  def take(self) -> Any:
    """The stacked batches last requested (waits for them)."""
    out, self.pending = self.pending.result(), None
    return out

  def close(self) -> None:
    self.pool.shutdown(wait=True, cancel_futures=True)
