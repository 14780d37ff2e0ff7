"""Tuning speed: a learning-rate grid trained by ``tuning.grid_search`` against users' loops.

Two problems on scikit-learn's digits: (a) the digits MLP (``tasks.digits_mlp``, 1x128)
and (b) a small CNN with BatchNorm (8 3x3 filters, BatchNorm, 2x2 average pooling, a
dense layer of 32). For N learning rates (log-spaced) x ``--steps`` steps, whole wall
time (compilation included) of:

* ``nnx.jit loop``: what users write today, one configuration at a time: a fresh model,
  ``nnx.Optimizer(model, optax.adam(lr))``, a ``@nnx.jit`` step called from Python over
  the same mini-batches, then the validation loss (a new ``lr`` is a new optimizer, so
  the step is traced and compiled again for every configuration);
* ``jax.jit loop``: the careful user's version: ``nnx.split`` once, a ``@jax.jit`` step
  with the learning rate as an argument (``optax.inject_hyperparams``), compiled once;
* ``grid_search``: ``tuning.grid_search(problem, {"learning_rate": lrs})``: every
  configuration in one vmapped program (``--loops`` chooses which loop forms to time:
  ``auto``, ``scan``, ``python``).

Implementations are interleaved per round; medians over rounds are reported, and each
measurement is appended to the JSON file as it finishes (``--out``). The validation
losses of ``grid_search`` and of the ``nnx.jit`` loop are compared per configuration.

Usage::

  python benchmarks/tuning_speed.py [--configs 16,64] [--steps 1000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from adam_jax import tasks, tuning


class CNN(nnx.Module):
  """A small CNN with BatchNorm for the 8x8 digits."""

  def __init__(self, rngs: nnx.Rngs, channels: int = 8, hidden: int = 32):
    self.conv = nnx.Conv(1, channels, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(channels, rngs=rngs)
    self.fc = nnx.Linear(channels * 16, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x[..., None])))
    x = nnx.avg_pool(x, (2, 2), (2, 2))
    return self.out(nnx.relu(self.fc(x.reshape(x.shape[0], -1))))


def classification_loss(model, batch):
  x, y = batch
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def problems() -> dict[str, tuning.Problem]:
  mlp = tasks.digits_mlp(hidden=128)
  (x, y), (xv, yv) = mlp.train_data, mlp.val_data
  cnn = tuning.Problem(CNN, classification_loss, (x.reshape(-1, 8, 8), y),
                       (xv.reshape(-1, 8, 8), yv))
  mlp = tuning.Problem(mlp.model, classification_loss, mlp.train_data, mlp.val_data)
  return {"mlp": mlp, "cnn": cnn}


def nnx_jit_loop(problem: tuning.Problem, lrs: list[float], steps: int) -> list[float]:
  """One configuration at a time, as users write it."""
  x, y = problem.train_data
  idx = problem.batch_indices(steps, 0)

  @nnx.jit
  def step(model, optimizer, xb, yb):
    loss, grads = nnx.value_and_grad(classification_loss)(model, (xb, yb))
    optimizer.update(model, grads)
    return loss

  out = []
  for lr in lrs:
    model = problem.model(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)
    for i in idx:
      step(model, optimizer, x[i], y[i])
    model.eval()
    out.append(float(classification_loss(model, problem.val_data)))
  return out


def jax_jit_loop(problem: tuning.Problem, lrs: list[float], steps: int) -> list[float]:
  """One configuration at a time, one compilation: the learning rate is an argument."""
  x, y = problem.train_data
  idx = problem.batch_indices(steps, 0)
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
  model = problem.model(rngs=nnx.Rngs(0))
  graphdef, params0, rest0 = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def step(params, rest, opt_state, xb, yb):
    def loss(p):
      m = nnx.merge(graphdef, p, rest, copy=True)
      value = classification_loss(m, (xb, yb))
      return value, nnx.state(m, nnx.Not(nnx.Param))
    (value, rest), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), rest, opt_state, value

  @jax.jit
  def evaluate(params, rest, data):
    m = nnx.merge(graphdef, params, rest, copy=True)
    m.eval()
    return classification_loss(m, data)

  out = []
  for lr in lrs:
    params, rest = params0, rest0
    opt_state = tx.init(params)
    opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    for i in idx:
      params, rest, opt_state, _ = step(params, rest, opt_state, x[i], y[i])
    out.append(float(evaluate(params, rest, problem.val_data)))
  return out


def ours(loop: str):
  def run(problem: tuning.Problem, lrs: list[float], steps: int) -> list[float]:
    result = tuning.grid_search(problem, {"learning_rate": lrs}, steps=steps, loop=loop,
                                progress=False, devices=jax.devices()[:1])
    return [r.metrics["val_loss"] for r in result.rows]
  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="16,64")
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--problems", default="mlp,cnn")
  parser.add_argument("--loops", default="auto", help="grid_search loop forms to time")
  parser.add_argument("--baselines", default="nnx,jax")
  parser.add_argument("--out", default="benchmarks/results/tuning_speed_cpu.json")
  args = parser.parse_args()
  probs = problems()
  impls = {}
  if "nnx" in args.baselines:
    impls["nnx.jit loop"] = nnx_jit_loop
  if "jax" in args.baselines:
    impls["jax.jit loop"] = jax_jit_loop
  for loop in args.loops.split(","):
    impls[f"grid_search ({loop})"] = ours(loop)
  report = {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                 f"{jax.devices()[0].device_kind}",
      "jax": jax.__version__, "steps": args.steps, "repeats": args.repeats,
      "load_before": os.getloadavg(), "runs": [],
  }

  def save():
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)

  for name in args.problems.split(","):
    for n in (int(c) for c in args.configs.split(",")):
      lrs = [float(v) for v in np.geomspace(3e-4, 3e-2, n)]
      times: dict[str, list[float]] = {k: [] for k in impls}
      losses: dict[str, list[float]] = {}
      for r in range(args.repeats):
        for impl, fn in impls.items():
          start = time.perf_counter()
          losses[impl] = fn(probs[name], lrs, args.steps)
          times[impl].append(time.perf_counter() - start)
          report["runs"].append({"problem": name, "configs": n, "impl": impl, "round": r,
                                 "wall_s": times[impl][-1], "load": os.getloadavg()[0]})
          save()
          print(f"{name} x{n} round {r + 1}: {impl}: {times[impl][-1]:.1f} s", flush=True)
      med = {k: statistics.median(v) for k, v in times.items()}
      summary = {"problem": name, "configs": n, "median_s": med, "lrs": lrs,
                 "val_loss": losses}
      ref = "nnx.jit loop" if "nnx.jit loop" in med else None
      if ref:
        summary["speedup_vs_nnx_jit_loop"] = {k: med[ref] / v for k, v in med.items()}
        rel = {k: np.abs(np.array(v) - losses[ref]) / np.array(losses[ref])
               for k, v in losses.items()}
        summary["val_loss_rel_diff_vs_nnx_jit_loop_median"] = {
            k: float(np.median(v)) for k, v in rel.items()}
        summary["val_loss_rel_diff_vs_nnx_jit_loop_lr_le_3e-3_max"] = {
            k: float(np.max(v[np.array(lrs) <= 3e-3])) for k, v in rel.items()}
      if "jax.jit loop" in med:
        summary["speedup_vs_jax_jit_loop"] = {k: med["jax.jit loop"] / v for k, v in med.items()}
      report.setdefault("summary", []).append(summary)
      save()
      print(json.dumps(summary, indent=1), flush=True)
  report["load_after"] = os.getloadavg()
  save()


if __name__ == "__main__":
  main()
