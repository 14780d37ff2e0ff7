"""Sweep speed: a 16-learning-rate sweep of the digits MLP, as a user would run it.

Compares, as whole processes (start-up, imports, compilation and plots included):

* ``adam-jax sweep`` (vectorized: one vmapped program for the 16 learning rates);
* ``adam-jax sweep --loop python`` (the same vmapped program, its steps called from
  Python instead of inside ``lax.scan``);
* a plain Python script: 16 ``optax.adam`` trainings of the same Flax model, each a
  Python loop over a jitted step (what users write today).

Then checks that the two loop forms agree, measures how far
float32 rounding alone moves each row (one ulp on the initial params; optax.adam),
and that the LR finder's suggestion, trained like the grid's rows, reaches a validation loss within
10% of the grid's best. Runs are interleaved (round-robin) and medians reported.

Usage::

  python benchmarks/sweep_speed.py [--repeats 3] [--steps 1000]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

LRS = np.geomspace(1e-4, 1e-1, 16)

PLAIN_SCRIPT = r'''
import sys
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from sklearn.datasets import load_digits

steps, lrs = int(sys.argv[1]), [float(v) for v in sys.argv[2].split(",")]
digits = load_digits()
x = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int32)
order = np.random.default_rng(0).permutation(len(x))
val, tr = order[:359], order[359:]
x_tr, y_tr, x_val, y_val = x[tr], y[tr], x[val], y[val]

class MLP(nnx.Module):
  def __init__(self, rngs):
    self.l1 = nnx.Linear(64, 128, rngs=rngs)
    self.l2 = nnx.Linear(128, 10, rngs=rngs)
  def __call__(self, x):
    return self.l2(jax.nn.relu(self.l1(x)))

graphdef, params0 = nnx.split(MLP(nnx.Rngs(0)))

def loss_fn(params, x, y):
  logits = nnx.merge(graphdef, params)(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

for lr in lrs:
  tx = optax.adam(lr)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params, opt_state = params0, tx.init(params0)
  rng = np.random.default_rng(0)
  perm, pos = rng.permutation(len(x_tr)), 0
  for _ in range(steps):
    if pos + 32 > len(perm):
      perm, pos = rng.permutation(len(x_tr)), 0
    b = perm[pos:pos + 32]
    pos += 32
    params, opt_state, loss = step(params, opt_state, x_tr[b], y_tr[b])
  print(f"lr {lr:.3g} val loss {float(loss_fn(params, x_val, y_val)):.4f}")
'''


def _cli() -> list[str]:
  exe = shutil.which("adam-jax")
  return [exe] if exe else [sys.executable, "-m", "adam_jax.cli"]


def _timed(cmd: list[str]) -> float:
  start = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True)
  elapsed = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
  return elapsed


def _rows(path: str) -> list[dict[str, str]]:
  with open(path) as f:
    return list(csv.DictReader(f))


def rounding_noise(steps: int) -> dict[str, list[float]]:
  """Validation loss per learning rate under two float32 rounding perturbations.

  Trains each grid row one at a time, (a) from initial
  params moved by one ulp each (``nextafter`` towards +inf) and (b) with
  ``optax.adam`` (the same algorithm, rounded differently). Where these move the
  loss as much as one loop form against the other does, the difference between the two
  forms is float32 rounding amplified by training, not a difference of algorithm.
  """
  import dataclasses

  import jax
  import jax.numpy as jnp
  import optax

  import adam_jax
  from adam_jax.tasks import get_task, train

  task = get_task("digits-mlp", seed=0, layers=1, hidden=128, batch_size=32)
  nudged = dataclasses.replace(task, params=jax.tree.map(
      lambda a: jnp.nextafter(a, jnp.full_like(a, jnp.inf)), task.params))
  out: dict[str, list[float]] = {"one_ulp_from_start": [], "optax_adam": []}
  for lr in LRS:
    lr = float(f"{lr:.6g}")  # as the command line receives it
    out["one_ulp_from_start"].append(train(nudged, adam_jax.adam(lr), steps).val_loss)
    out["optax_adam"].append(train(task, optax.adam(lr), steps).val_loss)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--steps", type=int, default=1000)
  args = parser.parse_args()
  lr_text = ",".join(f"{v:.6g}" for v in LRS)
  work = tempfile.mkdtemp(prefix="sweep_speed_")
  plain_path = os.path.join(work, "plain.py")
  with open(plain_path, "w") as f:
    f.write(PLAIN_SCRIPT)
  sweep = _cli() + ["sweep", "--lr", lr_text, "--steps", str(args.steps)]
  runs = {
      "adam-jax sweep": lambda r: sweep + ["--out", os.path.join(work, f"vec{r}")],
      "adam-jax sweep --loop python": lambda r: sweep + [
          "--loop", "python", "--out", os.path.join(work, f"seq{r}")],
      "plain optax loop": lambda r: [sys.executable, plain_path, str(args.steps), lr_text],
  }
  times: dict[str, list[float]] = {name: [] for name in runs}
  for r in range(args.repeats):
    for name, cmd in runs.items():
      times[name].append(_timed(cmd(r)))
      print(f"round {r + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
  med = {name: statistics.median(v) for name, v in times.items()}

  vec, seq = _rows(os.path.join(work, "vec0", "results.csv")), _rows(
      os.path.join(work, "seq0", "results.csv"))
  best_vec = min(vec, key=lambda r: float(r["val_loss"]))
  best_seq = min(seq, key=lambda r: float(r["val_loss"]))
  rel = [abs(float(a["val_loss"]) - float(b["val_loss"])) / float(b["val_loss"])
         for a, b in zip(vec, seq)]

  subprocess.run(_cli() + ["lr-find", "--out", os.path.join(work, "lrf")], check=True,
                 capture_output=True)
  with open(os.path.join(work, "lrf", "lr_find.json")) as f:
    found = json.load(f)
  check = subprocess.run(
      _cli() + ["sweep", "--lr", f"{found['suggestion']:.6g},{found['valley']:.6g}",
                "--steps", str(args.steps), "--out", os.path.join(work, "lrf_train")],
      check=True, capture_output=True)
  del check
  lrf_rows = _rows(os.path.join(work, "lrf_train", "results.csv"))
  sugg_val, valley_val = (float(r["val_loss"]) for r in lrf_rows)
  grid_best = float(best_vec["val_loss"])
  noise = rounding_noise(args.steps)
  noise_best = {k: float(LRS[int(np.argmin(v))]) for k, v in noise.items()}

  report = {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
      "steps": args.steps, "repeats": args.repeats,
      "times_s": times, "median_s": med,
      "speedup_vs_plain": med["plain optax loop"] / med["adam-jax sweep"],
      "speedup_vs_plain_per_round": [p / v for p, v in zip(times["plain optax loop"],
                                                          times["adam-jax sweep"])],
      "speedup_vs_sequential_per_round": [q / v for q, v in zip(
          times["adam-jax sweep --loop python"], times["adam-jax sweep"])],
      "speedup_vs_sequential": med["adam-jax sweep --loop python"] / med["adam-jax sweep"],
      "best_lr_vectorized": float(best_vec["learning_rate"]),
      "best_lr_sequential": float(best_seq["learning_rate"]),
      "val_loss_rel_diff_max": max(rel), "val_loss_rel_diff_median": statistics.median(rel),
      "val_loss_rel_diff_lr_le_1e-2_max": max(
          d for d, r in zip(rel, vec) if float(r["learning_rate"]) <= 1e-2),
      "grid_lr_val_vectorized_val_sequential": [
          (float(a["learning_rate"]), float(a["val_loss"]), float(b["val_loss"]))
          for a, b in zip(vec, seq)],
      "rounding_noise_val_loss": noise, "rounding_noise_best_lr": noise_best,
      "grid_best_val_loss": grid_best,
      "lr_find_suggestion": found["suggestion"], "lr_find_suggestion_val_loss": sugg_val,
      "lr_find_valley": found["valley"], "lr_find_valley_val_loss": valley_val,
      "suggestion_within_10pct": sugg_val <= 1.1 * grid_best,
  }
  print(json.dumps(report, indent=2))
  shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
