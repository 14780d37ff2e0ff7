"""Search speed: an Optuna TPE study on the digits MLP, one trial at a time vs batched.

* peer: what a practitioner runs today, an Optuna study with TPE whose objective
  trains one configuration of the same Flax NNX MLP with ``optax.adamw`` (a jitted
  step called from a Python loop), ``n_trials`` one after another;
* ``adam_jax.tuning.optuna_search``: the same sampler (TPE, ``constant_liar``),
  batches of ``--batch`` trials trained in one vectorized program.

Same space (learning rate log-uniform 1e-5..1e-1, b1 uniform 0.8..0.99, weight decay
log-uniform 1e-6..1e-2), steps, batch order and initial params; no pruner on either
side. Reports wall time (compilation included) and the best validation loss, per
study seed, and their means.

With ``--halving``: a grid of 27 configurations (9 learning rates x 3 b1) trained
``--steps`` steps by ``grid_search`` against ``successive_halving`` on the same grid
(``eta=3``, ``min_steps = steps // 9``): best validation loss, configuration-steps
trained and wall time of each.

Usage::

  python benchmarks/search_speed.py [--trials 32] [--steps 300] [--study-seeds 3]
  python benchmarks/search_speed.py --halving [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np
import optax
import optuna
from flax import nnx

from adam_jax import tasks, tuning


def space_fn(trial):
  return {"learning_rate": trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True),
          "b1": trial.suggest_float("b1", 0.8, 0.99),
          "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)}


def _sampler(seed):
  return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def peer(problem, trials, steps, seed):
  """One configuration at a time: the optax loop a user writes, inside an Optuna objective."""
  x, y = problem.train_data
  xv, yv = problem.val_data
  idx = problem.batch_indices(steps, 0)

  def objective(trial):
    hp = space_fn(trial)
    model = problem.model(nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tx = optax.adamw(hp["learning_rate"], b1=hp["b1"], weight_decay=hp["weight_decay"])
    opt_state = tx.init(params)

    def loss(params, xb, yb):
      logits = nnx.merge(graphdef, params)(xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def step(params, opt_state, xb, yb):
      grads = jax.grad(loss)(params, xb, yb)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    for i in idx:
      params, opt_state = step(params, opt_state, x[i], y[i])
    return float(jax.jit(loss)(params, xv, yv))

  study = optuna.create_study(sampler=_sampler(seed), pruner=optuna.pruners.NopPruner())
  start = time.perf_counter()
  study.optimize(objective, n_trials=trials)
  return time.perf_counter() - start, study.best_value


def batched(problem, trials, steps, seed, batch):
  study = optuna.create_study(sampler=_sampler(seed), pruner=optuna.pruners.NopPruner())
  start = time.perf_counter()
  tuning.optuna_search(study, problem, space_fn, n_trials=trials, batch_size_trials=batch,
                       steps=steps, optimizer="adamw", report_every=steps,
                       devices=jax.devices()[:1])
  return time.perf_counter() - start, study.best_value


def halving(problem, steps):
  grid = {"learning_rate": [float(v) for v in np.geomspace(1e-4, 1e-1, 9)], "b1": [0.8, 0.9, 0.95]}
  n = 27
  start = time.perf_counter()
  full = tuning.grid_search(problem, grid, steps=steps, progress=False, devices=jax.devices()[:1])
  grid_wall = time.perf_counter() - start
  start = time.perf_counter()
  sh = tuning.successive_halving(problem, grid, min_steps=steps // 9, max_steps=steps, eta=3,
                                 progress=False, devices=jax.devices()[:1])
  sh_wall = time.perf_counter() - start
  sh_steps = sum(r.steps for r in sh.rows)
  print(f"grid               best val loss {full.best.metrics['val_loss']:.4f}  "
        f"config-steps {n * steps}  wall {grid_wall:.2f} s")
  print(f"successive halving best val loss {sh.best.metrics['val_loss']:.4f}  "
        f"config-steps {sh_steps} ({sh_steps / (n * steps):.0%} of the grid)  "
        f"wall {sh_wall:.2f} s  rungs {tuning.rungs(steps // 9, steps, 3)}  "
        f"load {os.getloadavg()[0]:.1f}")
  print(f"grid best {full.best.config}, halving best {sh.best.config}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trials", type=int, default=32)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--study-seeds", type=int, default=3)
  parser.add_argument("--json", default=None, help="write the raw numbers there")
  parser.add_argument("--halving", action="store_true",
                      help="grid search against successive halving instead")
  args = parser.parse_args()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  problem = tasks.digits_mlp(hidden=128, batch_size=32)
  if args.halving:
    return halving(problem, args.steps)
  print(f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} "
        f"load={os.getloadavg()[0]:.1f} trials={args.trials} steps={args.steps} "
        f"batch={args.batch}", flush=True)
  out = {"peer": [], "optuna_search": []}
  for seed in range(args.study_seeds):  # interleaved: one of each per study seed
    for name, fn in (("peer", lambda s=seed: peer(problem, args.trials, args.steps, s)),
                     ("optuna_search", lambda s=seed: batched(problem, args.trials, args.steps,
                                                              s, args.batch))):
      wall, best = fn()
      out[name].append({"seed": seed, "wall_s": wall, "best_val_loss": best,
                        "load": os.getloadavg()[0]})
      print(f"seed {seed} {name:14s} wall {wall:7.2f} s  best val loss {best:.4f}  "
            f"load {os.getloadavg()[0]:.1f}", flush=True)
  for name, runs in out.items():
    print(f"{name:14s} mean wall {statistics.mean(r['wall_s'] for r in runs):7.2f} s  "
          f"mean best val loss {statistics.mean(r['best_val_loss'] for r in runs):.4f}")
  ratio = (statistics.mean(r["wall_s"] for r in out["peer"])
           / statistics.mean(r["wall_s"] for r in out["optuna_search"]))
  print(f"speed-up (mean wall, peer / optuna_search): {ratio:.2f}x")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "runs": out, "ratio": ratio}, f, indent=2)


if __name__ == "__main__":
  main()
