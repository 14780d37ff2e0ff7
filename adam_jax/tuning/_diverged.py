"""Diverged members: a non-finite loss, metric or parameter, never a search's best."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def diverged_members(metrics: dict[str, Any], params: Any, last_loss: Any) -> np.ndarray:
  """Which members diverged: shape ``(members,)``, bool.

  A member diverged when one of its metrics, its last mini-batch loss or one of its
  parameters is NaN or infinite (on the host: the arrays a group returns).

  Args:
    metrics: each metric, shape ``(members,)``.
    params: the trained parameters, leading axis: members.
    last_loss: the mini-batch loss of the last step, shape ``(members,)``.
  """
  bad = ~np.isfinite(np.asarray(last_loss, np.float64))
  for values in metrics.values():
    bad |= ~np.isfinite(np.asarray(values, np.float64))
  for leaf in jax.tree.leaves(params):
    a = np.asarray(leaf)
    if jnp.issubdtype(a.dtype, jnp.inexact) and a.size:
      bad |= ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
  return bad
