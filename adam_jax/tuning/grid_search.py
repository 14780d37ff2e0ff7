"""Grid search over Adam's hyperparameters: one compiled, vmapped program per model shape."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import aliases, numerics, schedules

SCHEDULES = ("constant", "cosine", "step", "exponential")
# Hyperparameters that only change values: vmapped (traced) within one compiled program.
VALUE_AXES = ("lr", "b1", "b2", "eps", "weight_decay", "schedule")
# Hyperparameters that change shapes: looped over, one compilation each.
SHAPE_AXES = ("layers", "hidden", "batch_size")
AXES = VALUE_AXES + SHAPE_AXES
COLUMNS = AXES + ("train_loss", "val_loss", "val_accuracy")
OPTIMIZERS = ("adam", "adamw")

_CSV = "results.csv"
_CURVES = "curves.jsonl"
_META = "sweep.json"


class SweepRow(NamedTuple):
  """One trained configuration."""

  config: dict[str, Any]  # one value per name in AXES
  train_loss: float  # loss on the whole training split after the last step
  val_loss: float  # loss on the validation split after the last step
  val_accuracy: float | None  # None for the autoencoder
  curve: np.ndarray | None  # shape=(steps,), dtype=float32 mini-batch losses; None if not kept
  # With diagnostics: columns for adam_jax.diagnostics.plot_history, each shape=(steps,).
  diagnostics: dict[str, np.ndarray] | None = None


class GridSearchResult(NamedTuple):
  """What :func:`grid_search` returns."""

  rows: list[SweepRow]  # every configuration of the grid, in grid order
  best: SweepRow  # the row with the lowest validation loss
  num_devices: int  # the most devices one compiled group was spread over


def schedule_fn(kind: Any, lr: Any, steps: int) -> Callable[[jax.Array], jax.Array]:
  """The learning-rate schedule named ``kind`` over a run of ``steps`` steps.

  * ``constant``: ``lr`` throughout.
  * ``cosine``: cosine decay from ``lr`` to 0 at the last step
    (:func:`adam_jax.schedules.cosine_annealing`).
  * ``step``: ``lr`` times 0.1 after each third of the run
    (:func:`adam_jax.schedules.step_decay`).
  * ``exponential``: ``lr * gamma**k`` with ``gamma`` reaching 0.01 at the last
    step (:func:`adam_jax.schedules.exponential_lr`).

  ``lr`` may be a traced value and ``kind`` a traced index into :data:`SCHEDULES`
  (the four schedules are evaluated and one is selected), so schedules can be
  vmapped over like any other hyperparameter.

  Args:
    kind: a name in :data:`SCHEDULES`, or an (possibly traced) index into it.
    lr: the initial (peak) learning rate.
    steps: the length of the run.

  Returns:
    A schedule, a callable of the step count.
  """
  if isinstance(kind, str):
    if kind not in SCHEDULES:
      raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    return _schedule(kind, lr, steps)
  fns = [_schedule(name, lr, steps) for name in SCHEDULES]
  return lambda count: jnp.stack([f(count) for f in fns])[kind]


def _schedule(kind: str, lr: Any, steps: int) -> Callable[[jax.Array], jax.Array]:
  lr32 = jnp.asarray(lr, jnp.float32)
  if kind == "constant":
    return lambda count: lr32
  if kind == "cosine":
    def cosine(count):
      frac = jnp.minimum(count.astype(jnp.float32), float(steps)) / float(steps)
      return lr32 * (0.5 * (1.0 + jnp.cos(math.pi * frac)))
    return cosine
  if kind == "step":
    fn = schedules.step_decay(lr, max(1, steps // 3), 0.1)
  else:
    fn = schedules.exponential_lr(lr, 0.01 ** (1.0 / max(1, steps - 1)))
  return lambda count: jnp.asarray(fn(count), jnp.float32)


def make_optimizer(optimizer: str, hp: dict[str, Any], steps: int) -> optax.GradientTransformation:
  """``adam`` (coupled L2 weight decay) or ``adamw`` (decoupled) from one configuration.

  Values in ``hp`` may be Python numbers (compile-time constants) or traced arrays.

  Args:
    optimizer: ``"adam"`` or ``"adamw"``.
    hp: the configuration: ``lr``, ``b1``, ``b2``, ``eps``, ``weight_decay`` and
      ``schedule`` (a name or an index, see :func:`schedule_fn`).
    steps: the length of the run (for the schedule).

  Returns:
    An ``optax.GradientTransformation``.
  """
  if hp["schedule"] == "constant":
    lr = hp["lr"]
  else:
    lr = schedule_fn(hp["schedule"], hp["lr"], steps)
  factory = aliases.adam if optimizer == "adam" else aliases.adamw
  return factory(lr, b1=hp["b1"], b2=hp["b2"], eps=hp["eps"], weight_decay=hp["weight_decay"])


def _grid(values: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
  return [dict(zip(AXES, combo)) for combo in itertools.product(*(values[a] for a in AXES))]


def _key(config: dict[str, Any]) -> tuple[Any, ...]:
  return tuple(
      config[a] if a == "schedule" else (int(config[a]) if a in SHAPE_AXES else float(config[a]))
      for a in AXES
  )


def _check_values(values: dict[str, Sequence[Any]]) -> dict[str, list[Any]]:
  out: dict[str, list[Any]] = {}
  for name in AXES:
    seq = values[name]
    seq = [seq] if isinstance(seq, (str, int, float)) else list(seq)
    if not seq:
      raise ValueError(f"{name} needs at least one value")
    if len(set(seq)) != len(seq):
      raise ValueError(f"{name} has repeated values: {seq}")
    for v in seq:
      if name == "schedule":
        if v not in SCHEDULES:
          raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {v!r}")
      elif name in SHAPE_AXES:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
          raise ValueError(f"{name} must be a positive integer, got {v!r}")
      elif name == "lr":
        numerics.check_range("lr", v, 0.0, None, low_inclusive=False)
      elif name in ("b1", "b2"):
        numerics.check_betas(**{name: v})
      else:
        numerics.check_nonnegative(**{name: v})
    out[name] = [v if name == "schedule" else (int(v) if name in SHAPE_AXES else float(v))
                 for v in seq]
  return out


def monitor_record(opt_state: Any) -> Any:
  """What is kept of a :func:`adam_jax.diagnostics.monitor` state after each step."""
  return opt_state.stats


def monitor_columns(stats: Any, first_step: int = 1) -> dict[str, np.ndarray]:
  """Stacked monitor statistics (leading axis: steps) as columns for ``plot_history``.

  Columns: ``step``, ``update_to_param_ratio`` (over all leaves),
  ``eps_dominated_fraction`` and ``update_to_param_ratio/<leaf path>``.
  """
  overall = getattr(stats, "global_update_to_param_ratio", None)
  per_leaf = getattr(stats, "per_leaf", None)
  if overall is None:
    overall = stats.update_to_param_ratio
  overall = np.asarray(overall, np.float64).reshape(-1)
  cols = {"step": np.arange(first_step, first_step + len(overall), dtype=np.float64),
          "update_to_param_ratio": overall,
          "eps_dominated_fraction": np.asarray(stats.eps_dominated_fraction, np.float64)}
  if per_leaf is not None:
    leaves = {k: v for k, v in per_leaf.as_dict().items()
              if k.startswith("update_to_param_ratio/")}
  else:
    leaves = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(stats.update_to_param_ratio)[0]:
      name = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                      for k in path)
      leaves[f"update_to_param_ratio/{name}"] = leaf
  cols.update({k: np.asarray(v, np.float64).reshape(-1) for k, v in leaves.items()})
  return cols


def _value_program(task: Any, steps: int, optimizer: str, const: dict[str, Any],
                   traced: tuple[str, ...], diagnostics: bool = False) -> Callable[..., Any]:
  """The training run of one configuration; ``traced`` hyperparameters are arguments."""

  def run(hp_traced, params, idx, x, y, x_val, y_val):
    hp = dict(const)
    for name in traced:
      hp[name] = hp_traced[name]
    tx = make_optimizer(optimizer, hp, steps)
    record = None
    if diagnostics:
      from adam_jax.diagnostics import monitor

      tx = monitor(tx, eps=hp["eps"], b2=hp["b2"])
      record = monitor_record
    params, _, out = _fit(task, tx, params, tx.init(params), idx, x, y, record=record)
    curve, records = out if diagnostics else (out, None)
    train_loss, _ = task.evaluate(params, x, y)
    val_loss, val_acc = task.evaluate(params, x_val, y_val)
    return curve, train_loss, val_loss, val_acc, records

  return run


def _fit(task, tx, params, opt_state, idx, x, y, record=None):
  from adam_jax.tasks import fit

  return fit(task, tx, params, opt_state, idx, x, y, record=record)


def _traced_values(configs: list[dict[str, Any]], traced: tuple[str, ...]) -> dict[str, np.ndarray]:
  out = {}
  for name in traced:
    if name == "schedule":
      out[name] = np.array([SCHEDULES.index(c[name]) for c in configs], np.int32)
    else:
      out[name] = np.array([c[name] for c in configs], np.float32)
  return out


class _Store:
  """results.csv (one row per configuration, flushed as it finishes) and curves.jsonl."""

  def __init__(self, out_dir: str, meta: dict[str, Any], resume: bool):
    os.makedirs(out_dir, exist_ok=True)
    self.csv_path = os.path.join(out_dir, _CSV)
    self.curves_path = os.path.join(out_dir, _CURVES)
    meta_path = os.path.join(out_dir, _META)
    self.done: dict[tuple[Any, ...], SweepRow] = {}
    if resume and os.path.exists(self.csv_path):
      if os.path.exists(meta_path):
        with open(meta_path) as f:
          old = json.load(f)
        diff = [k for k in meta if old.get(k) != meta[k]]
        if diff:
          k = diff[0]
          raise ValueError(f"cannot resume: {out_dir} holds a sweep with {k}={old.get(k)!r}, "
                           f"this one has {k}={meta[k]!r}")
      self.done = _read_rows(self.csv_path, self.curves_path)
      self._rewrite()
    else:
      for path in (self.csv_path, self.curves_path):
        if os.path.exists(path):
          os.remove(path)
      with open(self.csv_path, "w", newline="") as f:
        csv.writer(f).writerow(COLUMNS)
    with open(meta_path, "w") as f:
      json.dump(meta, f, indent=2)

  def _rewrite(self) -> None:
    """Rewrites the files from the rows read back (drops a row cut off by an interrupt)."""
    rows = list(self.done.values())
    with open(self.csv_path, "w", newline="") as f:
      csv.writer(f).writerow(COLUMNS)
    open(self.curves_path, "w").close()
    for row in rows:
      self.add(row)

  def add(self, row: SweepRow) -> None:
    acc = "" if row.val_accuracy is None else repr(row.val_accuracy)
    fields = [row.config[a] for a in AXES] + [repr(row.train_loss), repr(row.val_loss), acc]
    with open(self.csv_path, "a", newline="") as f:
      csv.writer(f).writerow(fields)
    if row.curve is not None:
      with open(self.curves_path, "a") as f:
        f.write(json.dumps({"key": list(_key(row.config)),
                            "curve": [float(v) for v in row.curve]}) + "\n")


def _read_rows(csv_path: str, curves_path: str) -> dict[tuple[Any, ...], SweepRow]:
  """Rows of a results.csv written earlier, keyed by configuration; broken lines are dropped."""
  curves: dict[tuple[Any, ...], np.ndarray] = {}
  if os.path.exists(curves_path):
    with open(curves_path) as f:
      for line in f:
        try:
          item = json.loads(line)
          curves[tuple(item["key"])] = np.asarray(item["curve"], np.float32)
        except (ValueError, KeyError, TypeError):
          continue
  rows: dict[tuple[Any, ...], SweepRow] = {}
  with open(csv_path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
      return rows
    if tuple(header) != COLUMNS:
      raise ValueError(f"cannot resume: {csv_path} does not have the columns {','.join(COLUMNS)}")
    for fields in reader:
      if len(fields) != len(COLUMNS):
        continue
      try:
        config = {a: (v if a == "schedule" else (int(v) if a in SHAPE_AXES else float(v)))
                  for a, v in zip(AXES, fields)}
        tr, va, acc = float(fields[-3]), float(fields[-2]), fields[-1]
        row = SweepRow(config, tr, va, float(acc) if acc else None, None)
      except ValueError:
        continue
      key = _key(config)
      rows[key] = row._replace(curve=curves.get(key))
  return rows


def grid_search(
    task: str = "digits-mlp",
    *,
    lr: Sequence[float] = (1e-3,),
    b1: Sequence[float] = (0.9,),
    b2: Sequence[float] = (0.999,),
    eps: Sequence[float] = (1e-8,),
    weight_decay: Sequence[float] = (0.0,),
    schedule: Sequence[str] = ("constant",),
    layers: Sequence[int] = (1,),
    hidden: Sequence[int] = (128,),
    batch_size: Sequence[int] = (32,),
    steps: int = 1000,
    optimizer: str = "adam",
    seed: int = 0,
    data: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    sequential: bool = False,
    devices: Sequence[jax.Device] | None = None,
    on_row: Callable[[SweepRow], None] | None = None,
    on_group: Callable[[dict[str, int], int], None] | None = None,
    diagnostics: bool = False,
) -> GridSearchResult:
  r"""Trains every configuration of a hyperparameter grid on an embedded task.

  For each model shape (``layers`` x ``hidden`` x ``batch_size``) one program is
  compiled that trains all value configurations (``lr``, ``b1``, ``b2``, ``eps``,
  ``weight_decay``, ``schedule``) at once: the optimizer is built inside a
  ``jax.vmap``-ed function whose hyperparameters are traced values, and the
  steps run in ``jax.lax.scan``. A hyperparameter with a single value is a
  compile-time constant. When several devices are given (default: all of
  ``jax.devices()``), the configuration axis is sharded over a 1-D mesh of them.

  Every configuration starts from the same initial params and sees the same
  mini-batches (both from ``seed``), so rows differ only by their hyperparameters.

  Args:
    task: ``"digits-mlp"`` or ``"digits-autoencoder"`` (see :mod:`adam_jax.tasks`).
    lr: peak learning rates (> 0).
    b1: first-moment decay rates, in [0, 1).
    b2: second-moment decay rates, in [0, 1).
    eps: denominators' eps (>= 0).
    weight_decay: weight decay (>= 0): coupled L2 for ``adam``, decoupled for ``adamw``.
    schedule: names from :data:`SCHEDULES` (see :func:`schedule_fn`).
    layers: hidden layers of the model.
    hidden: units per hidden layer.
    batch_size: mini-batch sizes.
    steps: optimizer steps per configuration.
    optimizer: ``"adam"`` or ``"adamw"``.
    seed: seeds the split, the initial params and the batch order.
    data: optional ``.npz`` with the user's arrays (see :func:`adam_jax.tasks.get_task`).
    out_dir: if given, ``results.csv`` (columns :data:`COLUMNS`) and ``curves.jsonl``
      are written there, a row as soon as its configuration finishes, so an
      interrupted search keeps what it finished.
    resume: with ``out_dir``, skip configurations already in its ``results.csv``.
    sequential: train one configuration at a time (one compiled program per shape,
      hyperparameters as arguments; for comparison and debugging).
    devices: devices to spread configurations over (default ``jax.devices()``).
    on_row: called with each new :class:`SweepRow` as it finishes.
    on_group: called before each compiled group with its shape and number of configurations.
    diagnostics: wrap each optimizer in :func:`adam_jax.diagnostics.monitor` and keep,
      for every step, the update-to-param ratios and the eps-dominated fraction in
      ``SweepRow.diagnostics`` (not written to ``out_dir``).

  Returns:
    A :class:`GridSearchResult`; ``best`` has the lowest validation loss.

  Raises:
    ValueError: an out-of-range or repeated value, or a resume that does not match.

  Examples:
    >>> from adam_jax.tuning import grid_search
    >>> result = grid_search(lr=[1e-3, 1e-2], hidden=[16], steps=50)
    >>> [row.config["lr"] for row in result.rows], result.best.config["lr"]
    ([0.001, 0.01], 0.01)
  """
  from adam_jax.tasks import get_task

  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"steps must be a positive integer, got {steps!r}")
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
  if resume and out_dir is None:
    raise ValueError("resume needs out_dir, the folder of the search to resume")
  values = _check_values(dict(lr=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                              schedule=schedule, layers=layers, hidden=hidden,
                              batch_size=batch_size))
  devices = list(jax.devices() if devices is None else devices)
  get_task(task, layers=values["layers"][0], hidden=values["hidden"][0],  # fail early
           batch_size=max(values["batch_size"]), seed=seed, data=data)
  store = None
  if out_dir is not None:
    meta = {"task": task, "steps": int(steps), "optimizer": optimizer, "seed": int(seed),
            "data": None if data is None else os.fspath(data)}
    store = _Store(os.fspath(out_dir), meta, resume)
  done = {} if store is None else store.done

  grid = _grid(values)
  traced = tuple(a for a in VALUE_AXES if len(values[a]) > 1)
  const = {a: values[a][0] for a in VALUE_AXES if len(values[a]) == 1}
  results: dict[tuple[Any, ...], SweepRow] = {}
  spread = 1
  for shape in itertools.product(*(values[a] for a in SHAPE_AXES)):
    shape_cfg = dict(zip(SHAPE_AXES, shape))
    configs = [c for c in grid if all(c[a] == shape_cfg[a] for a in SHAPE_AXES)]
    todo = [c for c in configs if _key(c) not in done]
    results.update({_key(c): done[_key(c)] for c in configs if _key(c) in done})
    if not todo:
      continue
    if on_group is not None:
      on_group(shape_cfg, len(todo))
    t = get_task(task, seed=seed, data=data, **shape_cfg)
    program = _value_program(t, steps, optimizer, const, traced, diagnostics)
    args = (t.params, t.batch_indices(steps, seed), t.x_train, t.y_train, t.x_val, t.y_val)
    if sequential:
      outs = _run_sequential(program, todo, traced, args)
    else:
      outs = _run_vectorized(program, todo, traced, args, devices)
      spread = max(spread, len(devices) if len(todo) > 1 else 1)
    for config, (curve, tr, va, acc, records) in outs:
      row = SweepRow(config, float(tr), float(va), float(acc) if t.classification else None,
                     np.asarray(curve, np.float32),
                     None if records is None else monitor_columns(records))
      results[_key(config)] = row
      if store is not None:
        store.add(row)
      if on_row is not None:
        on_row(row)
  rows = [results[_key(c)] for c in grid]
  best = min(rows, key=lambda r: r.val_loss if math.isfinite(r.val_loss) else math.inf)
  return GridSearchResult(rows, best, spread)


def _run_sequential(program, todo, traced, args):
  step = jax.jit(program)
  hp = _traced_values(todo, traced)
  for i, config in enumerate(todo):
    out = step({name: hp[name][i] for name in traced}, *args)
    yield config, jax.device_get(out)


def _run_vectorized(program, todo, traced, args, devices):
  n = len(todo)
  hp = _traced_values(todo, traced)
  fn = jax.vmap(program, in_axes=(0,) + (None,) * len(args))
  if len(devices) > 1 and n > 1:
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    padded = -(-n // len(devices)) * len(devices)
    hp = {k: np.concatenate([v, np.repeat(v[-1:], padded - n)]) for k, v in hp.items()}
    mesh = Mesh(np.asarray(devices), ("configs",))
    spread = NamedSharding(mesh, PartitionSpec("configs"))
    same = NamedSharding(mesh, PartitionSpec())
    hp = jax.device_put(hp, spread)
    args = jax.device_put(args, same)
    fn = jax.jit(fn, out_shardings=spread)
  else:
    fn = jax.jit(fn)
  curves, tr, va, acc, records = jax.device_get(fn(hp, *args))
  for i, config in enumerate(todo):
    mine = None if records is None else jax.tree.map(lambda r, i=i: r[i], records)
    yield config, (curves[i], tr[i], va[i], acc[i], mine)
