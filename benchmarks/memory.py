"""Memory-lean moments: state size, convergence and step time of bf16 and 8-bit Adam.

    python benchmarks/memory.py                 # everything (about 10 minutes on 2 CPU cores)
    python benchmarks/memory.py --only bytes    # or: convergence, step
    python benchmarks/memory.py --json memory.json

Three measurements, each against fp32 Adam with the same hyperparameters:

* **bytes**: optimizer state bytes per parameter (every array of the state, scales
  and the step counter included) on a transformer-block-shaped model (5.25M params by default).
* **convergence**: final training and validation loss on the embedded digits tasks
  (``adam_jax.tasks``: MLP classifier and autoencoder) over several seeds (split,
  initial params and batch order), mean ± std and the ratio to fp32 Adam.
* **step**: one jitted optimizer step + ``apply_updates`` with donated params and
  state, all variants interleaved in one process; medians of wall-clock and process
  CPU time (the CPU time is the steadier number on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_jax
from adam_jax import tasks


def model_shapes(d: int = 512) -> dict[str, tuple[int, ...]]:
  """One transformer block plus an embedding: 5.25M params at d=512, 59M at d=2048."""
  return {
      "embed": (4096, d),
      "attn_qkv": (d, 3 * d), "attn_out": (d, d),
      "mlp_in": (d, 4 * d), "mlp_out": (4 * d, d),
      "ln1": (d,), "ln2": (d,), "mlp_in_bias": (4 * d,), "head_bias": (4096,),
  }


def optimizers(lr: float, seed: int = 0) -> dict[str, optax.GradientTransformation]:
  return {
      "fp32 adam": adam_jax.adam(lr),
      # The same float32 algorithm rounded differently: how far two runs drift apart
      # from rounding alone (the noise floor of the ratios below).
      "fp32 optax.adam": optax.adam(lr),
      "bf16 moments": adam_jax.adam(lr, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
      "bf16 stochastic": optax.chain(adam_jax.scale_by_adam_stochastic(seed=seed),
                                     adam_jax.scale_by_learning_rate(lr)),
      "8-bit (adam8bit)": adam_jax.adam8bit(lr),
  }


def model_params(d: int = 512, seed: int = 0) -> dict[str, jax.Array]:
  shapes = model_shapes(d)
  keys = jax.random.split(jax.random.key(seed), len(shapes))
  return {name: 0.02 * jax.random.normal(k, shape, jnp.float32)
          for k, (name, shape) in zip(keys, shapes.items())}


def state_bytes_per_param(tx: optax.GradientTransformation, params) -> float:
  state = jax.eval_shape(tx.init, params)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  n_bytes = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in jax.tree.leaves(state))
  return n_bytes / n_params


def measure_bytes(d: int) -> list[dict]:
  params = model_params(d)
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  rows = []
  for name, tx in optimizers(1e-3).items():
    if name == "fp32 optax.adam":
      continue
    rows.append({"optimizer": name, "params": n,
                 "state_bytes_per_param": round(state_bytes_per_param(tx, params), 4)})
    print(f"bytes  {name:18s} {rows[-1]['state_bytes_per_param']:.4f} B/param  ({n} params)",
          flush=True)
  return rows


def measure_convergence(steps: int, seeds: int, lr: float, hidden: int) -> list[dict]:
  rows = []
  for task_name in ("digits-mlp", "digits-autoencoder"):
    per_opt: dict[str, list] = {}
    for seed in range(seeds):
      task = tasks.get_task(task_name, hidden=hidden, seed=seed)
      for name, tx in optimizers(lr, seed).items():
        r = tasks.train(task, tx, steps, seed=seed)
        per_opt.setdefault(name, []).append((r.train_loss, r.val_loss, r.val_accuracy))
      print(f"conv   {task_name} seed {seed} done", flush=True)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(task.params))
    quantized = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(task.params)
                    if np.prod(p.shape) >= 4096)
    base = np.array(per_opt["fp32 adam"], dtype=float)
    for name, vals in per_opt.items():
      v = np.array([[x if x is not None else np.nan for x in row] for row in vals], float)
      row = {
          "task": task_name, "optimizer": name, "steps": steps, "lr": lr, "seeds": seeds,
          "hidden": hidden, "params": n_params, "quantized_fraction": quantized / n_params,
          "train_loss_mean": float(v[:, 0].mean()), "train_loss_std": float(v[:, 0].std()),
          "val_loss_mean": float(v[:, 1].mean()), "val_loss_std": float(v[:, 1].std()),
          "val_acc_mean": None if np.isnan(v[:, 2]).all() else float(v[:, 2].mean()),
          # paired by seed: the ratio of each seed's loss to fp32 Adam's with that seed
          "train_ratio_mean": float((v[:, 0] / base[:, 0]).mean()),
          "train_ratio_max": float((v[:, 0] / base[:, 0]).max()),
          "val_ratio_mean": float((v[:, 1] / base[:, 1]).mean()),
          "val_ratio_max": float((v[:, 1] / base[:, 1]).max()),
      }
      rows.append(row)
      print(f"conv   {task_name:18s} {name:18s} train {row['train_loss_mean']:.5f} ± "
            f"{row['train_loss_std']:.5f} (x{row['train_ratio_mean']:.3f})  val "
            f"{row['val_loss_mean']:.5f} ± {row['val_loss_std']:.5f} "
            f"(x{row['val_ratio_mean']:.3f}, worst seed x{row['val_ratio_max']:.3f})",
            flush=True)
  return rows


def measure_step(d: int, rounds: int, reps: int) -> list[dict]:
  params = model_params(d)
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  grads = jax.tree.map(lambda p: 1e-2 * jnp.sin(100.0 * p), params)
  runs = {}
  txs = optimizers(1e-3)
  # The default 8-bit step is the CPU kernel where it builds (adam_jax.native);
  # the XLA program it replaces, measured beside it.
  print(f"step   CPU kernel: {adam_jax.native.status()}", flush=True)
  txs["8-bit, XLA program"] = adam_jax.adam8bit(1e-3, native=False)
  for name, tx in txs.items():
    if name == "fp32 optax.adam":
      continue

    def step(p, s, g, tx=tx):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s
    fn = jax.jit(step, donate_argnums=(0, 1))
    p = jax.tree.map(jnp.copy, params)
    carry = fn(p, tx.init(p), grads)  # compile and warm up
    jax.block_until_ready(carry)
    runs[name] = [fn, carry, [], []]
  for _ in range(rounds):
    for run in runs.values():  # interleaved: every variant sees the same machine load
      fn, carry = run[0], run[1]
      t0, c0 = time.perf_counter(), time.process_time()
      for _ in range(reps):
        carry = fn(*carry, grads)
      jax.block_until_ready(carry)
      run[1] = carry
      run[2].append((time.perf_counter() - t0) / reps)
      run[3].append((time.process_time() - c0) / reps)
  base_wall = np.median(runs["fp32 adam"][2])
  base_cpu = np.median(runs["fp32 adam"][3])
  rows = []
  for name, (_, _, wall, cpu) in runs.items():
    row = {"optimizer": name, "params": n, "wall_ms": 1e3 * float(np.median(wall)),
           "cpu_ms": 1e3 * float(np.median(cpu)),
           "wall_ratio": float(np.median(wall) / base_wall),
           "cpu_ratio": float(np.median(cpu) / base_cpu)}
    rows.append(row)
    print(f"step   {name:18s} wall {row['wall_ms']:.2f} ms (x{row['wall_ratio']:.2f})  "
          f"cpu {row['cpu_ms']:.2f} ms (x{row['cpu_ratio']:.2f})", flush=True)
  return rows


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", choices=["bytes", "convergence", "step"], action="append")
  parser.add_argument("--steps", type=int, default=1000, help="training steps per run")
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--width", type=int, default=512,
                      help="model width d for bytes and step (512: 5.25M params)")
  parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
  parser.add_argument("--reps", type=int, default=5, help="steps per timing round")
  parser.add_argument("--json", help="write the results to this file")
  args = parser.parse_args(argv)
  only = set(args.only or ["bytes", "convergence", "step"])
  out = {"device": jax.devices()[0].device_kind, "platform": platform.processor() or "",
         "jax": jax.__version__, "date": time.strftime("%Y-%m-%d", time.gmtime())}
  print(f"device {out['device']} ({jax.default_backend()}), jax {jax.__version__}", flush=True)
  if "bytes" in only:
    out["bytes"] = measure_bytes(args.width)
  if "convergence" in only:
    out["convergence"] = measure_convergence(args.steps, args.seeds, args.lr, args.hidden)
  if "step" in only:
    out["step"] = measure_step(args.width, args.rounds, args.reps)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
