"""What feeding a search from an iterable of batches costs, against the same data as arrays.

The character-level transformer of ``search_memory.py`` (2 blocks, batch 32 windows of 64
characters), ``tuning.grid_search`` over ``--configs`` learning rates x ``--steps`` steps, the
training data given (a) as arrays (batches drawn by index inside the compiled program) and (b)
as an iterable of the same batches, in order (pulled a chunk at a time by a background thread
while the previous chunk trains, stacked and fed to the compiled chunk). Chunks of
``--chunk`` steps in both (``checkpoint_every`` into a temporary folder, so both runs pay for
the same checkpoints). Rounds alternate the two; medians of the whole wall time are reported.

Usage::

  python benchmarks/pipeline_speed.py [--configs 8] [--steps 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import search_memory  # noqa: E402

from adam_jax import tuning  # noqa: E402


class Replay:
  """A re-iterable pipeline: the given batches, in order, at every pass."""

  def __init__(self, batches):
    self.batches = batches

  def __iter__(self):
    return iter(self.batches)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", type=int, default=8)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--chunk", type=int, default=50)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  vocab, train, val = search_memory.data()
  model = search_memory.model_class(vocab, 2)
  arrays = tuning.Problem(model, search_memory.loss_fn, train, val, batch_size=32)
  idx = arrays.batch_indices(args.steps, 0)
  batches = [(train[0][i], train[1][i]) for i in idx]
  fed = tuning.Problem(model, search_memory.loss_fn, Replay(batches), val)
  space = {"learning_rate": list(np.geomspace(3e-4, 1e-2, args.configs))}
  times: dict[str, list[float]] = {"arrays": [], "iterable": []}
  for _ in range(args.rounds):
    for name, problem in (("arrays", arrays), ("iterable", fed)):
      with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        tuning.grid_search(problem, space, steps=args.steps, progress=False, out_dir=out,
                           checkpoint_every=args.chunk, devices=jax.devices()[:1])
        times[name].append(time.perf_counter() - start)
      print(f"{name:9s} {times[name][-1]:7.1f} s", flush=True)
  med = {k: statistics.median(v) for k, v in times.items()}
  result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load": os.getloadavg()[0], "jax": jax.__version__, "configs": args.configs,
            "steps": args.steps, "chunk": args.chunk, "times": times, "median": med,
            "ratio": med["iterable"] / med["arrays"]}
  print(f"median: arrays {med['arrays']:.1f} s, iterable {med['iterable']:.1f} s, "
        f"iterable / arrays {result['ratio']:.3f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
