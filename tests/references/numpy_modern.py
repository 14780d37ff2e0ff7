"""float64 NumPy references for the modern variants, written from each paper's algorithm box.

Same contract as :mod:`tests.references.numpy_adam`: ``(params, grads_fn, steps,
**hyper)`` over a list of NumPy arrays, one step at a time, one equation per line,
no code shared with the library.

Sources: Defazio et al. 2024, Algorithm 1 (schedule-free AdamW); Taniguchi et al.
2024, Algorithm 2 (clipped ADOPT) and Algorithm 1 (unclipped); Zhang et al. 2024,
Algorithm 1 (Adam-mini, blocks given as an integer block id per entry); Liang et
al. 2024, C-AdamW box (cautious mask, d / (nnz + 1) per tensor as the released code);
TensorFlow Addons LazyAdam (rows with a zero gradient are skipped).
"""

from __future__ import annotations

import numpy as np


def schedule_free_adamw(params, grads_fn, steps, lr=2.5e-3, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=0.0, warmup_steps=0, decay=None):
  """Returns ``(traj_y, traj_x)``: the gradient points and the averaged iterates."""
  x = [np.asarray(p, np.float64) for p in params]
  z = [p.copy() for p in x]
  y = [p.copy() for p in x]
  v = [np.zeros(p.shape) for p in x]
  decay = decay or [True] * len(x)
  lr_sq_sum = 0.0
  traj_y, traj_x = [], []
  for t in range(1, steps + 1):
    grads = grads_fn([p.copy() for p in y], t)
    warm = min(1.0, t / warmup_steps) if warmup_steps > 0 else 1.0
    gamma = lr * np.sqrt(1 - b2**t) * warm
    lr_sq_sum += gamma**2
    c = gamma**2 / lr_sq_sum
    for i, g in enumerate(grads):
      g = np.asarray(g, np.float64)
      v[i] = b2 * v[i] + (1 - b2) * g**2
      wd = weight_decay if decay[i] else 0.0
      z[i] = z[i] - gamma * g / (np.sqrt(v[i]) + eps) - gamma * wd * y[i]
      x[i] = (1 - c) * x[i] + c * z[i]
      y[i] = (1 - b1) * z[i] + b1 * x[i]
    traj_y.append([p.copy() for p in y])
    traj_x.append([p.copy() for p in x])
  return traj_y, traj_x


def adopt(params, grads_fn, steps, lr=1e-3, b1=0.9, b2=0.9999, eps=1e-6, clipping=True,
          weight_decay=0.0, decoupled=False):
  """ADOPT; the first call is the paper's step 0 (v_0 = g_0^2, no move)."""
  theta = [np.asarray(p, np.float64) for p in params]
  m = [np.zeros(p.shape) for p in theta]
  v = [np.zeros(p.shape) for p in theta]
  traj = []
  for k in range(1, steps + 1):
    grads = grads_fn([p.copy() for p in theta], k)
    t = k - 1
    for i, g in enumerate(grads):
      g = np.asarray(g, np.float64)
      if weight_decay and not decoupled:
        g = g + weight_decay * theta[i]
      if t == 0:
        v[i] = g * g
        step = np.zeros_like(g)
      else:
        normed = g / np.maximum(np.sqrt(v[i]), eps)
        if clipping:
          normed = np.clip(normed, -(t**0.25), t**0.25)
        m[i] = b1 * m[i] + (1 - b1) * normed
        step = m[i]
        v[i] = b2 * v[i] + (1 - b2) * g * g
      if weight_decay and decoupled:
        step = step + weight_decay * theta[i]
      theta[i] = theta[i] - lr * step
    traj.append([p.copy() for p in theta])
  return traj


def adam_mini(params, grads_fn, steps, block_ids, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
              weight_decay=0.0):
  """Adam-mini with decoupled decay; ``block_ids[i]`` labels each entry of leaf ``i``."""
  theta = [np.asarray(p, np.float64) for p in params]
  m = [np.zeros(p.shape) for p in theta]
  v = [{int(b): 0.0 for b in np.unique(ids)} for ids in block_ids]
  traj = []
  for t in range(1, steps + 1):
    grads = grads_fn([p.copy() for p in theta], t)
    for i, g in enumerate(grads):
      g = np.asarray(g, np.float64)
      ids = np.asarray(block_ids[i])
      m[i] = b1 * m[i] + (1 - b1) * g
      m_hat = m[i] / (1 - b1**t)
      step = np.zeros_like(g)
      for b in v[i]:
        members = ids == b
        v[i][b] = b2 * v[i][b] + (1 - b2) * np.mean(g[members] ** 2)
        v_hat = v[i][b] / (1 - b2**t)
        step[members] = m_hat[members] / (np.sqrt(v_hat) + eps)
      theta[i] = theta[i] - lr * (step + weight_decay * theta[i])
    traj.append([p.copy() for p in theta])
  return traj


def cautious_adamw(params, grads_fn, steps, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                   weight_decay=0.0):
  """C-AdamW: the Adam step masked where it disagrees with the gradient, decay unmasked."""
  theta = [np.asarray(p, np.float64) for p in params]
  m = [np.zeros(p.shape) for p in theta]
  v = [np.zeros(p.shape) for p in theta]
  traj = []
  for t in range(1, steps + 1):
    grads = grads_fn([p.copy() for p in theta], t)
    for i, g in enumerate(grads):
      g = np.asarray(g, np.float64)
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * g * g
      u = (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + eps)
      phi = (u * g > 0).astype(np.float64)
      scaled = u * phi * (phi.size / (phi.sum() + 1))
      theta[i] = theta[i] - lr * (scaled + weight_decay * theta[i])
    traj.append([p.copy() for p in theta])
  return traj


def lazy_adam(params, grads_fn, steps, lazy, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
  """Adam; for leaves with ``lazy[i]``, row r moves only if its gradient is not all 0."""
  theta = [np.asarray(p, np.float64) for p in params]
  m = [np.zeros(p.shape) for p in theta]
  v = [np.zeros(p.shape) for p in theta]
  traj = []
  for t in range(1, steps + 1):
    grads = grads_fn([p.copy() for p in theta], t)
    for i, g in enumerate(grads):
      g = np.asarray(g, np.float64)
      rows = range(g.shape[0]) if (lazy[i] and g.ndim) else [Ellipsis]
      for r in rows:
        if lazy[i] and not np.any(g[r] != 0):
          continue
        m[i][r] = b1 * m[i][r] + (1 - b1) * g[r]
        v[i][r] = b2 * v[i][r] + (1 - b2) * g[r] ** 2
        m_hat = m[i][r] / (1 - b1**t)
        v_hat = v[i][r] / (1 - b2**t)
        theta[i][r] = theta[i][r] - lr * m_hat / (np.sqrt(v_hat) + eps)
    traj.append([p.copy() for p in theta])
  return traj
