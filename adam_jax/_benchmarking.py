"""Step-time benchmark of one Adam step: adam_jax against optax (and torch).

One process, implementations interleaved round by round, medians reported, with
the achieved bandwidth at the physical floor of 28 bytes per fp32 parameter
(read p, g, m, v; write p, m, v) next to the device's copy bandwidth measured in
the same run. Run it as ``adam-jax bench`` or ``python benchmarks/step_time.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

BYTES_PER_PARAM = 28
# Through optax's API the update is written, then read by apply_updates: 36 bytes.
OPTAX_API_BYTES_PER_PARAM = 36


def gpt_shapes(vocab: int, d: int, layers: int, ctx: int) -> list[tuple[int, ...]]:
  """Leaf shapes of a GPT-2-like model: embeddings, per-layer attention/MLP, norms."""
  shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
  for _ in range(layers):
    shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,),
               (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
  return shapes + [(d,), (d,)]


def layouts(size: str) -> dict[str, list[tuple[int, ...]]]:
  """The three layouts, at ``cpu`` scale (a few million params) or ``gpu`` scale."""
  if size == "gpu":
    return {
        "one leaf": [(2**28,)],
        "gpt2-medium-like": gpt_shapes(50257, 1024, 24, 1024),
        "1024 leaves": [(2**18,)] * 1024,
    }
  if size == "cpu":
    return {
        "one leaf": [(2**22,)],
        "gpt-like": gpt_shapes(8192, 256, 6, 512),
        "512 leaves": [(2**13,)] * 512,
    }
  raise ValueError(f"size must be 'cpu' or 'gpu', got {size!r}")


def _jax_impls(names: list[str]) -> dict[str, Callable[[], Any]]:
  import optax

  import adam_jax

  makers = {
      "adam_jax": lambda: adam_jax.adam(1e-3),
      "optax.adam": lambda: optax.adam(1e-3),
      "optax.adamw": lambda: optax.adamw(1e-3, weight_decay=1e-2),
  }
  # Any registered alias, by name: "adam_jax.adamw", "adam_jax.nadam", ...
  makers.update({f"adam_jax.{name}": (lambda name=name: adam_jax.get_optimizer(name)(1e-3))
                 for name in adam_jax.optimizers()})
  return {n: makers[n] for n in names if n in makers}


class _JaxRunner:
  """A jitted, donated step of one optimizer on one layout.

  ``loop`` > 1 runs that many steps inside one compiled program (a ``fori_loop``):
  the per-call cost of handing thousands of buffers to the runtime is then paid
  once, and the time per step is the device's. ``loop == 1`` times one call of
  the jitted step as a training loop makes it, dispatch included.
  """

  def __init__(self, tx, shapes, seed, device, loop=1):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    rng = np.random.default_rng(seed)
    self.params = [jax.device_put(jnp.asarray(rng.standard_normal(s, np.float32)), device)
                   for s in shapes]
    self.grads = [jax.device_put(jnp.asarray(rng.standard_normal(s, np.float32)), device)
                  for s in shapes]
    self.state = jax.jit(tx.init)(self.params)

    def step(params, state, grads):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    def steps(params, state, grads):
      body = lambda _, carry: step(*carry, grads)
      return jax.lax.fori_loop(0, loop, body, (params, state))

    self.loop = loop
    self.step = jax.jit(step if loop == 1 else steps, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    self.compiled = self.step.lower(self.params, self.state, self.grads).compile()
    self.compile_s = time.perf_counter() - t0
    self._jax = jax

  def run(self) -> float:
    t0 = time.perf_counter()
    self.params, self.state = self.compiled(self.params, self.state, self.grads)
    self._jax.block_until_ready((self.params, self.state))
    return (time.perf_counter() - t0) / self.loop


class _TorchRunner:
  """``torch.optim.Adam`` (foreach or fused) on the same layout."""

  def __init__(self, mode, shapes, seed, device, loop=1):
    import torch

    gen = torch.Generator().manual_seed(seed)
    self.params = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in shapes]
    for p in self.params:
      p.grad = torch.randn(p.shape, generator=gen).to(device)
    kw = {"fused": True} if mode == "fused" else {"foreach": True}
    self.opt = torch.optim.Adam(self.params, lr=1e-3, **kw)
    self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    self.compile_s = 0.0
    self.loop = loop

  def run(self) -> float:
    """Seconds per step, ``loop`` steps queued before one synchronisation."""
    self.sync()
    t0 = time.perf_counter()
    for _ in range(self.loop):
      self.opt.step()
    self.sync()
    return (time.perf_counter() - t0) / self.loop


def _cores_busy(runner: Any, seconds: float = 0.2) -> float:
  """CPU seconds of all of this process's threads per wall second, over back-to-back steps.

  How many cores one implementation keeps busy (on a GPU: the host's share of
  the wait). Measured over a fraction of a second rather than per call: the
  kernel's accounting of other threads' CPU time lags by up to a tick.
  """
  wall0, cpu0, calls = time.perf_counter(), time.process_time(), 0
  while calls < 3 or time.perf_counter() - wall0 < seconds:
    runner.run()
    calls += 1
  return (time.process_time() - cpu0) / (time.perf_counter() - wall0)


def copy_bandwidth(device, n: int = 2**26, reps: int = 10) -> float:
  """Device copy bandwidth in GB/s (bytes read plus bytes written)."""
  import jax
  import jax.numpy as jnp

  if device.platform != "cpu":
    n = max(n, 2**28)
  x = jax.device_put(jnp.ones((n,), jnp.float32), device)
  # Donated, so the output reuses the input's memory (no page faults on the CPU).
  copy = jax.jit(lambda a: a * 1.0000001, donate_argnums=0)
  x = jax.block_until_ready(copy(x))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    for _ in range(5):
      x = copy(x)
    jax.block_until_ready(x)
    times.append((time.perf_counter() - t0) / 5)
  return 8 * n / statistics.median(times) / 1e9


def run(size: str = "cpu", impls: list[str] | None = None, rounds: int = 20, warmup: int = 3,
        layout_names: list[str] | None = None, out: str | None = None, loop: int = 1) -> dict:
  """Times every implementation on every layout; returns (and writes) the results.

  Args:
    size: ``"cpu"`` (a few million params) or ``"gpu"`` (hundreds of millions).
    impls: implementation names (default: all available).
    rounds: interleaved rounds (alternately in forward and reverse order);
      medians are reported.
    warmup: untimed calls per implementation before the rounds.
    layout_names: restrict to these layouts.
    out: write the results as JSON here after each layout.
    loop: steps per timed call (see ``_JaxRunner``); 1 includes dispatch.

  Returns:
    A dict with the machine, the copy bandwidth and, per layout, per
    implementation: median ms per step, GB/s at 28 B/param, compile seconds and
    the cores kept busy (process CPU time over wall time).
  """
  import jax

  if impls is None:
    impls = ["adam_jax", "optax.adam", "optax.adamw", "torch foreach", "torch fused"]
  device = jax.devices()[0]
  torch_device = "cuda" if device.platform == "gpu" else "cpu"
  have_torch = False
  if any(i.startswith("torch") for i in impls):
    try:
      import torch  # noqa: F401

      have_torch = True
    except ImportError:
      pass
  bw = copy_bandwidth(device)
  result = {
      "date": datetime.date.today().isoformat(),
      "device": f"{device.platform}: {getattr(device, 'device_kind', platform.processor())}",
      "jax": jax.__version__,
      "copy_GBps": bw,
      "steps_per_call": loop,
      "layouts": {},
  }
  print(f"# {result['device']}  jax {jax.__version__}  copy bandwidth {bw:.1f} GB/s  "
        f"{loop} step(s) per call  {result['date']}")
  chosen = layouts(size)
  for lname, shapes in chosen.items():
    if layout_names and lname not in layout_names:
      continue
    n = sum(_prod(s) for s in shapes)
    runners = {}
    for name, make in _jax_impls(impls).items():
      runners[name] = _JaxRunner(make(), shapes, 0, device, loop=loop)
    if have_torch:
      for name in impls:
        if name.startswith("torch "):
          mode = name.split()[1]
          if mode == "fused" and torch_device == "cpu" and not _torch_cpu_fused_ok():
            continue
          runners[name] = _TorchRunner(mode, shapes, 0, torch_device, loop=loop)
    for runner in runners.values():
      for _ in range(warmup):
        runner.run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for r in range(rounds):
      # Forward, then backward: no implementation always runs right after the same one.
      for name in names if r % 2 == 0 else names[::-1]:
        times[name].append(runners[name].run())
    busy = {name: _cores_busy(runner) for name, runner in runners.items()}
    rows = {}
    for name, ts in times.items():
      med = statistics.median(ts)
      rows[name] = {
          "ms": 1e3 * med,
          "GBps_at_28B": BYTES_PER_PARAM * n / med / 1e9,
          "compile_s": runners[name].compile_s,
          "spread_ms": 1e3 * (max(ts) - min(ts)),
          "cores_busy": busy[name],
      }
    floor_ms = 1e3 * BYTES_PER_PARAM * n / (bw * 1e9)
    result["layouts"][lname] = {"params": n, "leaves": len(shapes), "floor_ms": floor_ms,
                                "floor_36B_ms": floor_ms * OPTAX_API_BYTES_PER_PARAM
                                / BYTES_PER_PARAM,
                                "impls": rows}
    _print_layout(lname, n, len(shapes), floor_ms, rows)
    del runners
    if out:
      with open(out, "w") as f:
        json.dump(result, f, indent=1)
  return result


def _torch_cpu_fused_ok() -> bool:
  import torch

  try:
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.ones(2)
    torch.optim.Adam([p], fused=True).step()
    return True
  except (RuntimeError, ValueError):
    return False


def _prod(shape) -> int:
  out = 1
  for s in shape:
    out *= s
  return out


def _print_layout(name, n, leaves, floor_ms, rows):
  ref = rows.get("optax.adam", {}).get("ms")
  print(f"\n## {name}: {n / 1e6:.1f}M params, {leaves} leaves, copy-bound floor {floor_ms:.2f} ms")
  floor36 = floor_ms * OPTAX_API_BYTES_PER_PARAM / BYTES_PER_PARAM
  print(f"{'implementation':<24}{'ms':>9}{'GB/s@28B':>10}{'x floor':>9}{'x 36B':>7}{'vs optax':>10}"
        f"{'compile s':>11}{'cores busy':>12}")
  for k, r in rows.items():
    vs = f"{ref / r['ms']:.2f}x" if ref else "-"
    print(f"{k:<24}{r['ms']:>9.2f}{r['GBps_at_28B']:>10.1f}{r['ms'] / floor_ms:>9.2f}"
          f"{r['ms'] / floor36:>7.2f}{vs:>10}"
          f"{r['compile_s']:>11.2f}{r['cores_busy']:>12.2f}")


def main(argv: list[str] | None = None) -> int:
  """Command-line entry: ``adam-jax bench`` forwards its arguments here."""
  parser = argparse.ArgumentParser(
      prog="adam-jax bench",
      description="Time one Adam step against optax (and torch when installed).",
  )
  parser.add_argument("--size", choices=["cpu", "gpu"], default=None,
                      help="layout scale; default: gpu on a GPU, else cpu")
  parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (median)")
  parser.add_argument("--impls", default=None, help="comma-separated implementations")
  parser.add_argument("--layouts", default=None, help="comma-separated layout names")
  parser.add_argument("--json", default=None, help="write results to this JSON file")
  parser.add_argument("--loop", type=int, default=1,
                      help="steps per timed call, run inside one program (1: dispatch included)")
  args = parser.parse_args(argv)
  if args.rounds < 1 or args.loop < 1:
    parser.error("--rounds and --loop must be >= 1")
  import jax

  size = args.size or ("gpu" if jax.devices()[0].platform == "gpu" else "cpu")
  run(size, args.impls.split(",") if args.impls else None, rounds=args.rounds,
      layout_names=args.layouts.split(",") if args.layouts else None, out=args.json,
      loop=args.loop)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
