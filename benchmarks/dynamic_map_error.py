"""Quantization error of adam_jax's 8-bit dynamic maps against bitsandbytes' maps.

    python benchmarks/dynamic_map_error.py            # about 20 s on 2 CPU cores
    python benchmarks/dynamic_map_error.py --json out.json

Both libraries code a value as ``[sign] 0…0 1 f…f``: the leading zeros are a decade,
the bits after the first one a linear fraction of that decade's range (0.1, 1]. They
differ in which value a code stands for:

* adam_jax (``adam_jax.quantization.dynamic_map``): the *upper edge* of each of the
  decade's ``2**b`` cells, ``10**-e * (0.1 + 0.9 * k / 2**b)`` for ``k = 1 … 2**b``,
  so the block maximum (±1) is exact for both signs, and code 0 is exactly 0. The
  signed map has 7 decades (down to 1e-6), the unsigned map 8 (down to 1e-7).
* bitsandbytes (``create_dynamic_map``, as its docstring and the papers describe it;
  rebuilt here from that description, bitsandbytes is not needed): the *centre* of each
  cell of ``linspace(0.1, 1, 2**i + 1)`` (signed) or ``linspace(0.1, 1, 2**(i+1) + 1)``
  (unsigned) in decade ``10**(i-6)``, ``i = 0 … 6``, for both signs when signed, plus 0
  and +1.0 appended (so -1 is not exact in the signed map).

Each map quantizes the same moments, blocks of 256 scaled by their absolute maximum,
each value rounded to the nearest code (bitsandbytes' rule, and adam_jax's:
``adam_jax.quantization.quantize`` is measured for adam_jax's map, and a plain
nearest-value search for both as a cross-check). The moments are Adam's, simulated:
``m`` and ``v`` after 300 steps (b1 = 0.9, b2 = 0.999) of heavy-tailed gradients
(Student-t, 3 degrees of freedom) whose scale varies log-normally from parameter to
parameter (sigma 1; 1.5 for the wide case), in rows of 256 parameters that share one
scale per row or not. Reported per map: mean relative error over the nonzero values,
max relative error over the values of at least 1e-3 of their block's maximum (smaller
ones may round to 0: 100%), mean error relative to the block maximum, the same for each
block's largest element, and the fraction of nonzero values stored as 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax.numpy as jnp
import numpy as np

from adam_jax import quantization

BLOCK = 256


def bitsandbytes_map(signed: bool) -> np.ndarray:
  """bitsandbytes' dynamic map, 256 sorted values, built from its documented construction."""
  values = [0.0, 1.0]
  for i in range(7):  # decades 1e-6 … 1e0, the cells doubling from one to the next
    cells = 2**i if signed else 2 ** (i + 1)
    edges = np.linspace(0.1, 1.0, cells + 1)
    centres = 10.0 ** (i - 6) * (edges[:-1] + edges[1:]) / 2
    values += centres.tolist()
    if signed:
      values += (-centres).tolist()
  values = np.sort(np.asarray(values, np.float64))
  assert values.size == 256, values.size
  return values.astype(np.float32)


def nearest(x: np.ndarray, table: np.ndarray) -> np.ndarray:
  """Each element of ``x`` (already divided by its block's scale) rounded to ``table``."""
  table = np.unique(table.astype(np.float64))
  i = np.clip(np.searchsorted(table, x), 1, table.size - 1)
  lo, hi = table[i - 1], table[i]
  return np.where(np.abs(x - lo) <= np.abs(hi - x), lo, hi)


def blockwise(x: np.ndarray, table: np.ndarray) -> np.ndarray:
  """Blockwise absmax scaling and nearest-code rounding; returns the dequantized values."""
  blocks = x.reshape(-1, BLOCK).astype(np.float64)
  scale = np.abs(blocks).max(axis=1, keepdims=True)
  scale = np.where(scale > 0, scale, 1.0)
  return (nearest(blocks / scale, table) * scale).reshape(x.shape)


def adam_jax_codec(x: np.ndarray, signed: bool) -> np.ndarray:
  """adam_jax's own quantize + dequantize (the codec the 8-bit optimizers use)."""
  q = quantization.quantize(jnp.asarray(x, jnp.float32), signed=signed, block_size=BLOCK)
  return np.asarray(quantization.dequantize(q, signed=signed, shape=x.shape), np.float64)


def moments(rows: int, sigma: float, per_row: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Adam's m and v after 300 steps of heavy-tailed gradients with varied scales."""
  rng = np.random.default_rng(seed)
  shape = (rows, 1) if per_row else (rows, BLOCK)
  scale = np.exp(sigma * rng.standard_normal(shape)).astype(np.float32)
  m = np.zeros((rows, BLOCK), np.float32)
  v = np.zeros((rows, BLOCK), np.float32)
  for _ in range(300):
    g = scale * rng.standard_t(3, (rows, BLOCK)).astype(np.float32)
    m = np.float32(0.9) * m + np.float32(0.1) * g
    v = np.float32(0.999) * v + np.float32(0.001) * g * g
  return m, v


def errors(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
  x = x.astype(np.float64)
  nz = x != 0
  rel = np.abs(y[nz] - x[nz]) / np.abs(x[nz])
  block_max = np.abs(x).reshape(-1, BLOCK).max(axis=1, keepdims=True)
  to_max = np.abs(y - x).reshape(-1, BLOCK) / np.where(block_max > 0, block_max, 1.0)
  large = np.abs(x) >= 1e-3 * np.broadcast_to(block_max, (block_max.size, BLOCK)).reshape(x.shape)
  top = np.argmax(np.abs(x).reshape(-1, BLOCK), axis=1)
  at_max = np.take_along_axis(to_max, top[:, None], axis=1)
  return {"mean_rel": float(rel.mean()),
          "max_rel_above_1e-3": float((np.abs(y - x)[large] / np.abs(x[large])).max()),
          "mean_rel_to_block_max": float(to_max.mean()),
          "block_max_rel": float(at_max.mean()),
          "flushed_to_zero": float(np.mean(y[nz] == 0))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=1024, help="rows of 256 parameters")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", help="also write the results to this file")
  args = parser.parse_args()
  start = time.perf_counter()
  cases = {"elementwise scales, sigma 1": (1.0, False),
           "elementwise scales, sigma 1.5": (1.5, False),
           "one scale per row, sigma 1": (1.0, True)}
  maps = {signed: {"adam_jax": quantization.dynamic_map(signed), "bitsandbytes":
                   bitsandbytes_map(signed)} for signed in (True, False)}
  results = {}
  print(f"{'':<4} {'distribution':<30} {'map':<19} {'mean rel':>8} {'max rel*':>8} "
        f"{'err/absmax':>10} {'absmax err':>10} {'to zero':>8}")
  for case, (sigma, per_row) in cases.items():
    m, v = moments(args.rows, sigma, per_row, args.seed)
    for moment, x, signed in (("m", m, True), ("v", v, False)):
      rows = {
          "adam_jax (codec)": adam_jax_codec(x, signed),
          "adam_jax (nearest)": blockwise(x, maps[signed]["adam_jax"]),
          "bitsandbytes": blockwise(x, maps[signed]["bitsandbytes"]),
      }
      for name, y in rows.items():
        e = errors(x, y)
        results[f"{moment} | {case} | {name}"] = e
        print(f"{moment:<4} {case:<30} {name:<19} {e['mean_rel']:>8.3%} "
              f"{e['max_rel_above_1e-3']:>8.3%} {e['mean_rel_to_block_max']:>10.2e} "
              f"{e['block_max_rel']:>10.2e} {e['flushed_to_zero']:>8.3%}")
  print(f"* over values of at least 1e-3 of their block's absmax. err/absmax: mean error "
        f"relative to the block's absmax; absmax err: the same for each block's largest "
        f"element. ({time.perf_counter() - start:.1f} s, {platform.machine()}, "
        f"{args.rows * BLOCK} values per moment)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": args.rows, "seed": args.seed, "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
