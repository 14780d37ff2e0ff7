"""float64 NumPy references, written from the papers and torch's documented rules.

Each function takes ``(params, grads_fn, steps, **hyper)`` over a *list* of NumPy
arrays and returns the list of parameter trajectories: one step at a time, one
equation per line, no shared code with the library under test.

Sources: Kingma & Ba 2014 (Algorithm 1); torch.optim.Adam / AdamW / RAdam / Adamax
documentation (the pseudo-code blocks in their docstrings); Reddi et al. 2018
(AMSGrad); Dozat 2016 and optax.nadam (NAdam); Zhuang et al. 2020 (AdaBelief).
"""

from __future__ import annotations

import numpy as np


def _lr(lr, t):
  """Learning rate for step t (1-based): schedules take the 0-based count."""
  return lr(t - 1) if callable(lr) else lr


def adam(params, grads_fn, steps, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0,
         weight_decay=0.0, decoupled=False, amsgrad=False, nesterov=False,
         maximize=False):
  """torch.optim.Adam (coupled) / AdamW (decoupled), with AMSGrad and NAdam (optax)."""
  theta = [np.asarray(p, np.complex128 if np.iscomplexobj(p) else np.float64) for p in params]
  m = [np.zeros_like(p) for p in theta]
  v = [np.zeros(p.shape) for p in theta]
  v_max = [np.zeros(p.shape) for p in theta]
  traj = []
  for t in range(1, steps + 1):
    grads = grads_fn([p.copy() for p in theta], t)
    eta = _lr(lr, t)
    for i, g in enumerate(grads):
      g = np.asarray(g, theta[i].dtype)
      if maximize:
        g = -g
      if weight_decay and not decoupled:
        g = g + weight_decay * theta[i]
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * np.abs(g) ** 2
      if amsgrad:
        v_max[i] = np.maximum(v_max[i], v[i])
        v_use = v_max[i]
      else:
        v_use = v[i]
      if nesterov:
        m_hat = b1 * m[i] / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
      else:
        m_hat = m[i] / (1 - b1**t)
      v_hat = v_use / (1 - b2**t)
      step = m_hat / (np.sqrt(v_hat + eps_root) + eps)
      if weight_decay and decoupled:
        step = step + weight_decay * theta[i]
      theta[i] = theta[i] - eta * step
    traj.append([p.copy() for p in theta])
  return traj


def radam(params, grads_fn, steps, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
  """torch.optim.RAdam (threshold 5, eps added to sqrt(v) before bias correction)."""
  theta = [np.asarray(p, np.float64) for p in params]
  m = [np.zeros_like(p) for p in theta]
  v = [np.zeros_like(p) for p in theta]
  rho_inf = 2 / (1 - b2) - 1
  traj = []
  for t in range(1, steps + 1):
    grads = grads_fn([p.copy() for p in theta], t)
    eta = _lr(lr, t)
    for i, g in enumerate(grads):
      g = np.asarray(g, np.float64)
      if weight_decay:
        g = g + weight_decay * theta[i]
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * g * g
      m_hat = m[i] / (1 - b1**t)
      rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
      if rho_t > 5:
        l_t = np.sqrt(1 - b2**t) / (np.sqrt(v[i]) + eps)
        r_t = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                      / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        theta[i] = theta[i] - eta * m_hat * l_t * r_t
      else:
        theta[i] = theta[i] - eta * m_hat
    traj.append([p.copy() for p in theta])
  return traj


def adamax(params, grads_fn, steps, lr=2e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
           decoupled=False):
  """torch.optim.Adamax: u = max(b2 u, |g| + eps); theta -= lr / (1 - b1^t) * m / u."""
  theta = [np.asarray(p, np.float64) for p in params]
  m = [np.zeros_like(p) for p in theta]
  u = [np.zeros_like(p) for p in theta]
  traj = []
  for t in range(1, steps + 1):
    grads = grads_fn([p.copy() for p in theta], t)
    eta = _lr(lr, t)
    for i, g in enumerate(grads):
      g = np.asarray(g, np.float64)
      if weight_decay and not decoupled:
        g = g + weight_decay * theta[i]
      m[i] = b1 * m[i] + (1 - b1) * g
      u[i] = np.maximum(b2 * u[i], np.abs(g) + eps)
      step = m[i] / ((1 - b1**t) * u[i])
      if weight_decay and decoupled:
        step = step + weight_decay * theta[i]
      theta[i] = theta[i] - eta * step
    traj.append([p.copy() for p in theta])
  return traj


def adabelief(params, grads_fn, steps, lr=1e-3, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16):
  """AdaBelief (Zhuang et al. 2020, Algorithm 2): s_t includes + eps each step."""
  theta = [np.asarray(p, np.float64) for p in params]
  m = [np.zeros_like(p) for p in theta]
  s = [np.zeros_like(p) for p in theta]
  traj = []
  for t in range(1, steps + 1):
    grads = grads_fn([p.copy() for p in theta], t)
    eta = _lr(lr, t)
    for i, g in enumerate(grads):
      g = np.asarray(g, np.float64)
      m[i] = b1 * m[i] + (1 - b1) * g
      s[i] = b2 * s[i] + (1 - b2) * (g - m[i]) ** 2 + eps_root
      m_hat = m[i] / (1 - b1**t)
      s_hat = s[i] / (1 - b2**t)
      theta[i] = theta[i] - eta * m_hat / (np.sqrt(s_hat) + eps)
    traj.append([p.copy() for p in theta])
  return traj
