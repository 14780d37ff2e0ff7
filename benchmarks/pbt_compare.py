"""Population-based training against a grid and TPE at the same total member-steps.

Two problems, each searched over the learning rate of Adam, log-uniform on
``[1e-4, 1e-1]`` (the other hyperparameters at their defaults), with 16 members x the same
steps in every method:

* ``cnn``: the small CNN with BatchNorm on scikit-learn's digits of ``tuning_speed.py``
  (8 3x3 filters, BatchNorm, 2x2 average pooling, a dense layer of 32; batch 32),
  ``--cnn-steps`` (600) steps;
* ``transformer``: the character-level transformer of ``search_memory.py``, made smaller
  to fit a 2-core CPU: ``--blocks`` (1) block of width ``--dim`` (32), batches of
  ``--batch`` (8) windows of 64 characters, ``--transformer-steps`` (300) steps.

The methods, each evaluated on the validation data every ``--ready-every`` (50) steps and
after the last, and each keeping every member's best evaluated model (``keep="best"``):

* ``pbt``: :func:`adam_jax.tuning.pbt`, 16 members, a ready point every ``--ready-every``
  steps, its defaults otherwise (quantile 0.25, perturbation by 0.8 or 1.2, resampling
  with probability 0.25);
* ``grid``: :func:`adam_jax.tuning.grid_search` over 16 log-spaced learning rates from
  1e-4 to 1e-1 (``eval_every``, ``keep="best"``);
* ``tpe``: :func:`adam_jax.tuning.optuna_search`, 16 trials of an Optuna TPE sampler
  (``constant_liar=True``, 8 random start-up trials) in batches of 4, no pruner; a trial's
  value is its best reported validation loss (reported every ``--ready-every`` steps and
  at the end), the counterpart of ``keep="best"``;
* ``same draws``: :func:`adam_jax.tuning.random_search` of the same 16 configurations that
  ``pbt`` draws (the same seed and space), trained without exploit or explore: the
  baseline of PBT's wall time (the issue's target: within 1.2x).

A seed of the whole procedure (``--seeds``, 0, 1 and 2) is PBT's seed (its draws, its
exploit and explore decisions and the training seed), the grid's and the random search's
training seed (``seeds=[seed]``) and TPE's sampler seed and training seed. Methods run
interleaved in one process, their order rotated from seed to seed; each wall time includes
compilation. Printed: a table per problem (each seed and the median); written: the JSON
(``--out``) and the learning-rate schedules of PBT's best member per seed, up to the step
of its returned model (``--plot``), with the grid's best learning rate of the same seed
drawn dashed.

Usage::

  python benchmarks/pbt_compare.py [--problems cnn,transformer] [--seeds 0,1,2]
      [--out benchmarks/results/pbt_compare_cpu.json]
      [--plot benchmarks/results/pbt_compare_schedules.png]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402

from adam_jax import tuning  # noqa: E402

LR_LOW, LR_HIGH = 1e-4, 1e-1
POPULATION = 16
TPE_BATCH = 4
TPE_STARTUP = 8
METHODS = ("pbt", "grid", "tpe", "same draws")


def space() -> dict[str, tuning.LogUniform]:
  return {"learning_rate": tuning.log_uniform(LR_LOW, LR_HIGH)}


def problem_of(name: str, args: argparse.Namespace) -> tuple[tuning.Problem, int]:
  """The problem and its steps."""
  if name == "cnn":
    import tuning_speed

    return tuning_speed.problems()["cnn"], args.cnn_steps
  if name == "transformer":
    import search_memory

    vocab, train, val = search_memory.data()
    model = search_memory.model_class(vocab, args.blocks, args.dim)
    return (tuning.Problem(model, search_memory.loss_fn, train, val, batch_size=args.batch),
            args.transformer_steps)
  raise SystemExit(f"unknown problem {name!r}")


def run_pbt(problem: tuning.Problem, steps: int, every: int, seed: int) -> dict:
  result = tuning.pbt(problem, space(), population=POPULATION, steps=steps,
                      ready_every=every, seed=seed, keep="best")
  best = result.best
  return {"best_val_loss": best.metrics["val_loss"], "member": best.index,
          "best_step": best.best_step, "initial_config": best.config,
          "schedule": {"starts": list(best.schedule.starts),
                       "learning_rate": list(best.schedule.values["learning_rate"])},
          "lineage": best.lineage, "copies": int((result.sources != np.arange(
              POPULATION)).sum()), "loop": result.loop}


def run_grid(problem: tuning.Problem, steps: int, every: int, seed: int) -> dict:
  lrs = [float(v) for v in np.geomspace(LR_LOW, LR_HIGH, POPULATION)]
  result = tuning.grid_search(problem, {"learning_rate": lrs}, steps=steps, seeds=[seed],
                              eval_every=every, keep="best", progress=False)
  return {"best_val_loss": result.best.metrics["val_loss"], "config": result.best.config,
          "best_step": result.best.best_step, "loops": result.loops}


def run_same_draws(problem: tuning.Problem, steps: int, every: int, seed: int) -> dict:
  result = tuning.random_search(problem, space(), num_configs=POPULATION, seed=seed,
                                steps=steps, seeds=[seed], eval_every=every, keep="best",
                                progress=False)
  return {"best_val_loss": result.best.metrics["val_loss"], "config": result.best.config,
          "best_step": result.best.best_step, "loops": result.loops}


def run_tpe(problem: tuning.Problem, steps: int, every: int, seed: int) -> dict:
  sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                       n_startup_trials=TPE_STARTUP)
  study = optuna.create_study(sampler=sampler, pruner=optuna.pruners.NopPruner())

  def space_fn(trial):
    return {"learning_rate": trial.suggest_float("learning_rate", LR_LOW, LR_HIGH, log=True)}

  result = tuning.optuna_search(study, problem, space_fn, n_trials=POPULATION,
                                batch_size_trials=TPE_BATCH, steps=steps, report_every=every,
                                seeds=[seed])
  best = min((t for t in study.trials if t.intermediate_values),
             key=lambda t: min(t.intermediate_values.values()))
  step, value = min(best.intermediate_values.items(), key=lambda kv: kv[1])
  return {"best_val_loss": float(value), "config": dict(best.params), "best_step": int(step),
          "final_best_val_loss": float(study.best_value), "loops": result.loops}


RUNS = {"pbt": run_pbt, "grid": run_grid, "tpe": run_tpe, "same draws": run_same_draws}


def table(name: str, runs: list[dict], seeds: list[int]) -> str:
  """Best validation loss and wall time per method: each seed, then the median."""
  head = f"{name}: best validation loss (wall s)"
  lines = [head, f"{'method':<12}" + "".join(f"{'seed ' + str(s):>18}" for s in seeds)
           + f"{'median':>18}"]
  for method in METHODS:
    by_seed = {r["seed"]: r for r in runs if r["method"] == method}
    if not by_seed:
      continue
    cells = [f"{by_seed[s]['best_val_loss']:.4f} ({by_seed[s]['wall_s']:5.1f})"
             for s in seeds if s in by_seed]
    med_loss = statistics.median(r["best_val_loss"] for r in by_seed.values())
    med_wall = statistics.median(r["wall_s"] for r in by_seed.values())
    lines.append(f"{method:<12}" + "".join(f"{c:>18}" for c in cells)
                 + f"{f'{med_loss:.4f} ({med_wall:5.1f})':>18}")
  return "\n".join(lines)


def plot(report: dict, path: str) -> None:
  """PBT's best member's learning rate per seed, one panel per problem."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  problems = list(report["problems"])
  fig = Figure(figsize=(5.5 * len(problems), 3.8))
  FigureCanvasAgg(fig)
  for i, name in enumerate(problems):
    ax = fig.add_subplot(1, len(problems), i + 1)
    steps = report["problems"][name]["steps"]
    runs = report["problems"][name]["runs"]
    for k, seed in enumerate(report["seeds"]):
      color = f"C{k}"
      for r in runs:
        if r["seed"] != seed:
          continue
        if r["method"] == "pbt":
          end = r["best_step"] if r["best_step"] > 0 else steps  # its returned model's step
          starts = r["schedule"]["starts"] + [end]
          lrs = r["schedule"]["learning_rate"]
          ax.step(starts, lrs + lrs[-1:], where="post", color=color, lw=2,
                  label=f"PBT best, seed {seed} ({r['best_val_loss']:.3f})")
        elif r["method"] == "grid":
          ax.axhline(r["config"]["learning_rate"], color=color, ls="--", lw=1,
                     label=f"grid best, seed {seed} ({r['best_val_loss']:.3f})")
    ax.set_yscale("log")
    ax.set_ylim(LR_LOW, LR_HIGH)  # the space searched
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{name}: learning rate of PBT's best member")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--problems", default="cnn,transformer")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--ready-every", type=int, default=50)
  parser.add_argument("--cnn-steps", type=int, default=600)
  parser.add_argument("--transformer-steps", type=int, default=300)
  parser.add_argument("--blocks", type=int, default=1)
  parser.add_argument("--dim", type=int, default=32)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--out", default="benchmarks/results/pbt_compare_cpu.json")
  parser.add_argument("--plot", default="benchmarks/results/pbt_compare_schedules.png")
  args = parser.parse_args()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  seeds = [int(s) for s in args.seeds.split(",")]
  report = {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                 f"{jax.devices()[0].device_kind}",
      "jax": jax.__version__, "optuna": optuna.__version__, "seeds": seeds,
      "ready_every": args.ready_every, "population": POPULATION,
      "space": {"learning_rate": ["log_uniform", LR_LOW, LR_HIGH]},
      "sizes": {"cnn_steps": args.cnn_steps, "transformer_steps": args.transformer_steps,
                "transformer_blocks": args.blocks, "transformer_dim": args.dim,
                "transformer_batch": args.batch},
      "load_before": os.getloadavg(), "problems": {},
  }

  def save():
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)

  for name in args.problems.split(","):
    problem, steps = problem_of(name, args)
    entry = report["problems"][name] = {"steps": steps, "runs": []}
    for k, seed in enumerate(seeds):
      order = METHODS[k % len(METHODS):] + METHODS[:k % len(METHODS)]
      for method in order:
        start = time.perf_counter()
        out = RUNS[method](problem, steps, args.ready_every, seed)
        wall = time.perf_counter() - start
        entry["runs"].append({"method": method, "seed": seed, "wall_s": wall,
                              "load": os.getloadavg()[0], **out})
        save()
        print(f"{name} seed {seed} {method}: val_loss {out['best_val_loss']:.4f}, "
              f"{wall:.1f} s", flush=True)
    runs = entry["runs"]
    ratios = []
    for seed in seeds:
      wall = {r["method"]: r["wall_s"] for r in runs if r["seed"] == seed}
      ratios.append(wall["pbt"] / wall["same draws"])
    entry["pbt_over_same_draws_wall"] = ratios
    entry["pbt_over_same_draws_wall_median"] = statistics.median(ratios)
    entry["median_best_val_loss"] = {m: statistics.median(
        r["best_val_loss"] for r in runs if r["method"] == m) for m in METHODS}
    entry["median_wall_s"] = {m: statistics.median(
        r["wall_s"] for r in runs if r["method"] == m) for m in METHODS}
    save()
    print(table(name, runs, seeds))
    print(f"PBT / same draws wall time: {', '.join(f'{x:.2f}' for x in ratios)} "
          f"(median {statistics.median(ratios):.2f})", flush=True)
  report["load_after"] = os.getloadavg()
  save()
  if args.plot:
    os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
    plot(report, args.plot)


if __name__ == "__main__":
  main()
