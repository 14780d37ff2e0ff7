"""Learning-rate-free methods at their defaults against Adam at a tuned learning rate.

Three small models on scikit-learn's bundled 8x8 digits (no download): an MLP
classifier, an autoencoder and a CNN classifier, written here with Flax NNX. Each
learning-rate-free method (Prodigy, D-Adapt AdamW, Mechanic around AdamW) runs at its
defaults (learning rate 1, nothing tuned) with three seeds (initial params and batch
order; the train/validation split is fixed). Adam is tuned the usual way: a grid of
learning rates on seed 0, the best by final validation loss, then seeds 1 and 2 at
that rate; its wall time is the whole procedure (grid included). Adam also runs at the
learning rate suggested by the LR range test (:func:`adam_jax.tuning.lr_find` at its
defaults, on the same model, data and batch size, seed 0), three seeds; its wall time
includes the range test. D-Adapt AdamW also runs with ``bias_correction=True``, the
convention of ``optax.contrib.dadapt_adamw``.

Reported per task and method: mean (± std) final validation loss, the median first
evaluation step where the validation loss is within 10% of tuned Adam's final one
(evaluated every ``--eval-every`` steps), and the wall time of the whole procedure
(compilation included: one compilation per task and method, Adam's learning rate
being a traced argument).

Run: ``python benchmarks/lr_free.py [--steps 600] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import adam_jax
from adam_jax import tuning

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
SEEDS = (0, 1, 2)
BATCH = 64
WITHIN = 1.10  # "reached" = validation loss <= 1.1 x tuned Adam's final one

LR_FREE = {
    "prodigy (defaults)": adam_jax.prodigy,
    "dadapt_adamw (defaults)": adam_jax.dadapt_adamw,
    # optax.contrib.dadapt_adamw always applies Adam's bias correction to the rate:
    "dadapt_adamw (bias_correction=True)": lambda: adam_jax.dadapt_adamw(bias_correction=True),
    "mechanic_adamw (defaults)": adam_jax.mechanic_adamw,
}


def learnt_rate(opt_state) -> float | None:
  """The rate a method learnt: d (Prodigy, D-Adaptation) or Mechanic's sum of scales."""
  for s in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "_fields")):
    if isinstance(s, adam_jax.MechanicState):
      return float(jnp.sum(s.s))
    if isinstance(s, (adam_jax.ScaleByProdigyState, adam_jax.ScaleByDAdaptAdamState)):
      return float(s.d)
  return None


# ------------------------------------------------------------------- data, models


def load_data():
  from sklearn.datasets import load_digits

  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(x))
  n_val = len(x) // 5
  val, train = perm[:n_val], perm[n_val:]
  return (x[train], y[train]), (x[val], y[val])


class MLP(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(64, 128, rngs=rngs)
    self.out = nnx.Linear(128, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


class AutoEncoder(nnx.Module):
  def __init__(self, rngs):
    self.enc1 = nnx.Linear(64, 64, rngs=rngs)
    self.enc2 = nnx.Linear(64, 16, rngs=rngs)
    self.dec1 = nnx.Linear(16, 64, rngs=rngs)
    self.dec2 = nnx.Linear(64, 64, rngs=rngs)

  def __call__(self, x):
    z = self.enc2(nnx.relu(self.enc1(x)))
    return nnx.sigmoid(self.dec2(nnx.relu(self.dec1(z))))


class CNN(nnx.Module):
  def __init__(self, rngs):
    self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (3, 3), strides=(2, 2), rngs=rngs)
    self.out = nnx.Linear(4 * 4 * 32, 10, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.conv1(x.reshape(-1, 8, 8, 1)))
    h = nnx.relu(self.conv2(h))
    return self.out(h.reshape(h.shape[0], -1))


def _xent(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _mse(model, x, y):
  del y
  return jnp.mean((model(x) - x) ** 2)


TASKS = {"digits-mlp": (MLP, _xent), "digits-autoencoder": (AutoEncoder, _mse),
         "digits-cnn": (CNN, _xent)}


# ----------------------------------------------------------------------- training


def make_runner(task: str, make_tx, data, steps: int, eval_every: int):
  """A function ``run(seed, *tx_args) -> val-loss curve``, compiled once for the task."""
  model_cls, loss_of = TASKS[task]
  (xt, yt), (xv, yv) = data
  xt, yt, xv, yv = (jnp.asarray(a) for a in (xt, yt, xv, yv))
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: model_cls(nnx.Rngs(0))))

  def loss(params, x, y):
    return loss_of(nnx.merge(graphdef, params), x, y)

  @jax.jit
  def init(seed, *tx_args):
    params = nnx.state(model_cls(nnx.Rngs(jax.random.key(seed))))
    return params, make_tx(*tx_args).init(params)

  @jax.jit
  def step(params, opt_state, idx, xt, yt, *tx_args):
    grads = jax.grad(loss)(params, xt[idx], yt[idx])
    updates, opt_state = make_tx(*tx_args).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  @jax.jit
  def evaluate(params, xv, yv):
    return loss(params, xv, yv)

  def run(seed: int, *tx_args):
    tx_args = tuple(jnp.asarray(a, jnp.float32) for a in tx_args)
    params, opt_state = init(seed, *tx_args)
    order = np.random.default_rng(1000 + seed).integers(0, xt.shape[0], (steps, BATCH))
    curve = []
    for t in range(1, steps + 1):
      params, opt_state = step(params, opt_state, order[t - 1], xt, yt, *tx_args)
      if t % eval_every == 0:
        curve.append(float(evaluate(params, xv, yv)))
    return np.asarray(curve), learnt_rate(opt_state)

  return run


def range_test(task: str, data) -> float:
  """The learning rate :func:`adam_jax.tuning.lr_find` suggests for Adam on the task."""
  model_cls, loss_of = TASKS[task]
  problem = tuning.Problem(lambda rngs: model_cls(rngs), lambda model, b: loss_of(model, *b),
                           data[0], data[1], batch_size=BATCH)
  return tuning.lr_find(problem, optimizer="adam", seed=SEEDS[0]).suggestion


def steps_to(curve, target, eval_every):
  hit = np.nonzero(curve <= target)[0]
  return int(hit[0] + 1) * eval_every if hit.size else None


def bench_task(task: str, data, steps: int, eval_every: int) -> list[dict]:
  rows = []
  # Adam, tuned: the grid on seed 0, then the other seeds at the best rate.
  t0 = time.perf_counter()
  run = make_runner(task, lambda lr: adam_jax.adam(lr), data, steps, eval_every)
  grid = {lr: run(SEEDS[0], lr)[0] for lr in LRS}
  best_lr = min(LRS, key=lambda lr: grid[lr][-1] if np.isfinite(grid[lr][-1]) else np.inf)
  curves = [grid[best_lr]] + [run(seed, best_lr)[0] for seed in SEEDS[1:]]
  adam_time = time.perf_counter() - t0
  target = WITHIN * float(np.mean([c[-1] for c in curves]))
  rows.append(dict(task=task, method="adam (tuned)", best_lr=best_lr, curves=curves,
                   learnt=None, wall_s=adam_time,
                   grid={str(k): float(v[-1]) for k, v in grid.items()}))
  # Adam at the range test's suggestion: the test, then three seeds at that rate.
  t0 = time.perf_counter()
  suggested = range_test(task, data)
  run = make_runner(task, lambda lr: adam_jax.adam(lr), data, steps, eval_every)
  curves = [run(seed, suggested)[0] for seed in SEEDS]
  rows.append(dict(task=task, method="adam (LR range test)", best_lr=None, suggested=suggested,
                   curves=curves, learnt=None, wall_s=time.perf_counter() - t0))
  for name, alias in LR_FREE.items():
    t0 = time.perf_counter()
    run = make_runner(task, alias, data, steps, eval_every)
    runs = [run(seed) for seed in SEEDS]
    rows.append(dict(task=task, method=name, best_lr=None, curves=[c for c, _ in runs],
                     learnt=[r for _, r in runs], wall_s=time.perf_counter() - t0))
  for row in rows:
    finals = np.asarray([c[-1] for c in row["curves"]])
    hits = [steps_to(c, target, eval_every) for c in row["curves"]]
    row.update(target=target, val_mean=float(finals.mean()), val_std=float(finals.std()),
               steps_to_target=hits, curves=[c.tolist() for c in row["curves"]])
  return rows


def _median_steps(hits):
  if any(h is None for h in hits):
    reached = sum(h is not None for h in hits)
    return f"not reached ({reached}/{len(hits)} seeds)" if reached else "not reached"
  return str(int(np.median(hits)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--eval-every", type=int, default=10)
  parser.add_argument("--tasks", default=",".join(TASKS))
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  data = load_data()
  load_before = os.getloadavg()
  started = time.perf_counter()
  rows = []
  for task in args.tasks.split(","):
    rows += bench_task(task, data, args.steps, args.eval_every)
  total = time.perf_counter() - started
  print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores, jax {jax.__version__}, load avg before {load_before[0]:.1f}, "
        f"after {os.getloadavg()[0]:.1f}; {args.steps} steps, batch {BATCH}, total {total:.0f} s")
  print("| task | method | lr (tuned or learnt, median of seeds) | final val loss (± std, 3 "
        "seeds) | median steps to ≤1.1× tuned Adam's val loss | wall time of the procedure (s) |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    if r["best_lr"] is not None:
      lr = f"{r['best_lr']:g} (best of {len(LRS)})"
    elif r.get("suggested") is not None:
      lr = f"suggested {r['suggested']:.2g}"
    else:
      lr = f"learnt {np.median(r['learnt']):.2g}"
    print(f"| {r['task']} | {r['method']} | {lr} | {r['val_mean']:.4f} ± {r['val_std']:.4f} | "
          f"{_median_steps(r['steps_to_target'])} | {r['wall_s']:.1f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(rows=rows, steps=args.steps, batch=BATCH, lrs=LRS, total_s=total,
                     jax=jax.__version__), f, indent=1)


if __name__ == "__main__":
  main()
