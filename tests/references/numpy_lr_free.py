"""float64 NumPy references for the learning-rate-free methods and the plateau rule.

Same contract as :mod:`tests.references.numpy_adam`: ``(params, grads_fn, steps,
**hyper)`` over a list of NumPy arrays, one step at a time, one equation per line,
no code shared with the library. Each optimizer returns ``(trajectory, scalars)``,
the learnt scale (d_k, or Mechanic's sum of s) after every step; ``weight_decay``
may be a list, one value per leaf (a mask).

Sources: Defazio & Mishchenko 2023, Adam with D-Adaptation (inner product weighted
by the second moment before the step's gradient, as the released code); Mishchenko &
Defazio 2023, Prodigy (Adam version); Cutkosky, Defazio & Mehta 2023, Mechanic,
Algorithm 1 (s_1 = 0, m_t = max(beta m, |h_t|)); PyTorch's documented
``ReduceLROnPlateau.step``.
"""

from __future__ import annotations

import math

import numpy as np


def dadapt_adam(params, grads_fn, steps, lr=1.0, b1=0.9, b2=0.999, eps=1e-8, d0=1e-6,
                weight_decay=0.0, bias_correction=False):
  x = [np.asarray(p, np.float64) for p in params]
  m = [np.zeros(p.shape) for p in x]
  v = [np.zeros(p.shape) for p in x]
  s = [np.zeros(p.shape) for p in x]
  d, r = d0, 0.0
  sb2 = math.sqrt(b2)
  traj, ds = [], []
  for k in range(steps):
    grads = [np.asarray(g, np.float64) for g in grads_fn([p.copy() for p in x], k + 1)]
    gamma = lr(k) if callable(lr) else lr
    if bias_correction:
      gamma = gamma * math.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1))
    lam = d * gamma
    dot = sum(np.sum(g * si / (np.sqrt(vi) + eps)) for g, si, vi in zip(grads, s, v))
    for i, g in enumerate(grads):
      m[i] = b1 * m[i] + (1 - b1) * lam * g
      v[i] = b2 * v[i] + (1 - b2) * g * g
      s[i] = sb2 * s[i] + (1 - sb2) * lam * g
      wd = weight_decay[i] if isinstance(weight_decay, (list, tuple)) else weight_decay
      x[i] = x[i] - m[i] / (np.sqrt(v[i]) + eps) - lam * wd * x[i]
    r = sb2 * r + (1 - sb2) * lam * dot
    s_l1 = sum(np.sum(np.abs(si)) for si in s)
    d = max(d, r / ((1 - sb2) * s_l1))
    traj.append([p.copy() for p in x])
    ds.append(d)
  return traj, ds


def prodigy(params, grads_fn, steps, lr=1.0, b1=0.9, b2=0.999, b3=None, eps=1e-8, d0=1e-6,
            d_coef=1.0, weight_decay=0.0, bias_correction=False, safeguard_warmup=False):
  x = [np.asarray(p, np.float64) for p in params]
  x0 = [p.copy() for p in x]
  m = [np.zeros(p.shape) for p in x]
  v = [np.zeros(p.shape) for p in x]
  s = [np.zeros(p.shape) for p in x]
  b3 = math.sqrt(b2) if b3 is None else b3
  d, r = d0, 0.0
  traj, ds = [], []
  for k in range(steps):
    grads = [np.asarray(g, np.float64) for g in grads_fn([p.copy() for p in x], k + 1)]
    gamma = lr(k) if callable(lr) else lr
    if bias_correction:
      gamma = gamma * math.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1))
    dot = sum(np.sum(g * (a - b)) for g, a, b in zip(grads, x0, x))
    r = b3 * r + (1 - b3) * gamma * d**2 * dot
    for i, g in enumerate(grads):
      m[i] = b1 * m[i] + (1 - b1) * d * g
      v[i] = b2 * v[i] + (1 - b2) * d**2 * g * g
      s[i] = b3 * s[i] + (1 - b3) * (1.0 if safeguard_warmup else gamma) * d**2 * g
      wd = weight_decay[i] if isinstance(weight_decay, (list, tuple)) else weight_decay
      x[i] = x[i] - gamma * d * (m[i] / (np.sqrt(v[i]) + d * eps) + wd * x[i])
    s_l1 = sum(np.sum(np.abs(si)) for si in s)
    d = max(d, d_coef * r / s_l1)
    traj.append([p.copy() for p in x])
    ds.append(d)
  return traj, ds


def adamw_step_fn(lr=1.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
  """A float64 AdamW as Mechanic's base: returns ``base(grads, x, t) -> updates`` (stateful)."""
  state = {}

  def base(grads, x, t):
    if not state:
      state["m"] = [np.zeros(g.shape) for g in grads]
      state["v"] = [np.zeros(g.shape) for g in grads]
    out = []
    for i, g in enumerate(grads):
      state["m"][i] = b1 * state["m"][i] + (1 - b1) * g
      state["v"][i] = b2 * state["v"][i] + (1 - b2) * g * g
      m_hat = state["m"][i] / (1 - b1**t)
      v_hat = state["v"][i] / (1 - b2**t)
      out.append(-lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * x[i]))
    return out

  return base


def mechanic(params, grads_fn, steps, base, weight_decay=0.01, eps=1e-8, s_init=1e-8,
             betas=(0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)):
  """Mechanic around ``base(grads, x, t) -> u_t`` (an update to add)."""
  x = [np.asarray(p, np.float64) for p in params]
  x_ref = [p.copy() for p in x]
  delta = [np.zeros(p.shape) for p in x]
  beta = np.asarray(betas, np.float64)
  n = beta.size
  s, m, v, r = (np.zeros(n) for _ in range(4))
  traj, scales = [], []
  for t in range(1, steps + 1):
    grads = [np.asarray(g, np.float64) for g in grads_fn([p.copy() for p in x], t)]
    u = base(grads, [p.copy() for p in x], t)
    g_norm = math.sqrt(sum(np.sum(g * g) for g in grads))
    x_norm = math.sqrt(sum(np.sum(p * p) for p in x))
    decay = weight_decay * g_norm * s.sum() / x_norm if x_norm > 0 else 0.0
    h = sum(np.sum(dl * (g + decay * p)) for dl, g, p in zip(delta, grads, x))
    delta = [dl + ui for dl, ui in zip(delta, u)]
    m = np.maximum(beta * m, abs(h))
    v = beta**2 * v + h**2
    r = np.maximum(0.0, beta * r - s * h)
    wealth = s_init * m / n + r
    s = wealth / (np.sqrt(v) + eps)
    x = [xr + s.sum() * dl for xr, dl in zip(x_ref, delta)]
    traj.append([p.copy() for p in x])
    scales.append(s.sum())
  return traj, scales


def reduce_on_plateau(values, factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                      cooldown=0, min_lr=0.0, eps=1e-8, mode="min", lr=1.0):
  """torch's ReduceLROnPlateau.step over ``values``; returns the lr after each step."""
  best = math.inf if mode == "min" else -math.inf
  num_bad_epochs, cooldown_counter = 0, 0
  lrs = []
  for current in values:
    if mode == "min" and threshold_mode == "rel":
      better = current < best * (1.0 - threshold)
    elif mode == "min":
      better = current < best - threshold
    elif threshold_mode == "rel":
      better = current > best * (threshold + 1.0)
    else:
      better = current > best + threshold
    if better:
      best = current
      num_bad_epochs = 0
    else:
      num_bad_epochs += 1
    if cooldown_counter > 0:
      cooldown_counter -= 1
      num_bad_epochs = 0
    if num_bad_epochs > patience:
      new_lr = max(lr * factor, min_lr)
      if lr - new_lr > eps:
        lr = new_lr
      cooldown_counter = cooldown
      num_bad_epochs = 0
    lrs.append(lr)
  return lrs
