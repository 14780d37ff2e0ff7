"""Which layout of the Adam step does XLA compile best? (investigation behind adam_jax.fused)

Strategies, all computing the same numbers on a tree of fp32 leaves:
  per-leaf     one elementwise update per leaf (the plain path, as optax does)
  concat       concatenate g, m, v of all leaves, update flat, split m, v and updates back
  flat-state   moments stored as one flat buffer; concatenate g, split only the updates
  one buffer   params themselves one flat buffer (the physical reference)

    python benchmarks/engine_experiments.py --size gpu
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from adam_jax import benchmarking
from adam_jax.transforms.adam import adam_leaf

LR = 1e-3


def _core(g, m, v, count):
  u, m, v, _ = adam_leaf(g, m, v, None, count, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0,
                         nesterov=False)
  return u, m, v


def per_leaf(shapes):
  def step(p, s, g):
    c, m, v = s
    c = c + 1
    out = [_core(gi, mi, vi, c) for gi, mi, vi in zip(g, m, v)]
    return [pi - LR * o[0] for pi, o in zip(p, out)], (c, [o[1] for o in out],
                                                        [o[2] for o in out])
  return step, lambda p: (jnp.zeros([], jnp.int32), [jnp.zeros_like(x) for x in p],
                          [jnp.zeros_like(x) for x in p])


def _offsets(shapes):
  sizes = [int(np.prod(s)) for s in shapes]
  return np.cumsum([0] + sizes)


def concat(shapes):
  offs = _offsets(shapes)

  def split(f):
    return [f[offs[i]:offs[i + 1]].reshape(s) for i, s in enumerate(shapes)]

  def step(p, s, g):
    c, m, v = s
    c = c + 1
    cat = lambda xs: jnp.concatenate([x.ravel() for x in xs])
    u, mf, vf = _core(cat(g), cat(m), cat(v), c)
    return [pi - LR * ui for pi, ui in zip(p, split(u))], (c, split(mf), split(vf))
  return step, per_leaf(shapes)[1]


def flat_state(shapes):
  offs = _offsets(shapes)

  def step(p, s, g):
    c, m, v = s
    c = c + 1
    u, m, v = _core(jnp.concatenate([x.ravel() for x in g]), m, v, c)
    new_p = [pi - LR * u[offs[i]:offs[i + 1]].reshape(pi.shape) for i, pi in enumerate(p)]
    return new_p, (c, m, v)
  n = int(offs[-1])
  return step, lambda p: (jnp.zeros([], jnp.int32), jnp.zeros(n), jnp.zeros(n))


def flat_state_barrier(shapes):
  offs = _offsets(shapes)

  def step(p, s, g):
    c, m, v = s
    c = c + 1
    gf = jax.lax.optimization_barrier(jnp.concatenate([x.ravel() for x in g]))
    u, m, v = _core(gf, m, v, c)
    new_p = [pi - LR * u[offs[i]:offs[i + 1]].reshape(pi.shape) for i, pi in enumerate(p)]
    return new_p, (c, m, v)
  n = int(offs[-1])
  return step, lambda p: (jnp.zeros([], jnp.int32), jnp.zeros(n), jnp.zeros(n))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", default="cpu")
  ap.add_argument("--rounds", type=int, default=15)
  args = ap.parse_args()
  bw = benchmarking.copy_bandwidth(jax.devices()[0])
  print(f"# {jax.devices()[0]} copy {bw:.0f} GB/s")
  for lname, shapes in benchmarking.layouts(args.size).items():
    n = sum(int(np.prod(s)) for s in shapes)
    rng = np.random.default_rng(0)
    g = [jnp.asarray(rng.standard_normal(s, np.float32)) for s in shapes]
    runners = {}
    strategies = [("per-leaf", per_leaf), ("concat", concat), ("flat-state", flat_state),
                  ("flat+barrier", flat_state_barrier), ("one buffer", None)]
    for name, make in strategies:
      if make is None:
        st, init = per_leaf([(n,)])
        p, gg = [jnp.asarray(rng.standard_normal(n, np.float32))], [jnp.concatenate(
            [x.ravel() for x in g])]
      else:
        st, init = make(shapes)
        p, gg = [jnp.asarray(rng.standard_normal(s, np.float32)) for s in shapes], g
      f = jax.jit(st, donate_argnums=(0, 1))
      s = init(p)
      t0 = time.perf_counter()
      p, s = f(p, s, gg)
      jax.block_until_ready(p)
      runners[name] = [f, p, s, gg, time.perf_counter() - t0, []]
    for _ in range(args.rounds):
      for r in runners.values():
        t0 = time.perf_counter()
        r[1], r[2] = r[0](r[1], r[2], r[3])
        jax.block_until_ready((r[1], r[2]))
        r[5].append(time.perf_counter() - t0)
    floor = 1e3 * 28 * n / (bw * 1e9)
    print(f"\n## {lname}: {n/1e6:.1f}M params, {len(shapes)} leaves, floor {floor:.2f} ms")
    for name, r in runners.items():
      med = 1e3 * statistics.median(r[5][2:])
      print(f"{name:<12} {med:8.2f} ms  {med/floor:5.2f}x floor  first call {r[4]:.1f} s")
      del r[:]
    runners.clear()


if __name__ == "__main__":
  main()
