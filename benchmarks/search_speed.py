"""Search speed: an Optuna TPE study on the digits MLP, one trial at a time vs batched.

* peer: what a practitioner runs today, an Optuna study with TPE whose objective
  trains one configuration of the same Flax NNX MLP with ``optax.adamw`` (a jitted
  step called from a Python loop), ``n_trials`` one after another;
* ``adam_jax.tuning.optuna_search``: the same sampler (TPE, ``constant_liar``),
  batches of ``--batch`` trials trained in one vectorized program;
* ``adam_jax.tuning.random_search``: ``n_trials`` configurations drawn from the same
  distributions, trained in one vectorized program;
* ``adam_jax.tuning.successive_halving``: ``n_trials`` drawn configurations, rungs of
  ``steps // 9``, ``steps // 3`` and ``steps`` steps (``eta=3``).

Same space (learning rate log-uniform 1e-5..1e-1, b1 uniform 0.8..0.99, weight decay
log-uniform 1e-6..1e-2), steps, batch order and initial params; no pruner. Reports
wall time (compilation included) and the best validation loss per study seed, their
medians and means.

With ``--halving``: a grid of 27 configurations (9 learning rates x 3 b1) trained
``--steps`` steps by ``grid_search`` against ``successive_halving`` over the same 27
configurations (``eta=3``, ``min_steps = steps // 9``), so that early stopping is the
only difference: best validation loss, configuration-steps, the member-steps actually
run (survivors may run padded on an earlier rung's program) and wall time of each.
With ``--padding``: successive halving on that grid with its survivors always padded to
an earlier rung's program, never padded (programs of their own), and as it chooses.

Usage::

  python benchmarks/search_speed.py [--trials 32 128] [--steps 300] [--study-seeds 3]
  python benchmarks/search_speed.py --halving [--steps 300 900] [--repeats 3]
  python benchmarks/search_speed.py --padding [--steps 300 900] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib
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


def halving(problem, steps, repeats):
  """Grid search against successive halving over the grid's own configurations."""
  runner = importlib.import_module("adam_jax.tuning._runner")
  train_group = runner.train_group
  member_steps = []

  def counted(*args, **kwargs):  # the member-steps each program really runs, padding included
    out = train_group(*args, **kwargs)
    n = max(len(args[3]), kwargs.get("pad_to") or 0)
    member_steps.append(n * (args[5] - kwargs.get("first_step", 0)))
    return out

  runner.train_group = counted
  grid = {"learning_rate": [float(v) for v in np.geomspace(1e-4, 1e-1, 9)], "b1": [0.8, 0.9, 0.95]}
  n, one = 27, jax.devices()[:1]
  walls = {"grid": [], "halving": []}
  for _ in range(repeats):  # interleaved
    start = time.perf_counter()
    full = tuning.grid_search(problem, grid, steps=steps, progress=False, devices=one)
    walls["grid"].append(time.perf_counter() - start)
    member_steps.clear()
    start = time.perf_counter()
    sh = tuning.successive_halving(problem, grid, min_steps=steps // 9, max_steps=steps, eta=3,
                                   progress=False, devices=one)
    walls["halving"].append(time.perf_counter() - start)
  runner.train_group = train_group
  # The grid at each rung's steps: where the grid's best ranked, and whether each halving
  # row equals the grid's row of its configuration at the same steps.
  at = {steps: full}
  for rung_steps in tuning.rungs(steps // 9, steps, 3)[:-1]:
    at[rung_steps] = tuning.grid_search(problem, grid, steps=rung_steps, progress=False,
                                        devices=one)
  loss = {(s, tuple(r.config.items())): r.metrics["val_loss"] for s, g in at.items()
          for r in g.rows}
  mismatch = max(abs(r.metrics["val_loss"] / loss[r.steps, tuple(r.config.items())] - 1)
                 for r in sh.rows)
  ranks = {}
  for rung_steps, g in at.items():
    ranked = sorted(g.rows, key=lambda r: r.metrics["val_loss"])
    ranks[rung_steps] = 1 + [r.config for r in ranked].index(full.best.config)
  rank = ranks[steps // 9]
  sh_steps = sum(r.steps for r in sh.rows)
  grid_best, sh_best = full.best.metrics["val_loss"], sh.best.metrics["val_loss"]
  out = {"steps": steps, "rungs": tuning.rungs(steps // 9, steps, 3),
         "grid_best_val_loss": grid_best, "grid_best_config": full.best.config,
         "halving_best_val_loss": sh_best, "halving_best_config": sh.best.config,
         "gap": sh_best / grid_best - 1, "config_steps": sh_steps / (n * steps),
         "member_steps": sum(member_steps) / (n * steps),
         "grid_best_rank_at_first_rung": rank, "grid_best_rank_at_each_rung": ranks,
         "largest_relative_difference_to_the_grid_rows": mismatch,
         "grid_wall_s": walls["grid"], "halving_wall_s": walls["halving"],
         "load": os.getloadavg()[0]}
  print(f"steps {steps}: grid best {grid_best:.4f} {full.best.config}; halving best "
        f"{sh_best:.4f} ({out['gap']:+.1%}) {sh.best.config}; config-steps "
        f"{out['config_steps']:.0%}, member-steps run {out['member_steps']:.0%} of the grid's; "
        f"median wall grid {statistics.median(walls['grid']):.2f} s, halving "
        f"{statistics.median(walls['halving']):.2f} s; the grid's best ranks {rank} of {n} "
        f"after {steps // 9} steps (at each rung's steps among all 27: {ranks}); halving rows "
        f"against the grid's at the same steps: largest relative difference {mismatch:.1e}; "
        f"load {out['load']:.1f}", flush=True)
  return out


def padding(problem, steps, repeats):
  """successive_halving with the survivors always padded, never padded, and as it chooses."""
  module = importlib.import_module("adam_jax.tuning._halving")
  choose = module._pad_is_cheaper
  grid = {"learning_rate": [float(v) for v in np.geomspace(1e-4, 1e-1, 9)], "b1": [0.8, 0.9, 0.95]}
  walls = {"padded": [], "own programs": [], "chosen": []}
  rules = {"padded": lambda *a: True, "own programs": lambda *a: False, "chosen": choose}
  for _ in range(repeats):  # interleaved
    for name, rule in rules.items():
      module._pad_is_cheaper = rule
      start = time.perf_counter()
      tuning.successive_halving(problem, grid, min_steps=steps // 9, max_steps=steps, eta=3,
                                progress=False, devices=jax.devices()[:1])
      walls[name].append(time.perf_counter() - start)
  module._pad_is_cheaper = choose
  out = {"steps": steps, "wall_s": walls, "load": os.getloadavg()[0]}
  print(f"steps {steps}: median wall " + ", ".join(
      f"{k} {statistics.median(v):.2f} s" for k, v in walls.items()) + f"; load {out['load']:.1f}",
      flush=True)
  return out


def sampled(problem, trials, steps, seed, search):
  """random_search or successive_halving over the same distributions."""
  space = {"learning_rate": tuning.log_uniform(1e-5, 1e-1), "b1": tuning.uniform(0.8, 0.99),
           "weight_decay": tuning.log_uniform(1e-6, 1e-2)}
  start = time.perf_counter()
  if search == "random_search":
    result = tuning.random_search(problem, space, num_configs=trials, seed=seed, steps=steps,
                                  optimizer="adamw", progress=False, devices=jax.devices()[:1])
  else:
    result = tuning.successive_halving(problem, space, num_configs=trials, seed=seed,
                                       min_steps=steps // 9, max_steps=steps, eta=3,
                                       optimizer="adamw", progress=False,
                                       devices=jax.devices()[:1])
  return time.perf_counter() - start, result.best.metrics["val_loss"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trials", type=int, nargs="+", default=[32, 128])
  parser.add_argument("--steps", type=int, nargs="+", default=None,
                      help="steps per trial (default 300; with --halving, 300 and 900)")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--study-seeds", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=3, help="--halving: runs of each")
  parser.add_argument("--json", default=None, help="write the raw numbers there")
  parser.add_argument("--halving", action="store_true",
                      help="grid search against successive halving instead")
  parser.add_argument("--padding", action="store_true",
                      help="successive halving with survivors padded or not, instead")
  args = parser.parse_args()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  problem = tasks.digits_mlp(hidden=128, batch_size=32)
  header = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__,
            "optuna": optuna.__version__, "load_start": os.getloadavg()[0]}
  print(header, flush=True)
  if args.halving or args.padding:
    fn = halving if args.halving else padding
    out = {"args": vars(args), **header,
           "runs": [fn(problem, steps, args.repeats) for steps in args.steps or [300, 900]]}
  else:
    out = {"args": vars(args), **header, "cases": [case(problem, trials, (args.steps or [300])[0],
                                                        args) for trials in args.trials]}
  out["load_end"] = os.getloadavg()[0]
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=2)


def case(problem, trials, steps, args):
  """Every search on ``trials`` trials, interleaved per study seed."""
  print(f"trials={trials} steps={steps} batch={args.batch}", flush=True)
  searches = {
      "peer": lambda s: peer(problem, trials, steps, s),
      "optuna_search": lambda s: batched(problem, trials, steps, s, args.batch),
      "random_search": lambda s: sampled(problem, trials, steps, s, "random_search"),
      "successive_halving": lambda s: sampled(problem, trials, steps, s, "successive_halving"),
  }
  runs = {name: [] for name in searches}
  for seed in range(args.study_seeds):
    for name, fn in searches.items():
      wall, best = fn(seed)
      runs[name].append({"seed": seed, "wall_s": wall, "best_val_loss": best,
                         "load": os.getloadavg()[0]})
      print(f"  seed {seed} {name:18s} wall {wall:7.2f} s  best val loss {best:.4f}  "
            f"load {os.getloadavg()[0]:.1f}", flush=True)
  peer_wall = statistics.median(r["wall_s"] for r in runs["peer"])
  summary = {}
  for name, rs in runs.items():
    wall = statistics.median(r["wall_s"] for r in rs)
    summary[name] = {"median_wall_s": wall, "speedup": peer_wall / wall,
                     "mean_best_val_loss": statistics.mean(r["best_val_loss"] for r in rs)}
    print(f"  {name:18s} median wall {wall:7.2f} s ({peer_wall / wall:4.1f}x less than the "
          f"peer)  mean best val loss {summary[name]['mean_best_val_loss']:.4f}", flush=True)
  return {"trials": trials, "steps": steps, "runs": runs, "summary": summary}


if __name__ == "__main__":
  main()
