"""A search's steady-state throughput in GFLOP/s, against this machine's float32 matmul peak.

For each problem, ``tuning.grid_search`` over N learning rates trains in chunks of
``--chunk`` steps; each chunk's wall time is measured (the chunks after the first are the
steady state), and the FLOPs of one step of all members are XLA's own count
(``Compiled.cost_analysis()`` of the chunk program, whose loop body XLA counts once: one
step). The peak is a 2048x2048 float32 matmul, jitted, timed in the same run (median of
20). Compilation and set-up time is reported apart.

Problems: the digits MLP (``tasks.digits_mlp``, 1x128, batch 32), a small CNN with
BatchNorm on the digits (``tuning_speed.py``'s), and the character-level transformer of
``search_memory.py`` (batch 32 windows of 64 characters).

Usage::

  python benchmarks/search_flops.py [--problems mlp:64,cnn:16,transformer:8] [--steps 400]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from adam_jax import tasks, tuning  # noqa: E402

_runner = importlib.import_module("adam_jax.tuning._runner")


def matmul_peak(n: int = 2048, repeats: int = 20) -> float:
  """GFLOP/s of an ``n x n`` float32 matmul (median of ``repeats``)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(times) / 1e9


def problem_of(name: str):
  if name == "mlp":
    return tasks.digits_mlp(hidden=128)
  if name == "cnn":
    import tuning_speed

    return tuning_speed.problems()["cnn"]
  if name == "transformer":
    import search_memory

    vocab, train, val = search_memory.data()
    return tuning.Problem(search_memory.model_class(vocab, 2), search_memory.loss_fn, train,
                          val, batch_size=32)
  raise SystemExit(f"unknown problem {name!r}")


def measure(name: str, configs: int, steps: int, chunk: int) -> dict:
  problem = problem_of(name)
  lrs = list(np.geomspace(1e-4, 1e-1, configs))
  chunk_s: list[float] = []
  compiled: list = []
  compile_s = [0.0]
  train_group, hook, compile_all = _runner.train_group, _runner.run_chunk_hook, _runner.compile_all

  def timed_hook(run_chunk, carry, lo, hi):
    start = time.perf_counter()
    out = hook(run_chunk, carry, lo, hi)
    chunk_s.append(time.perf_counter() - start)
    return out

  def timed_compile(lowered, options):
    start = time.perf_counter()
    out = compile_all(lowered, options)
    compile_s[0] += time.perf_counter() - start
    compiled.extend((k, c) for k, c in out.items() if k not in ("init", "metrics"))
    return out

  _runner.train_group = lambda *a, **k: train_group(*a, **{**k, "chunk": chunk})
  _runner.run_chunk_hook, _runner.compile_all = timed_hook, timed_compile
  try:
    start = time.perf_counter()
    result = tuning.grid_search(problem, {"learning_rate": lrs}, steps=steps, progress=False)
    wall = time.perf_counter() - start
  finally:
    _runner.train_group, _runner.run_chunk_hook = train_group, hook
    _runner.compile_all = compile_all
  loop = next(iter(result.loops.values()))
  kind, program = compiled[0]
  flops_step = float(program.cost_analysis()["flops"])
  steady = statistics.median(chunk_s[1:]) / chunk if len(chunk_s) > 1 else chunk_s[0] / chunk
  return {"problem": name, "configs": configs, "steps": steps, "loop": loop,
          "gflop_per_step": flops_step / 1e9, "ms_per_step": 1e3 * steady,
          "gflops": flops_step / steady / 1e9, "compile_s": compile_s[0], "wall_s": wall,
          "setup_s": wall - sum(chunk_s)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--problems", default="mlp:64,cnn:16,transformer:8")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--chunk", type=int, default=50)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  peak = matmul_peak()
  out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
         "load": os.getloadavg()[0], "jax": jax.__version__, "matmul_peak_gflops": peak,
         "runs": []}
  print(f"float32 matmul 2048^2: {peak:.0f} GFLOP/s (load {out['load']:.1f})")
  for item in args.problems.split(","):
    name, configs = item.split(":")
    run = measure(name, int(configs), args.steps, args.chunk)
    run["fraction_of_peak"] = run["gflops"] / peak
    out["runs"].append(run)
    print(f"{name:11s} x{configs:>3s} {run['loop']:6s} {run['ms_per_step']:8.2f} ms/step "
          f"{run['gflops']:7.1f} GFLOP/s ({100 * run['fraction_of_peak']:4.1f}% of peak)  "
          f"compile {run['compile_s']:.2f} s, set-up and compile {run['setup_s']:.2f} s",
          flush=True)
    if args.out:
      with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
