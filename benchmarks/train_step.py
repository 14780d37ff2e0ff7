"""The optimizer's share of a whole training step (Flax NNX).

Two models: the demo's MLP (``adam_jax.tasks``, digits, 64-128-10, batch 32) and a
GPT-like NNX transformer (the parameter layout of ``adam-jax bench``'s "gpt-like":
vocabulary 8192, width 256, 6 blocks, context 512, tied embeddings; 7.0M params,
trained on random tokens, batch 2 x 64). Each is timed, interleaved round by round
in one process, as:

* ``forward+backward``: the loss and the gradients only (jitted, the gradients
  returned);
* one training step (loss, gradients, ``tx.update``, ``optax.apply_updates``;
  params and optimizer state donated) with ``adam_jax.adam`` and ``optax.adam``.
  (The float32 CPU kernel measured here until 2026-12-07 was removed.)

The optimizer's share of a step is ``(step - forward+backward) / step`` (medians).
Run ``python benchmarks/train_step.py [--rounds 30] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import adam_jax
from adam_jax.tasks import get_task


class _Block(nnx.Module):
  def __init__(self, d: int, heads: int, *, rngs: nnx.Rngs):
    self.heads = heads
    self.ln1 = nnx.LayerNorm(d, rngs=rngs)
    self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)
    self.proj = nnx.Linear(d, d, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d, rngs=rngs)
    self.up = nnx.Linear(d, 4 * d, rngs=rngs)
    self.down = nnx.Linear(4 * d, d, rngs=rngs)

  def __call__(self, x):
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
    split = lambda a: a.reshape(b, t, self.heads, d // self.heads)
    att = jax.nn.dot_product_attention(split(q), split(k), split(v), is_causal=True)
    x = x + self.proj(att.reshape(b, t, d))
    return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class _GPT(nnx.Module):
  """Token and position embeddings, pre-norm blocks, a final norm, tied output."""

  def __init__(self, vocab: int, d: int, layers: int, ctx: int, *, rngs: nnx.Rngs):
    self.tok = nnx.Embed(vocab, d, rngs=rngs)
    self.pos = nnx.Embed(ctx, d, rngs=rngs)
    self.blocks = nnx.List([_Block(d, 4, rngs=rngs) for _ in range(layers)])
    self.ln = nnx.LayerNorm(d, rngs=rngs)

  def __call__(self, tokens):
    x = self.tok(tokens) + self.pos(jnp.arange(tokens.shape[1]))
    for block in self.blocks:
      x = block(x)
    return self.tok.attend(self.ln(x))


def _gpt_problem(batch: int, seq: int, seed: int = 0):
  model = _GPT(8192, 256, 6, 512, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  tokens = np.random.default_rng(seed).integers(0, 8192, (batch, seq + 1)).astype(np.int32)

  def loss(params, tokens):
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  return params, loss, (tokens,)


def _mlp_problem():
  task = get_task("digits-mlp")
  idx = task.batch_indices(1)[0]
  return task.params, task.loss, (task.x_train[idx], task.y_train[idx])


class _Runner:
  def __init__(self, params, loss, data, tx=None):
    self.data = data
    if tx is None:  # forward and backward only
      self.fn = jax.jit(jax.value_and_grad(loss))
      self.state = (params,)
      self.call = lambda: jax.block_until_ready(self.fn(self.state[0], *self.data))
      self.call()
      return

    def step(params, opt_state, *data):
      value, grads = jax.value_and_grad(loss)(params, *data)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, value

    self.fn = jax.jit(step, donate_argnums=(0, 1))
    self.state = (jax.tree.map(jnp.copy, params), tx.init(params))

    def call():
      p, s, value = self.fn(*self.state, *self.data)
      self.state = (p, s)
      jax.block_until_ready((p, s, value))

    self.call = call
    self.call()


def run(rounds: int = 30, batch: int = 2, seq: int = 64) -> dict:
  """Times every variant on both models; returns medians (ms) and optimizer shares."""
  result = {"date": time.strftime("%Y-%m-%d"), "device": str(jax.devices()[0].device_kind),
            "devices": jax.device_count(),
            "models": {}}
  problems = {"demo MLP (9,610 params)": _mlp_problem(),
              f"GPT-like (7.0M params, batch {batch}x{seq})": _gpt_problem(batch, seq)}
  for name, (params, loss, data) in problems.items():
    runners = {
        "forward+backward": _Runner(params, loss, data),
        "adam_jax": _Runner(params, loss, data, adam_jax.adam(1e-3)),
        "optax.adam": _Runner(params, loss, data, optax.adam(1e-3)),
    }
    times = {k: [] for k in runners}
    names = list(runners)
    for r in range(rounds):
      for k in names if r % 2 == 0 else names[::-1]:
        t0 = time.perf_counter()
        runners[k].call()
        times[k].append(time.perf_counter() - t0)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    fb = med["forward+backward"]
    rows = {k: {"ms": m, "optimizer_share": None if k == "forward+backward" else (m - fb) / m}
            for k, m in med.items()}
    result["models"][name] = rows
    print(f"\n## {name}")
    for k, row in rows.items():
      share = row["optimizer_share"]
      share = "" if share is None else f"  optimizer share {share:6.1%}"
      print(f"{k:<24}{row['ms']:9.3f} ms{share}")
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--seq", type=int, default=64)
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  result = run(args.rounds, args.batch, args.seq)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
