"""Peak memory of a search on a small transformer, against one member trained by a user's loop.

The model: a character-level transformer in Flax NNX (an embedding, ``--blocks`` blocks of
causal self-attention and an MLP, each with LayerNorm and Dropout; about 117k parameters
at the defaults), on windows of 64 characters of English text from the standard library's
documentation (``pydoc`` pages and the Zen of Python, so nothing is downloaded): 1,207
training and 302 validation windows. Each measurement runs in a fresh process, and its
peak resident memory is the kernel's (the process's own ``ru_maxrss``):

* ``loop``: one configuration trained by what a user writes: ``nnx.Optimizer`` and an
  ``@nnx.jit`` step over the same mini-batches, then the validation loss in batches;
* ``search``: ``tuning.grid_search`` over 12 configurations x 2 seeds (learning rate x
  weight decay of ``adamw``), the default memory budget;
* ``search-1GB``: the same with ``max_memory="1GB"``: the members train in several programs
  one after another; the rows must equal those of ``search``.

Usage::

  python benchmarks/search_memory.py [--steps 100] [--out results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

WINDOW = 64
LRS = [3e-4, 1e-3, 3e-3, 1e-2]
WEIGHT_DECAYS = [0.0, 1e-2, 1e-1]


def corpus() -> str:
  """About 600k characters of English text from the standard library (no download)."""
  import codecs
  import contextlib
  import io
  import pydoc

  with contextlib.redirect_stdout(io.StringIO()):
    import this  # prints the Zen of Python when first imported

  text = codecs.decode(this.s, "rot13")
  for name in ("os", "json", "argparse", "collections", "subprocess", "functools", "typing",
               "pathlib", "re", "string", "datetime", "inspect", "unittest", "logging"):
    text += pydoc.render_doc(name, renderer=pydoc.plaintext)
  return text


def data():
  import numpy as np

  text = corpus()
  chars = sorted(set(text))
  codes = np.array([chars.index(c) for c in text], np.int32)
  n = (len(codes) - 1) // WINDOW
  starts = np.arange(n) * WINDOW
  x = np.stack([codes[s:s + WINDOW] for s in starts])
  y = np.stack([codes[s + 1:s + WINDOW + 1] for s in starts])
  rng = np.random.default_rng(0)
  order = rng.permutation(n)[:1509]
  train, val = order[:1207], order[1207:]
  return len(chars), (x[train], y[train]), (x[val], y[val])


def model_class(vocab: int, blocks: int, dim: int = 64):
  """The transformer's class: ``blocks`` blocks of width ``dim`` over ``vocab`` characters."""
  import jax.numpy as jnp
  from flax import nnx

  class Block(nnx.Module):
    def __init__(self, dim, rngs):
      self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(4, dim, decode=False, rngs=rngs)
      self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
      self.up = nnx.Linear(dim, 4 * dim, rngs=rngs)
      self.down = nnx.Linear(4 * dim, dim, rngs=rngs)
      self.drop = nnx.Dropout(0.1, rngs=rngs)

    def __call__(self, x):
      mask = nnx.make_causal_mask(jnp.ones(x.shape[:2]))
      x = x + self.drop(self.attn(self.ln1(x), mask=mask))
      return x + self.drop(self.down(nnx.gelu(self.up(self.ln2(x)))))

  class CharTransformer(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dim: int = dim):
      self.embed = nnx.Embed(vocab, dim, rngs=rngs)
      self.pos = nnx.Param(0.02 * nnx.initializers.normal()(rngs.params(), (WINDOW, dim)))
      self.blocks = nnx.List([Block(dim, rngs) for _ in range(blocks)])
      self.ln = nnx.LayerNorm(dim, rngs=rngs)
      self.head = nnx.Linear(dim, vocab, rngs=rngs)

    def __call__(self, x):
      h = self.embed(x) + self.pos[None]
      for block in self.blocks:
        h = block(h)
      return self.head(self.ln(h))

  return CharTransformer


def loss_fn(model, batch):
  import optax

  x, y = batch
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def run_loop(steps: int, blocks: int) -> dict:
  """One configuration, a user's ``nnx.jit`` loop; the validation loss in batches of 32."""
  import jax
  from flax import nnx

  import adam_jax
  from adam_jax import tuning

  vocab, train, val = data()
  model = model_class(vocab, blocks)(nnx.Rngs(0))
  params = sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param)))
  opt = nnx.Optimizer(model, adam_jax.adamw(LRS[1], weight_decay=WEIGHT_DECAYS[1]),
                      wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, batch):
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
    opt.update(model, grads)
    return loss

  @nnx.jit
  def evaluate(model, batch):
    return loss_fn(model, batch)

  problem = tuning.Problem(model_class(vocab, blocks), loss_fn, train, val, batch_size=32)
  start = time.perf_counter()
  for rows in problem.batch_indices(steps, 0):
    step(model, opt, (train[0][rows], train[1][rows]))
  model.eval()
  total = sum(len(val[0][lo:lo + 32]) * float(evaluate(model, (val[0][lo:lo + 32],
                                                                 val[1][lo:lo + 32])))
              for lo in range(0, len(val[0]), 32))
  return {"params": int(params), "val_loss": total / len(val[0]),
          "wall_s": time.perf_counter() - start}


def run_search(steps: int, blocks: int, max_memory: str | None) -> dict:
  import importlib

  from adam_jax import tuning

  runner = importlib.import_module("adam_jax.tuning._runner")
  sizes = []
  train_members = runner._train_members
  runner._train_members = lambda g, hp, pos, *a: sizes.append(len(pos)) or train_members(
      g, hp, pos, *a)
  vocab, train, val = data()
  problem = tuning.Problem(model_class(vocab, blocks), loss_fn, train, val, batch_size=32)
  start = time.perf_counter()
  result = tuning.grid_search(problem, {"learning_rate": LRS, "weight_decay": WEIGHT_DECAYS},
                              optimizer="adamw", steps=steps, seeds=2, progress=False,
                              max_memory=max_memory)
  return {"wall_s": time.perf_counter() - start, "programs": sizes,
          "rows": [{"config": r.config, "val_loss": r.metrics["val_loss"],
                    "train_loss": r.metrics["train_loss"]} for r in result.rows],
          "best": result.best.config, "best_val_loss": result.best.metrics["val_loss"]}


def child(argv: list[str]) -> None:
  mode, steps, blocks = argv[0], int(argv[1]), int(argv[2])
  if mode == "loop":
    out = run_loop(steps, blocks)
  else:
    out = run_search(steps, blocks, None if mode == "search" else mode.split("-", 1)[1])
  out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps(out))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--blocks", type=int, default=2)
  parser.add_argument("--modes", default="loop,search,search-1GB")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  import jax

  results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
             "jax": jax.__version__, "steps": args.steps, "blocks": args.blocks, "runs": {}}
  for mode in args.modes.split(","):
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(args.steps),
                           str(args.blocks)], capture_output=True, text=True, check=False)
    if proc.returncode:
      print(proc.stderr[-3000:], file=sys.stderr)
      raise SystemExit(f"{mode} failed")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    results["runs"][mode] = out
    print(f"{mode:12s} peak RSS {out['peak_rss_mib']:8.0f} MiB  "
          f"wall {out['wall_s']:7.1f} s  " + (f"programs {out['programs']}" if "programs" in out
                                               else f"params {out['params']:,}"), flush=True)
    if args.out:
      with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
  runs = results["runs"]
  if "search" in runs and "search-1GB" in runs:
    diff = max(abs(a["val_loss"] - b["val_loss"]) / abs(a["val_loss"])
               for a, b in zip(runs["search"]["rows"], runs["search-1GB"]["rows"]))
    print(f"largest relative val_loss difference, one program vs several: {diff:.2e}")


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == "--child":
    child(sys.argv[2:])
  else:
    main()
