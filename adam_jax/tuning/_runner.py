"""The one training loop of the tuning tools: many configurations of a problem at once.

Members (configurations x seeds) are ``jax.vmap``-ed; their hyperparameters are traced
values. Steps run in chunks, either as one ``jax.lax.scan`` per chunk or as a jitted
step called from Python: on XLA:CPU a convolution inside ``scan`` runs many times
slower than the same step called from Python, while an MLP's scan saves the per-step
dispatch. Between chunks the group's train state can be checkpointed.

Across processes (``jax.distributed``) the members are spread over one global mesh of
every process's devices: every process runs the same program on its own devices' members,
and the results are gathered with ``multihost_utils.process_allgather``, so every process
returns the whole group. Each member is computed as with one process of the same device
count (no collective mixes members), so the results agree with it to float32 rounding.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax.tuning import _memory
from adam_jax.tuning._batches import BatchStream, Prefetcher

LOOPS = ("auto", "scan", "python")


class GroupOutput(NamedTuple):
  """What :func:`train_group` returns, one entry per member."""

  params: Any  # leading axis: members
  state: Any  # non-optimized state (NNX: RNG keys, other variables), leading axis: members
  metrics: dict[str, np.ndarray]  # each shape=(members,)
  trace: Any  # per-step outputs, leaves shape=(members, steps, ...): losses (and records)
  loop: str  # the loop form used
  train_s: float  # wall time of the training loop (after compilation)
  num_devices: int  # the devices the members were spread over
  opt_state: Any = None  # the optimizer states, leading axis: members
  compile_s: float = 0.0  # wall time of lowering and compiling the programs not cached
  evals: Any = None  # with evaluation: (steps (E,), {metric: shape=(members, E)})
  best_step: np.ndarray | None = None  # with evaluation: shape=(members,), the step kept
  stopped: np.ndarray | None = None  # with patience: shape=(members,), the step it stopped at
  #   (steps when it never stopped)
  last: Any = None  # with keep="best": the last step's (params, opt_state, state), leading
  #   axis: members, to continue from (None: the same as params, opt_state, state)


class Evaluation(NamedTuple):
  """Validation during training: what :func:`train_group` evaluates, keeps and stops on."""

  every: int  # evaluate the validation metrics every this many steps (and after the last)
  metric: str  # the metric that says which step is best
  mode: str = "min"  # "min" or "max"
  keep: str = "last"  # "last": the last step's model; "best": the best evaluated step's
  patience: int | None = None  # stop a member after this many evaluations without a better one
  exploit: Any = None  # population-based training: at each evaluation before the last,
  #   ``exploit.ready(step, scores, hp) -> (source, hp)`` says which member each member
  #   copies (itself: none) and the hyperparameters every member trains with from there
  #   on; ``exploit.saved()`` / ``exploit.load(saved)`` keep its state in checkpoints


def train_group(
    fns: Any,
    make_tx: Callable[[dict[str, Any]], optax.GradientTransformation],
    hp: dict[str, np.ndarray],
    seed_pos: np.ndarray,
    seeds: Sequence[int],
    steps: int,
    *,
    train_data: Any,
    val_data: Any,
    batch_fn: Callable[..., Any] | None,
    idx: np.ndarray | None,
    loop: str = "auto",
    chunk: int | None = None,
    record: Callable[[Any], Any] | None = None,
    devices: Sequence[jax.Device] | None = None,
    checkpoint_path: str | None = None,
    resume: bool = False,
    on_steps: Callable[[int], None] | None = None,
    start: Any = None,
    first_step: int = 0,
    pad_to: int | None = None,
    programs: dict[Any, Any] | None = None,
    budget: int | None = None,
    evaluation: Evaluation | None = None,
) -> GroupOutput:
  """Trains every member of a group for ``steps`` steps and evaluates it.

  With a ``budget``, the group's programs are compiled first and XLA's memory analysis
  of them (:func:`adam_jax.tuning._memory.program_bytes`) decides how many members train
  at once: members that do not fit one program go into several of equal size, trained
  one after another, with the same results.

  Args:
    fns: the bound problem's functions (``init``, ``loss``, ``metrics``).
    make_tx: the optimizer of one member from its hyperparameters (traced scalars).
    hp: traced hyperparameters, each shape ``(members,)``.
    seed_pos: shape ``(members,)``: each member's index into ``seeds``.
    seeds: the seeds (initial params, batch order, dropout streams).
    steps: steps per member.
    train_data: the training arrays (None with ``batch_fn``).
    val_data: the evaluation arrays (or None).
    batch_fn: ``batch_fn(step, key)``, or None.
    idx: shape ``(len(seeds), steps, batch_size)`` batch indices, or None.
    loop: ``"scan"``, ``"python"`` or ``"auto"`` (see :func:`choose_loop`).
    chunk: steps per chunk (default: all of them); checkpoints go between chunks.
    record: a function of the optimizer state kept after every step.
    devices: spread the members over these devices (default: the first device).
    checkpoint_path: save the group's train state there after each chunk but the last.
    resume: start from the checkpoint at ``checkpoint_path`` when it matches.
    on_steps: called with the number of steps done after each chunk.
    start: continue from this ``(params, opt_state, state)`` (leading axis: members)
      instead of initializing; with ``first_step``, the step it was taken at.
    first_step: the first step to train (``steps`` is the step to stop at).
    pad_to: train at least this many members, the last one repeated (to run a program
      compiled for that many).
    programs: compiled programs kept across calls with the same ``fns``, ``make_tx``,
      data, ``batch_fn`` and ``record`` (a dict the caller owns): a program whose kind and
      argument shapes are there is not compiled again, and new ones are added.
    budget: the most bytes one program may need (None: no limit).
    evaluation: evaluate every ``evaluation.every`` steps (needs ``val_data``): the curves
      come back in ``GroupOutput.evals``; with ``keep="best"`` each member's params and
      state at its best evaluated step are returned (and evaluated), with ``patience`` a
      member that has not improved for that many evaluations stops changing.

  Returns:
    A :class:`GroupOutput`.

  Raises:
    adam_jax.tuning.MemoryBudgetError: one member alone needs more than ``budget``.
  """
  chunk = steps - first_step if not chunk else min(int(chunk), steps)
  if loop == "auto":
    loop = _auto_loop(fns, make_tx, hp, seed_pos, seeds, train_data, idx, batch_fn, record)
  if loop not in ("scan", "python"):
    raise ValueError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}")
  g = _Group(fns, make_tx, seeds, steps, train_data, val_data, batch_fn, idx, loop, chunk,
             record, list(devices or jax.devices()[:1]), first_step,
             {} if programs is None else programs, evaluation)
  check_devices(g.devices)
  n = len(seed_pos)
  per = n
  if budget is not None:
    per = _members_that_fit(g, hp, seed_pos, max(n, pad_to or 0), start is None, budget)
  if per >= n:
    return _train_members(g, hp, seed_pos, start, pad_to, checkpoint_path, resume, on_steps)
  parts = list(range(0, n, per))
  outs = []
  for i, lo in enumerate(parts):
    sl = slice(lo, lo + per)
    done = lambda hi, i=i: on_steps(first_step + (i * (steps - first_step) + hi - first_step)
                                    // len(parts))
    outs.append(_train_members(
        g, {k: np.asarray(v)[sl] for k, v in hp.items()}, np.asarray(seed_pos)[sl],
        None if start is None else jax.tree.map(lambda a, sl=sl: a[sl], start), per,
        None if checkpoint_path is None else os.path.join(checkpoint_path, f"part-{i}"),
        resume, None if on_steps is None else done))
  return _concat_outputs(outs)


class _Group(NamedTuple):
  """What every program of a group shares (the members aside)."""

  fns: Any
  make_tx: Callable[[dict[str, Any]], optax.GradientTransformation]
  seeds: Sequence[int]
  steps: int
  train_data: Any
  val_data: Any
  batch_fn: Callable[..., Any] | None
  idx: np.ndarray | None
  loop: str  # "scan" or "python"
  chunk: int
  record: Callable[[Any], Any] | None
  devices: list[jax.Device]
  first_step: int
  programs: dict[Any, Any]
  evaluation: Evaluation | None = None


def member_step(fns: Any, make_tx: Callable[[dict[str, Any]], optax.GradientTransformation],
                batch_fn: Callable[..., Any] | None, record: Callable[[Any], Any] | None
                ) -> Callable[..., Any]:
  """The training step of one member: the one step body of every search, ``lr_find`` and ``train``.

  ``step(carry, hp, pos, t, idx, seeds, data) -> (carry, out)``: ``carry`` is ``(params,
  opt_state, state)``; the batch of step ``t`` is ``batch_fn(t, fold_in(key(seeds[pos]),
  t))``, the rows ``idx[t, pos]`` of ``data``, or ``data`` itself when ``idx`` is None;
  the loss is passed to the optimizer as ``value=`` when it takes extra arguments
  (:func:`tx_update`); ``out`` is the loss, with ``record(opt_state)`` beside it when
  ``record`` is given.
  """
  def step(carry, hp1, pos, t, idx_all, seeds_all, data):
    params, opt_state, state = carry
    tx = make_tx(hp1)
    if batch_fn is not None:
      key = jax.random.fold_in(jax.random.key(seeds_all[pos]), t)
      batch = batch_fn(t, key)
    elif idx_all is None:  # the batch itself (from an iterable of batches)
      batch = data
    else:
      rows = idx_all[t, pos]
      batch = jax.tree.map(lambda a: a[rows], data)
    (loss, (_, state)), grads = jax.value_and_grad(fns.loss, has_aux=True)(params, state, batch)
    updates, opt_state = tx_update(tx, grads, opt_state, params, loss)
    params = optax.apply_updates(params, updates)
    out = loss if record is None else (loss, record(opt_state))
    return (params, opt_state, state), out

  return step


ACTIVE = "__active__"  # in a member's hyperparameters: False once it stopped (patience)


def _step_fn(g: _Group) -> Callable[..., Any]:
  """One training step of every member: ``jax.vmap`` of :func:`member_step`.

  A member whose hyperparameters hold ``ACTIVE`` False keeps its carry unchanged.
  """
  step = member_step(g.fns, g.make_tx, g.batch_fn, g.record)

  def gated(carry, hp1, *rest):
    active = hp1.get(ACTIVE)
    new, out = step(carry, _without_active(hp1), *rest)
    if active is not None:
      new = where_members(active, new, carry)
    return new, out

  return jax.vmap(gated, in_axes=(0, 0, 0, None, None, None, None))


def _without_active(hp: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in hp.items() if k != ACTIVE}


def where_members(mask: Any, new: Any, old: Any) -> Any:
  """``new`` where ``mask`` (per member, or a scalar inside ``vmap``), else ``old``.

  Typed PRNG keys (an NNX model's Dropout streams) are selected as their raw bits.
  """
  def pick(a, b):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      bits = pick(jax.random.key_data(a), jax.random.key_data(b))
      return jax.random.wrap_key_data(bits, impl=jax.random.key_impl(a))
    m = jnp.reshape(mask, jnp.shape(mask) + (1,) * (a.ndim - jnp.ndim(mask)))
    return jnp.where(m, a, b)

  return jax.tree.map(pick, new, old)


def copy_members(carry: Any, source: Any) -> Any:
  """Each member's carry replaced by that of member ``source[i]`` (``i``: its own).

  Params, optimizer state (moments and step count) and model state (BatchNorm
  statistics) are copied; typed PRNG keys (an NNX model's dropout streams) stay each
  member's own, so a copy and its source draw different dropout masks from there on.
  """
  def take(a):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      return a
    return jnp.take(a, source, axis=0)

  return jax.tree.map(take, carry)


def _init_fn(g: _Group) -> Callable[..., Any]:
  fns, make_tx = g.fns, g.make_tx

  def init(hp, pos, seeds_all):
    params, state = jax.tree.map(lambda a: a[pos], jax.vmap(fns.init)(seeds_all))
    opt_state = jax.vmap(lambda hp1, p: make_tx(hp1).init(p))(_without_active(hp), params)
    return params, opt_state, state

  return init


def _auto_loop(fns, make_tx, hp, seed_pos, seeds, train_data, idx, batch_fn, record) -> str:
  g = _Group(fns, make_tx, seeds, 0, train_data, None, batch_fn, idx, "scan", 0, record, [],
             0, {})
  plain = (hp, np.asarray(seed_pos, np.int32), np.asarray(seeds, np.int32))
  t_shape = jax.ShapeDtypeStruct((), jnp.int32)
  data = train_data.shapes() if isinstance(train_data, BatchStream) else train_data
  step_plain = (hp, plain[1], t_shape, None if idx is None else np.swapaxes(idx, 0, 1),
                plain[2], data)
  return choose_loop(_step_fn(g), jax.eval_shape(_init_fn(g), *plain), *step_plain)


class _Placed(NamedTuple):
  """A group's members placed on devices, with its compiled programs."""

  use: list[jax.Device]  # the devices the members are spread over
  padded: int  # members in the programs (the last one repeated)
  hp: dict[str, np.ndarray]  # padded
  seed_pos: np.ndarray  # padded
  spread: Any  # the members' sharding
  step_args: tuple[Any, ...]  # (hp, seed_pos, t, idx, seeds, data) on the devices
  val: Any  # the evaluation arrays on the devices
  carry_shape: Any
  compiled: dict[Any, Any]
  compile_s: float


def _place(g: _Group, hp: dict[str, Any], seed_pos: np.ndarray, size: int,
           with_init: bool) -> _Placed:
  """Puts ``size`` members (the last one repeated) on the devices; compiles their programs.

  Programs already in ``g.programs`` for the same shapes are taken from there.
  """
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  # Python-driven steps run on one device (of each process): dispatched one after another,
  # the collectives of steps spread over several CPU devices can wait on each other forever.
  use = (g.devices if len(g.devices) > 1 and size > 1 and g.loop == "scan"
         else one_per_process(g.devices))
  padded = -(-size // len(use)) * len(use)
  if g.evaluation is not None and g.evaluation.patience is not None:
    hp = {**hp, ACTIVE: np.ones(len(seed_pos), bool)}
  hp = {k: _pad(np.asarray(v), padded) for k, v in hp.items()}
  seed_pos = _pad(np.asarray(seed_pos, np.int32), padded)
  mesh = Mesh(np.asarray(use), ("members",))
  spread = NamedSharding(mesh, PartitionSpec("members"))
  same = NamedSharding(mesh, PartitionSpec())
  seeds_dev = jax.device_put(np.asarray(g.seeds, np.int32), same)
  put = lambda x: None if x is None else jax.device_put(x, same)
  idx_dev = None if g.idx is None else put(np.swapaxes(g.idx, 0, 1))
  stream = g.train_data if isinstance(g.train_data, BatchStream) else None
  step_args = (jax.device_put(hp, spread), jax.device_put(seed_pos, spread),
               jax.ShapeDtypeStruct((), jnp.int32), idx_dev, seeds_dev,
               None if stream is not None else put(g.train_data))
  fed = lambda length=None: jax.tree.map(  # the batches a program is fed (from a stream)
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=same), stream.shapes(length))
  val = put(g.val_data)
  init = _init_fn(g)
  as_spread = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=spread)
  carry_shape = jax.tree.map(as_spread, jax.eval_shape(init, *step_args[:2], seeds_dev))
  v_step = _step_fn(g)

  # Each program of the group is compiled in a thread as soon as it is lowered, while the
  # next one is traced: on a CPU with a few cores, compilation is most of a short search's time.
  compile_start = time.perf_counter()
  signature = (g.loop, tuple(d.id for d in use), _shapes(carry_shape, step_args, val))
  lower = {}
  if with_init:
    lower["init"] = lambda: jax.jit(init, out_shardings=spread).lower(*step_args[:2], seeds_dev)
  if g.loop == "scan":
    def scan_chunk(carry, hp1, pos, lo, idx_all, seeds_all, data, length):
      ts = lo + jnp.arange(length, dtype=jnp.int32)
      if stream is not None:  # data: the chunk's batches, stacked
        return jax.lax.scan(lambda c, tb: v_step(c, hp1, pos, tb[0], None, seeds_all, tb[1]),
                            carry, (ts, data))
      return jax.lax.scan(lambda c, t: v_step(c, hp1, pos, t, idx_all, seeds_all, data),
                          carry, ts)

    for length in {hi - lo for lo, hi in chunk_bounds(g)}:
      args = step_args if stream is None else step_args[:-1] + (fed(length),)
      lower[length] = lambda n=length, a=args: jax.jit(
          functools.partial(scan_chunk, length=n), donate_argnums=0).lower(carry_shape, *a)
  else:
    args = step_args if stream is None else step_args[:-1] + (fed(),)
    lower["step"] = lambda: jax.jit(v_step, donate_argnums=0).lower(carry_shape, *args)
  params_shape, _, state_shape = carry_shape
  lower["metrics"] = lambda: jax.jit(jax.vmap(g.fns.metrics, in_axes=(0, 0, None, None))).lower(
      params_shape, state_shape, step_args[-1], val)
  if g.evaluation is not None:
    lower["evaluate"] = lambda: jax.jit(jax.vmap(g.fns.metrics, in_axes=(0, 0, None, None))
                                        ).lower(params_shape, state_shape, None, val)
    if g.evaluation.keep == "best":
      member = jax.ShapeDtypeStruct((padded,), jnp.bool_, sharding=spread)
      lower["select"] = lambda: jax.jit(where_members).lower(member, carry_shape, carry_shape)
    if g.evaluation.exploit is not None:
      source = jax.ShapeDtypeStruct((padded,), jnp.int32, sharding=spread)
      lower["copy"] = lambda: jax.jit(copy_members, donate_argnums=0).lower(carry_shape, source)
  todo = {k: make for k, make in lower.items() if (k, signature) not in g.programs}
  g.programs.update({(k, signature): c
                     for k, c in compile_all(todo, compiler_options()).items()})
  compiled = {k: g.programs[k, signature] for k in lower}
  return _Placed(use, padded, hp, seed_pos, spread, step_args, val, carry_shape, compiled,
                 time.perf_counter() - compile_start)


def chunk_bounds(g: _Group, start: int | None = None) -> list[tuple[int, int]]:
  """The chunks ``(lo, hi)`` of steps from ``start`` (a cut; default: the first step):
  every ``g.chunk`` steps from the first, cut at every evaluation."""
  cuts = set(range(g.first_step, g.steps, g.chunk)) | {g.steps}
  if g.evaluation is not None:
    cuts |= set(range(g.evaluation.every, g.steps, g.evaluation.every))
  cuts = sorted(c for c in cuts if c >= (g.first_step if start is None else start))
  return list(zip(cuts[:-1], cuts[1:]))


def _members_that_fit(g: _Group, hp: dict[str, Any], seed_pos: np.ndarray, size: int,
                      with_init: bool, budget: int) -> int:
  """How many members one program may train within ``budget`` bytes (XLA's figures).

  XLA's figures are per device, and grow linearly with the members per device; CPU
  devices share the host's memory, so there a program's need is its figure times the
  devices it is spread over.
  """
  def per_device(placed):
    return max(_memory.program_bytes(c) for c in placed.compiled.values())

  placed = _place(g, hp, seed_pos, size, with_init)
  ndev = len(placed.use)
  shared = ndev if placed.use[0].platform == "cpu" else 1
  if per_device(placed) * shared <= budget:
    return size
  if g.evaluation is not None and g.evaluation.exploit is not None:  # one program or none
    need = per_device(placed) * shared
    raise _memory.MemoryBudgetError(
        f"the population of {size} members trains in one program (its members copy each "
        f"other) and needs {_memory.format_bytes(need)} but max_memory allows "
        f"{_memory.format_bytes(budget)}; raise max_memory, or use a smaller population, "
        "batch_size, eval_batch_size or model", need, budget)
  one = _place(g, {k: np.asarray(v)[:1] for k, v in hp.items()}, np.asarray(seed_pos)[:1],
               1, with_init)
  if per_device(one) > budget:
    raise _memory.too_large(per_device(one), budget, "one member of this group")
  k = _memory.members_per_program(per_device(placed), placed.padded // ndev, per_device(one),
                                  budget // shared)
  return max(1, k * ndev)


def _train_members(g: _Group, hp: dict[str, Any], seed_pos: np.ndarray, start: Any,
                   pad_to: int | None, checkpoint_path: str | None, resume: bool,
                   on_steps: Callable[[int], None] | None) -> GroupOutput:
  """Trains and evaluates the members in one set of programs (one after another in chunks)."""
  n = len(seed_pos)
  pl = _place(g, hp, seed_pos, max(n, pad_to or 0), start is None)
  hp, seed_pos, steps, chunk = pl.hp, pl.seed_pos, g.steps, g.chunk
  trace = jax.tree.map(lambda s: np.zeros((pl.padded, steps) + s.shape[1:], s.dtype),
                       _step_outputs(g, pl))
  compiled = pl.compiled
  track = None if g.evaluation is None else _Tracker(g, pl)

  first = g.first_step
  carry = None
  if start is not None:
    carry = jax.device_put(jax.tree.map(functools.partial(_pad, size=pl.padded), start),
                           pl.spread)
  exploit = None if g.evaluation is None else g.evaluation.exploit
  saved_like = lambda carry: {"carry": carry, "step": np.zeros((), np.int32),
                              "chunk": np.int32(chunk), "hp": hp, "seed_pos": seed_pos,
                              "trace": trace,
                              **({} if track is None else {"eval": track.saved(carry)}),
                              **({} if exploit is None else {"ready": exploit.saved(hp)})}
  if resume and checkpoint_path is not None and os.path.isdir(checkpoint_path):
    saved = _restore(checkpoint_path, saved_like(pl.carry_shape))
    if (saved is not None and int(saved["chunk"]) == chunk
        and np.array_equal(np.asarray(saved["seed_pos"]), seed_pos)
        and all(np.array_equal(np.asarray(saved["hp"][k]), hp[k]) for k in hp if k != ACTIVE)):
      carry = jax.device_put(saved["carry"], pl.spread)
      first = int(saved["step"])
      trace = jax.tree.map(np.array, saved["trace"])
      if track is not None:
        track.load(saved["eval"])
        pl = pl._replace(step_args=track.gate(pl.step_args))
      if exploit is not None:
        pl = _with_hp(pl, exploit.load(saved["ready"]))
  if carry is None:
    carry = compiled["init"](*pl.step_args[:2], pl.step_args[4])

  bounds = chunk_bounds(g, first)
  feed = None if not isinstance(g.train_data, BatchStream) else feeder(g.train_data, bounds)
  run_chunk = _chunk_runner(g, pl, feed)
  begin = time.perf_counter()
  try:
    for lo, hi in bounds:
      carry, out = run_chunk_hook(run_chunk, carry, lo, hi)
      for dst, src in zip(jax.tree.leaves(trace), jax.tree.leaves(out)):
        dst[:, lo:hi] = src
      if track is not None and track.due(hi):
        track.update(hi, carry)
        if exploit is not None and hi < steps:
          carry, pl = _exploit(exploit, track, pl, hi, carry)
        run_chunk = _chunk_runner(g, pl._replace(step_args=track.gate(pl.step_args)), feed)
      if checkpoint_path is not None and hi < steps:
        from adam_jax import checkpoint

        checkpoint.save_rotating(checkpoint_path, saved_like(carry) | {
            "step": np.int32(hi), "trace": trace})
      if on_steps is not None:
        on_steps(hi)
  finally:
    if feed is not None:
      feed.close()
  last = None
  if track is not None:
    kept = track.kept(carry)
    last, carry = (None if kept is carry else carry), kept
  params, opt_state, state = carry
  metrics = fetch(compiled["metrics"](params, state, pl.step_args[-1], pl.val))
  first_names = [k for k in ("train_loss", "val_loss") if k in metrics]
  metrics = {k: np.asarray(metrics[k])[:n] for k in first_names + [
      k for k in metrics if k not in first_names]}
  train_s = time.perf_counter() - begin
  cut = lambda a: a[:n]
  extra = {} if track is None else track.output(n)
  if last is not None:
    extra["last"] = jax.tree.map(cut, fetch(last))
  return GroupOutput(jax.tree.map(cut, fetch(params)),
                     jax.tree.map(cut, fetch(state)), metrics,
                     jax.tree.map(cut, trace), g.loop, train_s, min(len(pl.use), n),
                     jax.tree.map(cut, fetch(opt_state)), pl.compile_s, **extra)


def _exploit(exploit: Any, track: _Tracker, pl: _Placed, step: int, carry: Any
             ) -> tuple[Any, _Placed]:
  """Population-based training's exploit and explore at ``step``: members copy others'
  carries on the devices and train with the hyperparameters ``exploit`` gives."""
  scores = track.values[track.names.index(track.ev.metric), track.points.index(step)]
  current = fetch({k: v for k, v in pl.step_args[0].items() if k != ACTIVE})
  source, hp = exploit.ready(step, scores, current)
  source = np.asarray(source, np.int32)
  if not np.array_equal(source, np.arange(pl.padded)):
    carry = pl.compiled["copy"](carry, jax.device_put(source, pl.spread))
  return carry, _with_hp(pl, hp)


def _with_hp(pl: _Placed, hp: dict[str, np.ndarray]) -> _Placed:
  """``pl`` whose members train with the traced hyperparameters ``hp`` (padded)."""
  args = dict(pl.step_args[0])
  args.update(jax.device_put({k: np.asarray(v) for k, v in hp.items()}, pl.spread))
  return pl._replace(step_args=(args,) + pl.step_args[1:])


def _step_outputs(g: _Group, pl: _Placed) -> Any:
  """The shapes of one step's outputs (leading axis: members), read off a compiled program
  (a chunk's outputs have the steps first) rather than traced again."""
  if g.loop == "python":
    return pl.compiled["step"].out_info[1]
  chunks = [c for k, c in pl.compiled.items() if isinstance(k, int)]
  if chunks:
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype),
                        chunks[0].out_info[1])
  one_batch = pl.step_args if not isinstance(g.train_data, BatchStream) else (
      pl.step_args[:-1] + (g.train_data.shapes(),))
  return jax.eval_shape(_step_fn(g), pl.carry_shape, *one_batch)[1]


class _Tracker:
  """Each member's validation curve, best step (and, with ``keep="best"``, its carry there)
  and whether it still trains (``patience``)."""

  def __init__(self, g: _Group, pl: _Placed):
    ev = g.evaluation
    self.ev, self.pl, self.steps = ev, pl, g.steps
    self.points = sorted(set(range(ev.every, g.steps, ev.every)) | {g.steps})
    self.points = [p for p in self.points if p > g.first_step]
    shapes = jax.eval_shape(jax.vmap(g.fns.metrics, in_axes=(0, 0, None, None)),
                            pl.carry_shape[0], pl.carry_shape[2], None, pl.val)
    self.names = list(shapes)
    if ev.metric not in self.names:
      raise ValueError(f"metric {ev.metric!r} is not among the validation metrics "
                       f"({', '.join(self.names)}); pass val_data or metric=...")
    m = pl.padded
    self.values = np.full((len(self.names), len(self.points), m), np.nan, np.float32)
    self.best_score = np.full(m, np.inf if ev.mode == "min" else -np.inf, np.float64)
    self.best_step = np.full(m, -1, np.int32)
    self.since = np.zeros(m, np.int32)
    self.stopped = np.full(m, g.steps, np.int32)
    self.evaluated = np.zeros(len(self.points), bool)
    self.best = None  # the members' carry at their best step (keep="best"), on the devices

  def due(self, step: int) -> bool:
    return step in self.points

  def update(self, step: int, carry: Any) -> None:
    params, _, state = carry
    out = fetch(self.pl.compiled["evaluate"](params, state, None, self.pl.val))
    col = self.points.index(step)
    self.evaluated[col] = True
    for i, name in enumerate(self.names):
      self.values[i, col] = np.asarray(out[name], np.float32)
    score = np.asarray(out[self.ev.metric], np.float64)
    active = self.stopped == self.steps
    better = (score < self.best_score) if self.ev.mode == "min" else (score > self.best_score)
    better &= np.isfinite(score) & active
    self.best_score = np.where(better, score, self.best_score)
    self.best_step = np.where(better, step, self.best_step)
    self.since = np.where(better, 0, self.since + active)
    if self.ev.keep == "best" and better.any():
      mask = jax.device_put(better, self.pl.spread)
      self.best = self.pl.compiled["select"](mask, carry, carry if self.best is None
                                             else self.best)
    if self.ev.patience is not None:
      stop = active & (self.since >= self.ev.patience)
      self.stopped = np.where(stop, step, self.stopped)

  def gate(self, step_args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The step's arguments with each member's ``ACTIVE`` flag (with ``patience``)."""
    if self.ev.patience is None:
      return step_args
    active = jax.device_put(self.stopped == self.steps, self.pl.spread)
    return ({**step_args[0], ACTIVE: active},) + step_args[1:]

  def kept(self, carry: Any) -> Any:
    """The carry to return: the best step's for members that had one (``keep="best"``)."""
    if self.ev.keep != "best" or self.best is None:
      return carry
    return self.pl.compiled["select"](jax.device_put(self.best_step >= 0, self.pl.spread),
                                      self.best, carry)

  def saved(self, carry: Any) -> dict[str, Any]:
    """What a checkpoint keeps of the evaluations (``carry`` stands in for no best yet)."""
    out = {"values": self.values, "best_score": self.best_score, "best_step": self.best_step,
           "since": self.since, "stopped": self.stopped, "evaluated": self.evaluated}
    if self.ev.keep == "best":
      out["best"] = carry if self.best is None else self.best
    return out

  def load(self, saved: dict[str, Any]) -> None:
    for k in ("values", "best_score", "best_step", "since", "stopped", "evaluated"):
      setattr(self, k, np.array(saved[k]))
    if self.ev.keep == "best":
      self.best = jax.device_put(saved["best"], self.pl.spread)

  def output(self, n: int) -> dict[str, Any]:
    done = np.flatnonzero(self.evaluated)
    steps = np.asarray([self.points[i] for i in done], np.int32)
    curves = {name: self.values[j][done][:, :n].T for j, name in enumerate(self.names)}
    return {"evals": (steps, curves), "best_step": self.best_step[:n],
            "stopped": self.stopped[:n]}


def feeder(stream: BatchStream, bounds: list[tuple[int, int]]) -> Callable[[int, int], Any]:
  """``feed(lo, hi)``: the chunks' batches in order, each stacked while the previous trains."""
  if not bounds:
    return None
  pf = Prefetcher(stream, bounds[0][0])
  pf.request(*bounds[0])
  following = iter(bounds[1:])

  def feed(lo, hi):
    data = pf.take()
    nxt = next(following, None)
    if nxt is not None:
      pf.request(*nxt)
    return data

  feed.close = pf.close
  return feed


def _restore(path: str, like: dict[str, Any]) -> Any:
  """The newest intact save of a group at ``path`` (None: start over)."""
  from adam_jax import checkpoint

  try:  # the newest intact save (an older one, with a one-line warning, if it is damaged)
    return checkpoint.restore_latest(path, like=like)
  except checkpoint.CheckpointCorruptError as err:  # every save damaged: start over, say so
    warnings.warn(f"the group starts over: {err}", checkpoint.CheckpointFallbackWarning,
                  stacklevel=4)
  except checkpoint.CheckpointError:  # another grid, devices or chunk: the group starts over
    pass
  return None


def _chunk_runner(g: _Group, pl: _Placed,
                  feed: Callable[[int, int], Any] | None = None) -> Callable[..., Any]:
  """``run_chunk(carry, lo, hi) -> (carry, outputs)``: steps ``lo..hi`` of every member.

  ``feed(lo, hi)``: the stacked batches of those steps (from an iterable of batches).
  """
  compiled, args = pl.compiled, pl.step_args
  if g.loop == "scan":
    def run_chunk(carry, lo, hi):
      rest = args[3:] if feed is None else args[3:-1] + (feed(lo, hi),)
      carry, out = compiled[hi - lo](carry, args[0], args[1], np.int32(lo), *rest)
      return carry, jax.tree.map(lambda o: np.swapaxes(o, 0, 1), fetch(out))
  else:
    def run_chunk(carry, lo, hi):
      outs = []
      data = None if feed is None else feed(lo, hi)
      for t in range(lo, hi):
        rest = args[3:] if feed is None else args[3:-1] + (
            jax.tree.map(lambda a, i=t - lo: a[i], data),)
        carry, out = compiled["step"](carry, args[0], args[1], np.int32(t), *rest)
        outs.append(out)
      return carry, jax.tree.map(lambda *o: np.stack(o, axis=1), *fetch(outs))
  return run_chunk


def _concat_outputs(outs: list[GroupOutput]) -> GroupOutput:
  """The outputs of a group's parts, members in order."""
  first = outs[0]
  return GroupOutput(
      concat_members(*[o.params for o in outs]), concat_members(*[o.state for o in outs]),
      {k: np.concatenate([o.metrics[k] for o in outs]) for k in first.metrics},
      concat_members(*[o.trace for o in outs]), first.loop, sum(o.train_s for o in outs),
      max(o.num_devices for o in outs), concat_members(*[o.opt_state for o in outs]),
      sum(o.compile_s for o in outs),
      evals=None if first.evals is None else (first.evals[0], {  # the same steps in every part
          k: np.concatenate([o.evals[1][k] for o in outs]) for k in first.evals[1]}),
      **{k: None if getattr(first, k) is None else np.concatenate([getattr(o, k) for o in outs])
         for k in ("best_step", "stopped")},
      last=None if all(o.last is None for o in outs) else concat_members(*[
          (o.params, o.opt_state, o.state) if o.last is None else o.last for o in outs]))


def fetch(tree: Any) -> Any:
  """``tree``'s arrays on the host, whole: gathered from every process where they span several.

  Every process must call it with the same tree (a gather is a collective).
  """
  from jax.experimental import multihost_utils

  def get(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):  # gathered as their raw bits
        return jax.random.wrap_key_data(get(jax.random.key_data(a)),
                                        impl=jax.random.key_impl(a))
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return jax.device_get(a)

  return jax.tree.map(get, tree)


def one_per_process(devices: Sequence[jax.Device]) -> list[jax.Device]:
  """The first of ``devices`` of each process (``devices[:1]`` in a single process)."""
  first: dict[int, jax.Device] = {}
  for d in devices:
    first.setdefault(d.process_index, d)
  return list(first.values())


def check_devices(devices: Sequence[jax.Device]) -> None:
  """Refuses devices that leave out a process: every process runs each group's program."""
  if jax.process_count() == 1:
    return
  missing = sorted(set(range(jax.process_count())) - {d.process_index for d in devices})
  if missing:
    raise ValueError(f"devices must include devices of every process of this run "
                     f"({jax.process_count()} processes), got none of process "
                     f"{', '.join(map(str, missing))}; pass jax.devices() (the default)")


def compile_all(lowered: dict[Any, Any], options: dict[str, Any] | None) -> dict[Any, Any]:
  """Compiles programs in parallel threads, with XLA ``options``.

  ``lowered`` maps names to lowered programs, or to functions that lower one (called here,
  in order): each program is compiled as soon as it is lowered, so XLA compiles the first
  ones (the GIL released) while Python traces the next. On a CPU with a few cores,
  compilation is most of a short run's time; XLA compiles independent programs concurrently.
  """
  workers = max(1, min(len(lowered), os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    futures = {k: pool.submit((low() if callable(low) else low).compile, options)
               for k, low in lowered.items()}
    compiled = {k: f.result() for k, f in futures.items()}
  while _WHEN_COMPILED:
    threading.Thread(target=_WHEN_COMPILED.pop(0), daemon=True).start()
  return compiled


_WHEN_COMPILED: list[Callable[[], None]] = []


def when_compiled(work: Callable[[], None]) -> None:
  """Runs ``work`` in a thread once the next programs are compiled, while they run.

  For work that holds the GIL (imports for what follows a search, in a command): started
  earlier, it would slow down the tracing, which holds the GIL too; while XLA trains, the
  main thread waits, and on a CPU one core is often free (a small model's steps run one
  after another).
  """
  _WHEN_COMPILED.append(work)


def compiler_options() -> dict[str, Any] | None:
  """XLA options for the search's programs: level-1 backend optimization on CPU.

  A search's programs run for seconds, so their compilation is a large share of a
  small search. XLA:CPU's default level spends most of it in LLVM; at level 1 the
  digits MLP's programs compile 1.5-4x faster (its initialization, a truncated
  normal: 5.0 s -> 1.0 s on a busy 2-core CPU) with the same step time and, there,
  the same numbers (the initial params and a 1000-step search's losses bit for bit).
  In general the results agree with the default level's to float32 rounding, which
  a model can amplify as it would on another machine: a bias followed by BatchNorm
  has a gradient of pure rounding noise, which Adam normalizes into full-size steps
  (in a small CNN its value differed by 0.035 after 12 steps, the validation loss in
  eval mode by 1.6%). Level 0 changes the numbers more, so it is not used. Nothing
  changes on other backends or when ``XLA_FLAGS`` sets a level.
  """
  if jax.default_backend() != "cpu" or "xla_backend_optimization_level" in os.environ.get(
      "XLA_FLAGS", ""):
    return None
  return {"xla_backend_optimization_level": 1}


def tx_update(tx: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any,
              loss: jax.Array) -> tuple[Any, Any]:
  """``tx.update``, given the mini-batch loss as ``value=`` when ``tx`` takes extra arguments.

  optax's convention: a ``GradientTransformationExtraArgs`` (a chain, or
  :func:`adam_jax.reduce_on_plateau`) takes keyword arguments in ``update`` and passes
  them to the transformations that use them; ``reduce_on_plateau`` monitors ``value``.
  """
  if isinstance(tx, optax.GradientTransformationExtraArgs):
    return tx.update(grads, opt_state, params, value=loss)
  return tx.update(grads, opt_state, params)


def choose_loop(step: Callable[..., Any], *args: Any) -> str:
  """``"python"`` for a training step with a convolution on CPU, else ``"scan"``."""
  conv = _lowers_to_convolution(step, *args)
  return "python" if conv and jax.default_backend() == "cpu" else "scan"


def concat_members(*trees: Any) -> Any:
  """The trees' arrays concatenated along the members axis (a carry put back together).

  In NumPy, except typed PRNG key arrays (an NNX model's Dropout streams), which NumPy
  cannot hold.
  """
  return jax.tree.map(lambda *arrays: _array_module(arrays[0]).concatenate(arrays), *trees)


def _pad(a: Any, size: int) -> Any:
  """``a`` with its last row repeated to ``size`` rows (in NumPy: eager jnp compiles per shape)."""
  if len(a) == size:
    return a
  return concat_members(a, _array_module(a).repeat(a[-1:], size - len(a), axis=0))


def _array_module(a: Any) -> Any:
  """NumPy, or ``jax.numpy`` for typed PRNG key arrays, which NumPy cannot hold."""
  return jnp if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else np


def _shapes(*trees: Any) -> tuple[Any, ...]:
  """The structure, shapes and dtypes of ``trees`` (what a compiled program is for)."""
  leaves, treedef = jax.tree.flatten(trees)
  return (treedef, tuple((tuple(getattr(a, "shape", np.shape(a))),
                          str(getattr(a, "dtype", type(a)))) for a in leaves))


def run_chunk_hook(run_chunk: Callable[..., Any], carry: Any, lo: int, hi: int) -> Any:
  """Runs one chunk of steps (a seam for tests that interrupt a search)."""
  return run_chunk(carry, lo, hi)


def _lowers_to_convolution(fn: Callable[..., Any], *args: Any) -> bool:
  """Whether ``fn``'s program (a training step) contains a convolution."""
  jaxpr = jax.make_jaxpr(fn)(*args)
  return _find_primitive(jaxpr.jaxpr, "conv_general_dilated")


def _find_primitive(jaxpr: Any, name: str) -> bool:
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == name:
      return True
    for sub in _sub_jaxprs(eqn.params):
      if _find_primitive(sub, name):
        return True
  return False


def _sub_jaxprs(params: dict[str, Any]) -> list[Any]:
  out = []
  for value in params.values():
    values = value if isinstance(value, (list, tuple)) else (value,)
    for v in values:
      inner = getattr(v, "jaxpr", None)
      if inner is not None:
        out.append(inner if hasattr(inner, "eqns") else getattr(inner, "jaxpr", inner))
      elif hasattr(v, "eqns"):
        out.append(v)
  return out
