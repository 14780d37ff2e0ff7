"""Grid search over Adam's hyperparameters: one compiled, vmapped program per model shape."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import _numerics as numerics
from adam_jax import aliases, schedules
from adam_jax._tree import path_name

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
_CHECKPOINTS = "checkpoints"


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
  r"""The learning-rate schedule named ``kind`` over a run of ``steps`` steps.

  With :math:`\eta` = ``lr``, :math:`T` = ``steps`` and the step count :math:`k`:

  .. math::

    \eta_k^{const} = \eta, \quad
    \eta_k^{cos} = \tfrac{\eta}{2}\left(1 + \cos(\pi \min(k, T) / T)\right), \quad
    \eta_k^{step} = \eta \cdot 0.1^{\lfloor k / \lfloor T/3 \rfloor \rfloor}, \quad
    \eta_k^{exp} = \eta \cdot 0.01^{k / (T - 1)}

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

  Examples:
    >>> from adam_jax import tuning
    >>> s = tuning.schedule_fn("step", 0.1, steps=9)
    >>> [round(float(s(k)), 4) for k in (0, 3, 6)]
    [0.1, 0.01, 0.001]

  References:
    Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
    <https://arxiv.org/abs/1608.03983>`_, ICLR 2017 (the cosine schedule).
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
  r"""``adam`` (coupled L2 weight decay) or ``adamw`` (decoupled) from one configuration.

  Values in ``hp`` may be Python numbers (compile-time constants) or traced arrays.
  With :math:`\hat m_t, \hat v_t` Adam's bias-corrected moments of the gradient
  :math:`g_t` (plus :math:`\lambda \theta_{t-1}` for ``adam``) and :math:`\eta_t` the
  schedule of :func:`schedule_fn`:

  .. math::

    \theta_t = \theta_{t-1} - \eta_t \left(\hat m_t / (\sqrt{\hat v_t} + \epsilon)
    + [\text{adamw}]\, \lambda \theta_{t-1}\right)

  Args:
    optimizer: ``"adam"`` or ``"adamw"``.
    hp: the configuration: ``lr``, ``b1``, ``b2``, ``eps``, ``weight_decay`` and
      ``schedule`` (a name or an index, see :func:`schedule_fn`).
    steps: the length of the run (for the schedule).

  Returns:
    An ``optax.GradientTransformation``.

  Raises:
    ValueError: ``optimizer`` is neither ``"adam"`` nor ``"adamw"``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from adam_jax import tuning
    >>> hp = dict(lr=0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, schedule="constant")
    >>> tx = tuning.make_optimizer("adamw", hp, steps=10)
    >>> u, _ = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)), jnp.zeros(2))
    >>> [round(float(x), 4) for x in u]
    [-0.1, -0.1]

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014; Loshchilov & Hutter, `Decoupled Weight
    Decay Regularization <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  if optimizer not in ("adam", "adamw"):
    raise ValueError(f"optimizer must be 'adam' or 'adamw', got {optimizer!r}")
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
      leaves[f"update_to_param_ratio/{path_name(path)}"] = leaf
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


def _chunk_programs(task: Any, steps: int, optimizer: str, const: dict[str, Any],
                    traced: tuple[str, ...], diagnostics: bool, masked: bool
                    ) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
  """``init``, ``train`` (one chunk of steps) and ``evaluate`` of one configuration.

  With ``masked``, ``train`` takes a boolean per step and skips the steps marked
  false (the padding of a last chunk), so every chunk has the same length.
  """
  record = monitor_record if diagnostics else None

  def make_tx(hp_traced):
    hp = dict(const)
    for name in traced:
      hp[name] = hp_traced[name]
    tx = make_optimizer(optimizer, hp, steps)
    if diagnostics:
      from adam_jax.diagnostics import monitor

      tx = monitor(tx, eps=hp["eps"], b2=hp["b2"])
    return tx

  def init(hp_traced, params):
    return params, make_tx(hp_traced).init(params)

  def train(hp_traced, params, opt_state, idx, valid, x, y):
    tx = make_tx(hp_traced)
    if not masked:
      return _fit(task, tx, params, opt_state, idx, x, y, record=record)

    def one(carry, batch):
      params, opt_state, out = _fit(task, tx, *carry, batch[None], x, y, record=record)
      return (params, opt_state), jax.tree.map(lambda o: o[0], out)

    def step(carry, xs):
      batch, ok = xs
      shape = jax.eval_shape(one, carry, batch)[1]
      skip = lambda c, b: (c, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape))
      return jax.lax.cond(ok, one, skip, carry, batch)

    (params, opt_state), out = jax.lax.scan(step, (params, opt_state), (idx, valid))
    return params, opt_state, out

  def evaluate(params, x, y, x_val, y_val):
    train_loss, _ = task.evaluate(params, x, y)
    val_loss, val_acc = task.evaluate(params, x_val, y_val)
    return train_loss, val_loss, val_acc

  return init, train, evaluate


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
    self.resuming = resume and os.path.exists(self.csv_path)
    if self.resuming:
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
    checkpoint_every: int = 1000,
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
      interrupted search keeps what it finished; the group in training is
      checkpointed in ``checkpoints/`` (see ``checkpoint_every``).
    resume: with ``out_dir``, skip configurations already in its ``results.csv`` and
      continue an interrupted group from its checkpoint, with results bit for bit
      those of an uninterrupted search. A checkpoint that does not match the group
      (other values, devices or ``checkpoint_every``) is ignored: the group starts over.
    sequential: train one configuration at a time (one compiled program per shape,
      hyperparameters as arguments; for comparison and debugging).
    devices: devices to spread configurations over (default ``jax.devices()``).
    on_row: called with each new :class:`SweepRow` as it finishes.
    on_group: called before each compiled group with its shape and number of configurations.
    diagnostics: wrap each optimizer in :func:`adam_jax.diagnostics.monitor` and keep,
      for every step, the update-to-param ratios and the eps-dominated fraction in
      ``SweepRow.diagnostics`` (not written to ``out_dir``).
    checkpoint_every: a vectorized group trains in equal chunks of at most this many
      steps (one compiled program; a padded last chunk skips its extra steps), and with
      ``out_dir`` its train state (params, optimizer states, steps done, losses so far)
      is saved with :func:`adam_jax.checkpoint.save` after each chunk but the last.
      ``0``: one chunk, no checkpoint. ``sequential`` runs are not checkpointed.

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
  if (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer))
      or checkpoint_every < 0):
    raise ValueError(f"checkpoint_every must be a nonnegative integer, got {checkpoint_every!r}")
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
  ckpt_root = None
  if store is not None and checkpoint_every:
    ckpt_root = os.path.join(os.fspath(out_dir), _CHECKPOINTS)
    if not store.resuming and os.path.isdir(ckpt_root):
      shutil.rmtree(ckpt_root)

  def ckpt_path(shape_cfg: dict[str, int]) -> str | None:
    if ckpt_root is None:
      return None
    return os.path.join(ckpt_root, "layers{layers}-hidden{hidden}-batch{batch_size}".format(
        **shape_cfg))

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
      _remove_checkpoint(ckpt_path(shape_cfg))  # rows written before an interrupt
      continue
    if on_group is not None:
      on_group(shape_cfg, len(todo))
    t = get_task(task, seed=seed, data=data, **shape_cfg)
    if sequential:
      program = _value_program(t, steps, optimizer, const, traced, diagnostics)
      args = (t.params, t.batch_indices(steps, seed), t.x_train, t.y_train, t.x_val, t.y_val)
      outs = _run_sequential(program, todo, traced, args)
    else:
      outs = _run_vectorized(t, steps, seed, optimizer, const, todo, traced, devices,
                             diagnostics, checkpoint_every, ckpt_path(shape_cfg), resume)
      spread = max(spread, len(devices) if len(todo) > 1 else 1)
    new_rows = []
    for config, (curve, tr, va, acc, records) in outs:
      row = SweepRow(config, float(tr), float(va), float(acc) if t.classification else None,
                     np.asarray(curve, np.float32),
                     None if records is None else monitor_columns(records))
      results[_key(config)] = row
      new_rows.append(row)
      if store is not None:
        store.add(row)
    _remove_checkpoint(ckpt_path(shape_cfg))  # its rows are written
    if on_row is not None:
      for row in new_rows:
        on_row(row)
  if ckpt_root is not None and os.path.isdir(ckpt_root) and not os.listdir(ckpt_root):
    os.rmdir(ckpt_root)
  rows = [results[_key(c)] for c in grid]
  best = min(rows, key=lambda r: r.val_loss if math.isfinite(r.val_loss) else math.inf)
  return GridSearchResult(rows, best, spread)


def _run_sequential(program, todo, traced, args):
  step = jax.jit(program)
  hp = _traced_values(todo, traced)
  for i, config in enumerate(todo):
    out = step({name: hp[name][i] for name in traced}, *args)
    yield config, jax.device_get(out)


def _remove_checkpoint(path: str | None) -> None:
  if path is not None and os.path.isdir(path):
    shutil.rmtree(path)


def _run_chunk(compiled: Callable[..., Any], *args: Any) -> Any:
  """Runs one compiled chunk of steps for a whole group."""
  return compiled(*args)


def _chunking(steps: int, checkpoint_every: int) -> tuple[int, int]:
  """``(chunk, chunks)``: equal chunks of at most ``checkpoint_every`` steps covering ``steps``."""
  if not checkpoint_every or checkpoint_every >= steps:
    return steps, 1
  chunks = -(-steps // checkpoint_every)
  return -(-steps // chunks), chunks


def _run_vectorized(t, steps, seed, optimizer, const, todo, traced, devices, diagnostics,
                    checkpoint_every, ckpt_path, resume):
  """Trains a group in chunks of steps, checkpointing the vmapped train state after each."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  n = len(todo)
  chunk, chunks = _chunking(steps, checkpoint_every)
  total = chunk * chunks
  masked = total > steps
  init, train, evaluate = _chunk_programs(t, steps, optimizer, const, traced, diagnostics, masked)
  # The index keeps a batch axis to vmap over when no hyperparameter is traced.
  hp = {"index": np.arange(n, dtype=np.int32), **_traced_values(todo, traced)}
  use = devices if len(devices) > 1 and n > 1 else devices[:1]
  padded = -(-n // len(use)) * len(use)
  hp = {k: np.concatenate([v, np.repeat(v[-1:], padded - n)]) for k, v in hp.items()}
  mesh = Mesh(np.asarray(use), ("configs",))
  spread = NamedSharding(mesh, PartitionSpec("configs"))
  same = NamedSharding(mesh, PartitionSpec())
  hp_dev = jax.device_put(hp, spread)
  idx = t.batch_indices(steps, seed)
  idx = np.concatenate([idx, np.repeat(idx[-1:], total - steps, axis=0)])
  valid = np.arange(total) < steps if masked else None
  data = jax.device_put((t.x_train, t.y_train), same)
  val = jax.device_put((t.x_val, t.y_val), same)

  params, opt_state = jax.jit(jax.vmap(init, in_axes=(0, None)), out_shardings=spread)(
      hp_dev, jax.device_put(t.params, same))

  def args(lo):
    part = None if valid is None else jax.device_put(valid[lo:lo + chunk], same)
    return jax.device_put(idx[lo:lo + chunk], same), part

  v_train = jax.vmap(train, in_axes=(0, 0, 0, None, None, None, None))
  lowered = jax.jit(v_train, out_shardings=spread).lower(
      hp_dev, params, opt_state, *args(0), *data)
  compiled = lowered.compile()  # once: every chunk has the same length
  out_shape = lowered.out_info[2]
  trace = jax.tree.map(lambda s: np.zeros((padded, total) + s.shape[2:], s.dtype), out_shape)
  # Everything a resumed group needs: params and optimizer state of every configuration,
  # the steps done (which fixes the position in the batch order, drawn from the seed),
  # the chunk length, the hyperparameters trained and the losses (and records) so far.
  state = {"params": params, "opt_state": opt_state, "step": np.zeros((), np.int32),
           "chunk": np.asarray(chunk, np.int32), "hp": hp, "trace": trace}
  if resume and ckpt_path is not None and os.path.isdir(ckpt_path):
    from adam_jax import checkpoint

    try:
      saved = checkpoint.restore(ckpt_path, like=state)
    except ValueError:  # another grid or device count: the group starts over
      saved = None
    if (saved is not None and int(saved["chunk"]) == chunk
        and all(np.array_equal(np.asarray(saved["hp"][k]), hp[k]) for k in hp)):
      state = saved
  first = int(state["step"])
  params, opt_state = state["params"], state["opt_state"]
  trace = jax.tree.map(np.array, state["trace"])
  for lo in range(first, total, chunk):
    params, opt_state, out = _run_chunk(compiled, hp_dev, params, opt_state, *args(lo), *data)
    for dst, src in zip(jax.tree.leaves(trace), jax.tree.leaves(jax.device_get(out))):
      dst[:, lo:lo + chunk] = src
    if ckpt_path is not None and lo + chunk < total:
      from adam_jax import checkpoint

      checkpoint.save(ckpt_path, {"params": params, "opt_state": opt_state,
                                  "step": np.asarray(lo + chunk, np.int32),
                                  "chunk": np.asarray(chunk, np.int32), "hp": hp,
                                  "trace": trace}, overwrite=True)
  tr, va, acc = jax.device_get(jax.jit(jax.vmap(evaluate, in_axes=(0, None, None, None, None)))(
      params, *data, *val))
  trace = jax.tree.map(lambda a: a[:, :steps], trace)
  curves, records = trace if diagnostics else (trace, None)
  for i, config in enumerate(todo):
    mine = None if records is None else jax.tree.map(lambda r, i=i: r[i], records)
    yield config, (curves[i], tr[i], va[i], acc[i], mine)
