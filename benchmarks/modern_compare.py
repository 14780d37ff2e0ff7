"""Modern Adam variants against AdamW on the embedded digits tasks.

For each task and optimizer, a small learning-rate grid is trained in one compiled
program (``jax.vmap`` over the learning rate, which every adam_jax hyperparameter
allows); the best rate by final training loss is reported with its validation
loss and accuracy, the first step where the running mean (window 25) of the
mini-batch loss reaches a target, and the optimizer state's size. Each number is
over three seeds (split, initial params and batch order).

Schedule-free AdamW is evaluated at its averaged params (``schedule_free_eval_params``);
its mini-batch curve is the loss at the gradient point. Lazy Adam treats the first
layer's kernel as a table whose rows are input pixels: a pixel that is 0 in the whole
batch gives its row no gradient.

Run: ``python benchmarks/modern_compare.py [--steps 1000] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone

import jax
import jax.numpy as jnp
import numpy as np

import adam_jax
from adam_jax.tasks import fit, get_task

WD = 1e-4
LRS = (1e-3, 3e-3, 1e-2, 3e-2)
TARGETS = {"digits-mlp": 0.05, "digits-autoencoder": 0.01}
WINDOW = 25


def first_kernel(tree):
  """mask_fn for lazy Adam: only the first layer's kernel (rows = input pixels)."""
  def pick(path, leaf):
    del leaf
    text = jax.tree_util.keystr(path)
    return text.startswith("['layers'][0]['kernel']")

  return jax.tree_util.tree_map_with_path(pick, tree)


OPTIMIZERS = {
    "adamw": lambda lr: adam_jax.adamw(lr, weight_decay=WD),
    "schedule_free_adamw": lambda lr: adam_jax.schedule_free_adamw(
        lr, warmup_steps=50, weight_decay=WD),
    "adopt": lambda lr: adam_jax.adopt(lr, weight_decay=WD, decoupled_weight_decay=True),
    "adam_mini": lambda lr: adam_jax.adam_mini(lr, weight_decay=WD),
    "cautious_adamw": lambda lr: adam_jax.cautious_adamw(lr, weight_decay=WD),
    "lazy_adam": lambda lr: adam_jax.lazy_adam(lr, mask_fn=first_kernel),
}


def state_bytes(tx, params) -> int:
  """Bytes of the optimizer state for ``params`` (shapes only, nothing allocated)."""
  shapes = jax.eval_shape(tx.init, params)
  return int(sum(np.prod(s.shape) * s.dtype.itemsize for s in jax.tree.leaves(shapes)))


def steps_to(curve: np.ndarray, target: float) -> int | None:
  """First step (1-based) where the running mean of the last ``WINDOW`` losses <= target."""
  if len(curve) < WINDOW:
    return None
  run = np.convolve(curve, np.ones(WINDOW) / WINDOW, mode="valid")
  hit = np.nonzero(run <= target)[0]
  return int(hit[0]) + WINDOW if hit.size else None


def run_grid(task, name: str, steps: int, lrs=LRS, seed: int = 0) -> dict:
  """Trains ``name`` at every learning rate of ``lrs`` (vmapped); returns arrays per rate."""
  make = OPTIMIZERS[name]
  idx = task.batch_indices(steps, seed)

  @jax.jit
  def run(lr, params, idx, x_tr, y_tr, x_val, y_val):
    tx = make(lr)
    params, state, curve = fit(task, tx, params, tx.init(params), idx, x_tr, y_tr)
    if name == "schedule_free_adamw":
      params = adam_jax.schedule_free_eval_params(state, params)
    tr_loss, _ = task.evaluate(params, x_tr, y_tr)
    va_loss, va_acc = task.evaluate(params, x_val, y_val)
    return curve, tr_loss, va_loss, va_acc

  batched = jax.jit(jax.vmap(run, in_axes=(0,) + (None,) * 6))
  start = time.perf_counter()
  out = batched(jnp.asarray(lrs, jnp.float32), task.params, idx, task.x_train, task.y_train,
                task.x_val, task.y_val)
  curve, tr, va, acc = jax.device_get(out)
  seconds = time.perf_counter() - start
  return {"curve": np.asarray(curve), "train_loss": np.asarray(tr), "val_loss": np.asarray(va),
          "val_accuracy": np.asarray(acc), "seconds": seconds}


def compare(task_name: str, steps: int, lrs=LRS, names=None, hidden: int = 128,
            seeds=(0, 1, 2)) -> list[dict]:
  """One row per optimizer: the learning rate of the grid with the best mean final
  training loss over ``seeds`` (each seed: its own split, initial params and batch order)."""
  tasks = [get_task(task_name, hidden=hidden, seed=s) for s in seeds]
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tasks[0].params))
  rows = []
  for name in names or OPTIMIZERS:
    grids = [run_grid(task, name, steps, lrs, seed=s) for task, s in zip(tasks, seeds)]
    train = np.stack([g["train_loss"] for g in grids])  # (seeds, lrs)
    best = int(np.argmin(np.where(np.isfinite(train), train, np.inf).mean(axis=0)))

    def pick(key, grids=grids, best=best):
      return np.asarray([g[key][best] for g in grids], np.float64)

    hits = [steps_to(g["curve"][best], TARGETS[task_name]) for g in grids]
    reached = [h for h in hits if h is not None]
    mem = state_bytes(OPTIMIZERS[name](1e-3), tasks[0].params)
    acc = pick("val_accuracy")
    rows.append({
        "task": task_name,
        "optimizer": name,
        "lr": float(lrs[best]),
        "seeds": len(seeds),
        "train_loss": float(pick("train_loss").mean()),
        "train_loss_std": float(pick("train_loss").std()),
        "val_loss": float(pick("val_loss").mean()),
        "val_accuracy": None if np.isnan(acc).any() else float(acc.mean()),
        "steps_to_target": float(np.median(reached)) if len(reached) == len(hits) else None,
        "target": TARGETS[task_name],
        "state_bytes": mem,
        "state_bytes_per_param": mem / n_params,
        "grid_seconds": float(sum(g["seconds"] for g in grids)),
        "curve": np.mean([g["curve"][best] for g in grids], axis=0).tolist(),
    })
  return rows


def table(rows: list[dict], steps: int) -> str:
  lines = [
      "| task | optimizer | best lr | train loss (± std) | val loss | val acc | "
      f"median steps to target (of {steps}) | state bytes/param |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    acc = "-" if r["val_accuracy"] is None else f"{r['val_accuracy']:.3f}"
    hit = "not reached" if r["steps_to_target"] is None else f"{r['steps_to_target']:g}"
    lines.append(
        f"| {r['task']} (target {r['target']}) | {r['optimizer']} | {r['lr']:g} | "
        f"{r['train_loss']:.4f} ± {r['train_loss_std']:.4f} | {r['val_loss']:.4f} | {acc} | "
        f"{hit} | {r['state_bytes_per_param']:.2f} |"
    )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--json", default=None, help="write the rows (with curves) here")
  args = parser.parse_args(argv)
  if args.steps < WINDOW:
    print(f"error: --steps must be at least {WINDOW}", file=sys.stderr)
    return 2
  rows = []
  for task_name in TARGETS:
    rows += compare(task_name, args.steps)
  print(f"# {datetime.now(timezone.utc):%Y-%m-%d}, {platform.processor() or platform.machine()}, "
        f"jax {jax.__version__}, {jax.devices()[0].platform}, {args.steps} steps, "
        f"lr grid {LRS}, weight decay {WD}, mean of seeds 0, 1, 2")
  print(table(rows, args.steps))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
