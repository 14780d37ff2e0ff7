"""Overhead of ``diagnostics.monitor(tx)`` on a training step of the digits MLP.

Times a whole training step (forward, backward, optimizer, apply) with ``tx`` and
with ``monitor(tx)``, compiled once each and run interleaved in one process:

* ``scan``: ``--steps`` steps inside one ``jax.lax.scan`` (the compute alone);
* ``loop``: one jitted step called from Python per step (what a training loop
  that reads the statistics every step pays, dispatch included).

Prints medians over ``--repeats`` rounds of wall time and of process CPU time
(steadier when other jobs share the cores), the median of the per-round ratios
monitored / plain, and the host cost of one ``summarize`` call. Usage::

  python benchmarks/monitor_overhead.py [--hidden 128 --layers 1 --repeats 15]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_jax
from adam_jax import diagnostics
from adam_jax.tasks import fit, get_task


def _time(fn, *args):
  """``(wall, process CPU)`` seconds of one call; CPU time is steadier on a shared machine."""
  c, t = time.process_time(), time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t, time.process_time() - c


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hidden", type=int, default=128)
  ap.add_argument("--layers", type=int, default=1)
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--steps", type=int, default=200, help="steps per timed scan")
  ap.add_argument("--loop-steps", type=int, default=100, help="steps per timed Python loop")
  ap.add_argument("--repeats", type=int, default=15)
  args = ap.parse_args(argv)

  task = get_task("digits-mlp", hidden=args.hidden, layers=args.layers,
                  batch_size=args.batch_size)
  n_params = sum(int(np.size(p)) for p in jax.tree.leaves(task.params))
  x, y = jnp.asarray(task.x_train), jnp.asarray(task.y_train)
  idx = jnp.asarray(task.batch_indices(max(args.steps, args.loop_steps)))
  txs = {"plain": adam_jax.adam(1e-3), "monitor": diagnostics.monitor(adam_jax.adam(1e-3))}

  scans, steps, states = {}, {}, {}
  for name, tx in txs.items():
    scans[name] = jax.jit(lambda p, s, i, x, y, tx=tx: fit(task, tx, p, s, i, x, y)[:2])

    def one(p, s, b, x, y, tx=tx):
      loss, g = jax.value_and_grad(task.loss)(p, x[b], y[b])
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s, loss

    steps[name] = jax.jit(one)
    states[name] = tx.init(task.params)

  def run_scan(name):
    return scans[name](task.params, states[name], idx[: args.steps], x, y)

  def run_loop(name):
    p, s = task.params, states[name]
    for b in idx[: args.loop_steps]:
      p, s, _ = steps[name](p, s, b, x, y)
    return p, s

  for name in txs:  # compile and warm up
    run_scan(name)
    run_loop(name)
  times = {(mode, name): [] for mode in ("scan", "loop") for name in txs}
  for _ in range(args.repeats):
    for name in txs:
      times["scan", name].append(np.array(_time(run_scan, name)) / args.steps)
      times["loop", name].append(np.array(_time(run_loop, name)) / args.loop_steps)

  _, mon_state = run_scan("monitor")
  diagnostics.summarize(mon_state)
  t_sum = []
  for _ in range(args.repeats):
    t = time.perf_counter()
    diagnostics.summarize(mon_state)
    t_sum.append(time.perf_counter() - t)

  print(f"# monitor(adam) overhead, digits MLP {args.layers}x{args.hidden}, batch "
        f"{args.batch_size}, {n_params} params")
  print(f"# {datetime.date.today()}, {jax.devices()[0].device_kind} ({platform.machine()}), "
        f"jax {jax.__version__}, {args.repeats} interleaved rounds, medians")
  print("| mode | clock | plain step (us) | monitored step (us) | ratio |")
  print("|---|---|---|---|---|")
  for mode in ("scan", "loop"):
    plain, mon = np.array(times[mode, "plain"]), np.array(times[mode, "monitor"])
    for k, clock in enumerate(("wall", "cpu")):
      ratio = np.median(mon[:, k] / plain[:, k])
      print(f"| {mode} | {clock} | {np.median(plain[:, k]) * 1e6:.1f} | "
            f"{np.median(mon[:, k]) * 1e6:.1f} | {ratio:.3f} |")
  print(f"summarize(state) on the host: {np.median(t_sum) * 1e3:.2f} ms per call")


if __name__ == "__main__":
  main()
