"""The Adam CPU kernel built for AVX2 against the default (``-march=native``) build.

Builds ``adam_jax/native/adam_cpu.cc`` a second time with ``-march=x86-64-v3`` (AVX2
and FMA, no AVX-512), registers it under another name and times one Adam step
(update + ``optax.apply_updates``, jitted, donated) with each build, the XLA
program (``native=False``) and ``optax.adam``, interleaved round by round in one
process, on the layouts of ``adam-jax bench --size cpu``. Medians (ms) and the
process CPU time per step. Run ``python benchmarks/native_isa.py [--rounds 30]``.
"""

from __future__ import annotations

import argparse
import ctypes
import pathlib
import statistics
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import optax

import adam_jax
from adam_jax import native
from adam_jax._benchmarking import layouts

_SOURCE = pathlib.Path(native.__file__).with_name("adam_cpu.cc")


def _build_avx2(out: pathlib.Path) -> str:
  target = "adam_jax_adam_step_avx2"
  cmd = ["c++", "-O3", "-march=x86-64-v3", "-fno-math-errno", "-fno-trapping-math",
         "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC", "-w",
         f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", str(out)]
  subprocess.run(cmd, check=True)
  lib = ctypes.cdll.LoadLibrary(str(out))
  assert lib.AdamJaxAdamLanes() == 8
  jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(lib.AdamJaxAdamStep), platform="cpu")
  return target


def _runner(tx, shapes, target=None):
  params = [jnp.ones(s) for s in shapes]
  grads = [jnp.full(s, 0.1) for s in shapes]
  state = tx.init(params)

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  default = native.ADAM_TARGET
  native.ADAM_TARGET = target or default  # read when the step is traced
  try:
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
  finally:
    native.ADAM_TARGET = default
  box = [params, state]

  def run():
    box[0], box[1] = compiled(box[0], box[1], grads)
    jax.block_until_ready(box)

  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=30)
  args = parser.parse_args()
  assert native.available("adam"), native.status("adam")
  with tempfile.TemporaryDirectory() as tmp:
    avx2 = _build_avx2(pathlib.Path(tmp) / "adam_avx2.so")
    for name, shapes in layouts("cpu").items():
      runs = {"kernel, -march=native": _runner(adam_jax.adam(1e-3, native=True), shapes),
              "kernel, AVX2 build": _runner(adam_jax.adam(1e-3, native=True), shapes, avx2),
              "XLA program": _runner(adam_jax.adam(1e-3, native=False), shapes),
              "optax.adam": _runner(optax.adam(1e-3), shapes)}
      for run in runs.values():
        run()
        run()
      wall = {k: [] for k in runs}
      cpu = {k: [] for k in runs}
      names = list(runs)
      for r in range(args.rounds):
        for k in names if r % 2 == 0 else names[::-1]:
          t0, c0 = time.perf_counter(), time.process_time()
          runs[k]()
          wall[k].append(time.perf_counter() - t0)
          cpu[k].append(time.process_time() - c0)
      ref = statistics.median(wall["optax.adam"])
      print(f"\n## {name}")
      for k in names:
        med = statistics.median(wall[k])
        print(f"{k:<24}{1e3 * med:8.2f} ms  cpu {1e3 * statistics.median(cpu[k]):7.2f} ms"
              f"  vs optax {ref / med:5.2f}x")


if __name__ == "__main__":
  main()
