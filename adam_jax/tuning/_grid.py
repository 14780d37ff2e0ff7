"""Grid search over any optimizer's and model's hyperparameters, vectorized per model shape."""

from __future__ import annotations

import csv
import functools
import inspect
import itertools
import json
import math
import os
import pickle
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import _files, _lock, aliases, schedules
from adam_jax._names import did_you_mean
from adam_jax.tuning import _identity, _memory, _runner, _tensorboard
from adam_jax.tuning._batches import check_resumable
from adam_jax.tuning._diverged import diverged_members
from adam_jax.tuning._problem import Problem

#: The schedules a search takes for its ``schedule`` key (:func:`schedule_fn`), in index order.
SCHEDULES = ("constant", "cosine", "step", "exponential")

_CSV = "results.csv"
_CURVES = "curves.jsonl"
_META = "search.json"
_CHECKPOINTS = "checkpoints"


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
    (:func:`adam_jax.schedules.cosine_annealing` with ``t_max=steps``).
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
  if kind == "constant":
    lr32 = jnp.asarray(lr, jnp.float32)
    return lambda count: lr32
  if kind == "cosine":
    fn = schedules.cosine_annealing(lr, max(1, int(steps)))
  elif kind == "step":
    fn = schedules.step_decay(lr, max(1, steps // 3), 0.1)
  else:
    fn = schedules.exponential_lr(lr, 0.01 ** (1.0 / max(1, steps - 1)))
  return lambda count: jnp.asarray(fn(count), jnp.float32)


class Row(NamedTuple):
  """One configuration of a search."""

  config: dict[str, Any]  # one value per key of the space
  metrics: dict[str, float]  # mean over seeds; with several seeds also "<name>_std"
  seed_metrics: list[dict[str, float]]  # the metrics of each seed's trained model
  curve: np.ndarray | None  # shape=(steps,), float32: mini-batch losses, mean over seeds
  model: Any = None  # .best only: the trained model (nnx.Module, eval mode) or params
  models: list[Any] | None = None  # .best only: one trained model per seed
  diagnostics: dict[str, np.ndarray] | None = None  # with diagnostics: monitor columns
  rung: int | None = None  # successive halving: the last rung the configuration trained in
  steps: int | None = None  # successive halving: the steps it trained
  diverged: bool = False  # a seed's loss, metric or parameter is NaN or infinite: never best
  evals: dict[str, np.ndarray] | None = None  # with eval_every: "step" and each validation
  #   metric at those steps, shape=(evaluations,), mean over seeds
  best_step: list[int] | None = None  # with eval_every: each seed's best evaluated step
  #   (-1: never a finite metric); with keep="best" its model and metrics are that step's
  stopped_step: list[int] | None = None  # with patience: the step each seed stopped at


class SearchResult(NamedTuple):
  """What :func:`grid_search` returns."""

  rows: list[Row]  # every configuration, in grid order
  best: Row | None  # the best row by ``metric`` and ``mode``, with its trained model;
  #   None when every row diverged (a diverged row is never the best)
  metric: str  # the metric that chose ``best``
  mode: str  # "min" or "max"
  num_devices: int  # the most devices one group was spread over (Python-driven loops: 1)
  loops: dict[str, str]  # the loop form ("scan" or "python") used for each shape group

  def to_csv(self, path: str | os.PathLike[str]) -> str:
    """Writes one line per row (config, metrics, ``diverged``) to ``path``; returns the path.

    The file is replaced at once (a temporary file renamed): never half written.
    """
    path = os.fspath(path)
    keys = list(self.rows[0].config)
    names = list(self.rows[0].metrics)
    _files.write_atomic(path, _files.csv_text(
        [keys + names + ["diverged"]]
        + [[row.config[k] for k in keys] + [repr(row.metrics[m]) for m in names]
           + [row.diverged] for row in self.rows]))
    return path

  def plot(self, path: str | os.PathLike[str] | None = None, *, x: str | None = None) -> Any:
    """The metric against ``x`` (default: the varied key with most values), best marked.

    Each point is the best row for that value of ``x`` over the other varied keys (named
    in the title); the best row of the search is a star. A log axis where the values are
    log-spaced. Successive halving: the line holds the rows of the last rung; rows
    stopped at earlier rungs (fewer steps, not comparable) are faded dots.
    Returns a matplotlib ``Figure`` (shown as an image in Jupyter); saves it to ``path``
    as a PNG when given.
    """
    from adam_jax import _plotting
    from adam_jax.tuning import _plots

    return _plotting.save(_plots.search_figure(self, x), path)


def finite_or_nan(value: float, mode: str) -> float:
  return value if math.isfinite(value) else (math.inf if mode == "min" else -math.inf)


def rank(row: Row, metric: str, mode: str) -> float:
  """A row's ``metric`` for picking the best: the worst value when the row diverged."""
  return finite_or_nan(math.nan if row.diverged else row.metrics[metric], mode)


def resolve_optimizer(optimizer: Any) -> tuple[Callable[..., optax.GradientTransformation], str]:
  if isinstance(optimizer, str):
    return aliases.get_optimizer(optimizer), optimizer
  if not callable(optimizer):
    raise ValueError(f"optimizer must be a name in adam_jax.optimizers() or a function "
                     f"(**hparams) -> GradientTransformation, got {optimizer!r}")
  return optimizer, getattr(optimizer, "__qualname__", repr(optimizer))


class _Space(NamedTuple):
  values: dict[str, list[Any]]  # every key, in the user's order
  traced: tuple[str, ...]  # numeric optimizer keys with several values (and schedule)
  const: dict[str, Any]  # optimizer keys with one value
  group: tuple[str, ...]  # shape keys and non-numeric optimizer keys with several values
  shape: tuple[str, ...]  # batch_size and model factory keywords


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def parse_space(problem: Problem, space: Mapping[str, Any], factory: Callable[..., Any],
                 opt_name: str) -> _Space:
  if not isinstance(space, Mapping):
    raise ValueError(f"space must map names to lists of values, got {type(space).__name__}")
  sig = inspect.signature(factory)
  opt_keys = [p.name for p in sig.parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
  any_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
  shape_keys = problem.shape_keys
  values: dict[str, list[Any]] = {}
  for key, seq in space.items():
    if key in shape_keys or key in opt_keys or key == "schedule" or any_kw:
      pass
    else:
      accepted = ", ".join(list(opt_keys) + ["schedule"] + list(shape_keys))
      raise ValueError(f"space key {key!r} is taken neither by the optimizer ({opt_name}) nor "
                       f"by the model{did_you_mean(key, accepted.split(', '))}; accepted keys: "
                       f"{accepted}")
    seq = [seq] if isinstance(seq, (str, int, float, bool)) or seq is None else list(seq)
    if not seq:
      raise ValueError(f"space key {key!r} needs at least one value")
    if len({repr(v) for v in seq}) != len(seq):
      raise ValueError(f"space key {key!r} has repeated values: {seq}")
    values[key] = seq
  if "schedule" in values:
    if "learning_rate" not in opt_keys:
      raise ValueError(f"schedule needs an optimizer with a learning_rate keyword ({opt_name})")
    for v in values["schedule"]:
      if v not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {v!r}")
  for key in values:
    if key == "batch_size":
      for v in values[key]:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
          raise ValueError(f"batch_size must be a positive integer, got {v!r}")
        if problem.num_train is not None and v > problem.num_train:
          raise ValueError(f"batch_size must be at most the number of training examples "
                           f"({problem.num_train}), got {v}")
  required = [p.name for p in sig.parameters.values()
              if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
              and p.name not in values]
  if required:
    raise ValueError(f"space needs a value for {', '.join(required)} (the optimizer "
                     f"{opt_name} has no default for it)")
  opt = [k for k in values if k not in shape_keys]
  traced = tuple(k for k in opt if len(values[k]) > 1 and (
      k == "schedule" or all(_is_number(v) for v in values[k])))
  const = {k: values[k][0] for k in opt if len(values[k]) == 1}
  group = tuple(k for k in values if k in shape_keys or (k in opt and len(values[k]) > 1
                                                         and k not in traced))
  space_ = _Space(values, traced, const, group, tuple(k for k in values if k in shape_keys))
  _check_optimizer_values(factory, space_, opt_name)
  return space_


def _check_optimizer_values(factory: Callable[..., Any], space: _Space, opt_name: str) -> None:
  """Builds the optimizer with every value once: its own checks name bad values."""
  opt = [k for k in space.values if k not in space.shape and k != "schedule"]
  params = inspect.signature(factory).parameters
  base = {k: space.values[k][0] for k in opt
          if k in params and params[k].default is params[k].empty}
  for key in opt:
    for v in space.values[key]:
      try:
        factory(**{**base, key: v})
      except (ValueError, TypeError) as err:
        raise ValueError(f"{key}={v!r} for {opt_name}: {err}") from None


def tx_builder(factory, space: _Space, steps: int):
  def make_tx(hp: dict[str, Any]) -> optax.GradientTransformation:
    kw = dict(space.const)
    kw.update(hp)
    kind = kw.pop("schedule", "constant")
    if not (isinstance(kind, str) and kind == "constant"):
      kw["learning_rate"] = schedule_fn(kind, kw["learning_rate"], steps)
    return factory(**kw)

  return make_tx


def traced_values(configs: list[dict[str, Any]], traced: tuple[str, ...]) -> dict[str, Any]:
  out = {}
  for name in traced:
    if name == "schedule":
      out[name] = np.array([SCHEDULES.index(c[name]) for c in configs], np.int32)
    else:
      out[name] = np.array([c[name] for c in configs], np.float32)
  return out


def _key(config: dict[str, Any]) -> tuple[str, ...]:
  return tuple(f"{k}={v!r}" for k, v in config.items())


class _Store:
  """results.csv (a row as each group finishes), curves.jsonl and search.json.

  Process 0 alone reads and writes them; the other processes of a ``jax.distributed`` run
  get the rows read back (or the error) from it. It holds the lock of ``out_dir`` (one
  writer). ``search.json`` records the run's identity (:mod:`adam_jax.tuning._identity`):
  a resume of another run is refused, naming what changed. An earlier search's rows and
  checkpoints are never deleted, only resumed: a resume over fewer configurations keeps
  the others' lines, and a rewrite replaces a file whole (a temporary file renamed).
  """

  def __init__(self, out_dir: str, meta: dict[str, Any], keys: list[str], resume: bool,
               space: dict[str, list[Any]]):
    self.csv_path = os.path.join(out_dir, _CSV)
    self.curves_path = os.path.join(out_dir, _CURVES)
    self.keys = keys
    self.names: list[str] | None = None
    self.done: dict[tuple[str, ...], Row] = {}
    self.writes = jax.process_index() == 0
    self.done, self.resuming = _from_process_0(
        lambda: self._open(out_dir, meta, resume, space))

  def _open(self, out_dir: str, meta: dict[str, Any], resume: bool,
            space: dict[str, list[Any]]) -> tuple[dict[tuple[str, ...], Row], bool]:
    _lock.acquire(out_dir)  # one writer: another search in out_dir is refused, named
    meta_path = os.path.join(out_dir, _META)
    self.resuming = resume and os.path.exists(meta_path)
    earlier = [p for p in (self.csv_path, os.path.join(out_dir, _CHECKPOINTS))
               if os.path.exists(p)]
    if earlier and not self.resuming:
      why = (f"it has no {_META} to resume from" if resume
             else "pass resume=True to continue that search")
      raise ValueError(f"{out_dir} already holds an earlier search ({earlier[0]}); {why}, "
                       "or pass another out_dir")
    os.makedirs(out_dir, exist_ok=True)
    if self.resuming:
      try:
        with open(meta_path) as f:
          old = json.load(f)
      except (OSError, ValueError) as err:
        raise ValueError(f"cannot resume: {meta_path} is damaged ({err})") from None
      if not isinstance(old, dict):
        raise ValueError(f"cannot resume: {meta_path} is damaged (not a JSON object)")
      why = _identity.refusal(out_dir, old, {k: v for k, v in meta.items() if k != "space"})
      if why is not None:
        raise ValueError(why)
      self._reopen(space)
      meta = {**meta, "space": _union(old.get("space") or {}, meta["space"])}
    else:
      for path in (self.csv_path, self.curves_path):  # no rows: nothing of value is lost
        if os.path.exists(path):
          os.remove(path)
    _files.write_atomic(meta_path, json.dumps(meta, indent=2, default=str) + "\n")
    return self.done, self.resuming

  def _reopen(self, space: dict[str, list[Any]]) -> None:
    """Reads the rows of this search's configurations, and rewrites both files whole.

    Every complete line is kept, also those of configurations this search does not
    have (a narrower space); a line cut off by an interrupt is dropped.
    """
    curves: dict[tuple[str, ...], Any] = {}
    if os.path.exists(self.curves_path):
      with open(self.curves_path) as f:
        for line in f:
          try:
            item = json.loads(line)
            np.asarray(item["curve"], np.float32)
            curves.setdefault(tuple(item["key"]), item)
          except (ValueError, KeyError, TypeError):
            continue
    header, lines = None, {}
    if os.path.exists(self.csv_path):
      with open(self.csv_path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is not None:
          lines = self._read(header, reader, space, curves)
    if header is not None:
      _files.write_atomic(self.csv_path, _files.csv_text([header] + list(lines.values())))
    _files.write_atomic(self.curves_path,
                        "".join(json.dumps(item) + "\n" for item in curves.values()))

  def _read(self, header: list[str], reader: Any, space: dict[str, list[Any]],
            curves: dict[tuple[str, ...], Any]) -> dict[tuple[str, ...], list[str]]:
    """The complete lines of ``reader``, first of each configuration; fills ``done``."""
    if header[:len(self.keys)] != self.keys or header[-1:] != ["diverged"]:
      raise ValueError(f"cannot resume: {self.csv_path} has columns {header}, this search "
                       f"has keys {self.keys} (and a diverged column)")
    self.names = names = header[len(self.keys):-1]
    lines: dict[tuple[str, ...], list[str]] = {}
    for fields in reader:
      if len(fields) != len(header) or fields[-1] not in ("True", "False"):
        continue  # a line cut off by an interrupt
      try:
        metrics = {m: float(v) for m, v in zip(names, fields[len(self.keys):-1])}
      except ValueError:
        continue
      lines.setdefault(tuple(fields[:len(self.keys)]), fields)
      config = {}
      for k, text in zip(self.keys, fields):
        match = [v for v in space[k] if str(v) == text]
        if not match:
          break
        config[k] = match[0]
      if len(config) != len(self.keys):
        continue  # a configuration this search does not have: its line is kept
      key = _key(config)
      item = curves.get(key)
      self.done.setdefault(key, Row(config, metrics, [], None if item is None else np.asarray(
          item["curve"], np.float32), diverged=fields[-1] == "True"))
    return lines

  def add(self, row: Row) -> None:
    if not self.writes:
      return
    if self.names is None:
      self.names = list(row.metrics)
      _files.write_atomic(self.csv_path, _files.csv_text([self.keys + self.names
                                                          + ["diverged"]]))
    with open(self.csv_path, "a", newline="") as f:
      csv.writer(f).writerow([row.config[k] for k in self.keys]
                             + [repr(row.metrics.get(m, math.nan)) for m in self.names]
                             + [row.diverged])
    if row.curve is not None:
      with open(self.curves_path, "a") as f:
        f.write(json.dumps({"key": list(_key(row.config)),
                            "curve": [float(v) for v in row.curve]}) + "\n")


def _union(old: dict[str, list[Any]], new: dict[str, list[Any]]) -> dict[str, list[Any]]:
  """The values searched so far: a resume over another space adds its values."""
  return {k: list({json.dumps(v, default=str): v for v in old.get(k, []) + list(new[k])
                   }.values()) for k in new}


def _from_process_0(fn: Callable[[], Any]) -> Any:
  """``fn()``, run by process 0 alone; its value (or its error) reaches every process."""
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils

  error, payload = None, b""
  if jax.process_index() == 0:
    try:
      payload = pickle.dumps((None, fn()))
    except Exception as err:  # every process raises, none waits for a value
      error, payload = err, pickle.dumps((type(err).__name__, str(err)))
  size = int(multihost_utils.broadcast_one_to_all(np.int32(len(payload))))
  data = np.zeros(size, np.uint8)
  data[:len(payload)] = np.frombuffer(payload, np.uint8)
  data = np.asarray(multihost_utils.broadcast_one_to_all(data))
  if error is not None:
    raise error
  kind, value = pickle.loads(data.tobytes())
  if kind == "ValueError":
    raise ValueError(value)
  if kind is not None:
    raise RuntimeError(f"process 0 failed with {kind}: {value}")
  return value


def monitor_record(opt_state: Any) -> Any:
  """What is kept of a :func:`adam_jax.diagnostics.monitor` state after each step."""
  return opt_state.stats


def monitor_columns(stats: Any, first_step: int = 1) -> dict[str, np.ndarray]:
  """Stacked monitor statistics (leading axis: steps) as columns for ``plot_history``.

  Columns: ``step``, ``update_to_param_ratio`` (over all leaves),
  ``eps_dominated_fraction`` and ``update_to_param_ratio/<leaf path>``.
  """
  overall = np.asarray(stats.update_to_param_ratio, np.float64).reshape(-1)
  cols = {"step": np.arange(first_step, first_step + len(overall), dtype=np.float64),
          "update_to_param_ratio": overall,
          "eps_dominated_fraction": np.asarray(stats.eps_dominated_fraction, np.float64)}
  leaves = {k: v for k, v in stats.per_leaf.as_dict().items()
            if k.startswith("update_to_param_ratio/")}
  cols.update({k: np.asarray(v, np.float64).reshape(-1) for k, v in leaves.items()})
  return cols


def grid_search(
    problem: Problem,
    space: Mapping[str, Sequence[Any]],
    *,
    optimizer: str | Callable[..., optax.GradientTransformation] = "adam",
    steps: int,
    seeds: int | Sequence[int] = 1,
    metric: str = "val_loss",
    mode: str = "min",
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    devices: Sequence[jax.Device] | None = None,
    loop: str = "auto",
    checkpoint_every: int = 0,
    progress: bool | None = None,
    on_row: Callable[[Row], None] | None = None,
    diagnostics: bool = False,
    log_dir: str | os.PathLike[str] | None = None,
    max_memory: int | str | None = None,
    eval_every: int | None = None,
    keep: str = "last",
    patience: int | None = None,
) -> SearchResult:
  r"""Trains every configuration of a grid of hyperparameters on the user's problem.

  ``space`` maps names to lists of values:

  * keywords of the optimizer factory (``learning_rate``, ``b1``, ``b2``, ``eps``,
    ``weight_decay``, ... of any alias in :func:`adam_jax.optimizers`, or of the
    user's own ``(**hparams) -> GradientTransformation``, so clipping chains and
    schedules of one's own work): numeric keys with several values are traced and
    trained together, configurations x seeds, in one ``jax.vmap``-ed program; a key
    with one value is a compile-time constant; other keys with several values
    (booleans, strings) get a program each;
  * ``schedule``: names in :data:`SCHEDULES` applied to ``learning_rate`` (traced too);
  * ``batch_size`` and keywords of the model factory (``layers``, ``hidden``, ...):
    they change shapes, so each combination is one compiled group.

  Every configuration of a seed starts from the same initial model and sees the same
  mini-batches (:meth:`Problem.batch_indices`), so rows differ only by their
  hyperparameters; a configuration trained here equals the same configuration trained
  alone, to float32 rounding.

  Across processes (``jax.distributed``), every process calls ``grid_search`` with the
  same arguments. Each group's members are spread over one mesh of every process's
  devices, every process trains the members on its own devices, and the results are
  gathered (``multihost_utils.process_allgather``), so every process returns the same
  complete :class:`SearchResult`. No computation mixes members, so the rows agree with
  one process of the same device count to float32 rounding (bit-identical results
  across process counts are not promised). Process 0 alone reads and writes ``out_dir``
  (the other processes get the rows read back from it); group checkpoints are written
  together, each process its own shards, so ``checkpoint_every`` needs an ``out_dir``
  that every process sees.

  Args:
    problem: the :class:`Problem`.
    space: the grid (see above).
    optimizer: a name in :func:`adam_jax.optimizers` or a factory of transformations.
    steps: optimizer steps per configuration.
    seeds: ``k`` (seeds ``0..k-1``) or the list of seeds; each configuration trains
      from every seed (initial params of a factory, batch order, dropout streams)
      and its metrics are the mean over seeds, with ``<name>_std`` (their standard
      deviation) when there are several.
    metric: the metric that picks ``best`` (a key of the rows' metrics).
    mode: ``"min"`` or ``"max"``.
    out_dir: if given, ``results.csv`` (a line per configuration, written as each
      group finishes, with a ``diverged`` column) and ``curves.jsonl`` are written there,
      and ``search.json`` records the run's identity (the optimizer, the model,
      ``loss_fn``, ``metrics_fn``, the data, the batch size, the steps and the seeds; see
      the tuning guide's "Run identity"). A folder that holds an earlier search (its
      ``results.csv`` or ``checkpoints``) is refused without ``resume``. The search holds
      the folder's lock while it runs: a second writer is refused, naming the holder.
    resume: with ``out_dir``, keep the rows of its ``results.csv`` and train the others;
      a run whose identity differs is refused, naming what changed. The space may
      differ: the configurations it names are returned, every other row is kept.
    devices: spread each group over these devices (default: ``jax.devices()``, every
      process's; a group whose steps are driven from Python runs on the first one of
      each process).
    loop: ``"scan"`` (steps in ``jax.lax.scan`` chunks), ``"python"`` (a jitted,
      vmapped step called from Python) or ``"auto"``: Python steps for a model with
      convolutions on CPU (several times faster there), ``scan`` otherwise.
    checkpoint_every: with ``out_dir``, save the group in training every this many
      steps (``checkpoints/``) so that ``resume`` continues it; ``0``: no checkpoints.
    progress: a progress bar per group (default: when the output is a terminal).
    on_row: called with each :class:`Row` as it finishes.
    diagnostics: wrap the optimizer in :func:`adam_jax.diagnostics.monitor` and keep
      its statistics after every step in ``Row.diagnostics`` (not written to disk).
    log_dir: write each configuration's run for TensorBoard to ``log_dir/<its
      configuration>`` as its group finishes (the varied keys name it): the training
      loss over the steps, the final metrics and the hyperparameters (needs tensorboardX:
      ``pip install 'adam-jax[tensorboard]'``).
    max_memory: the most memory one compiled program may need, in bytes or a string
      like ``"4GB"`` (default: a share of what is free, see :ref:`memory sizing
      <memory-sizing>`). Members that do not fit together train in several programs,
      one after another, with the same results; a configuration that does not fit
      alone is refused before any training (:class:`MemoryBudgetError`).
    eval_every: evaluate every member on ``val_data`` every this many steps (and after
      the last): each row's ``evals`` holds the validation curve (mean over seeds).
    keep: ``"last"`` (the last step's model) or ``"best"``: each member's params and
      model state (BatchNorm statistics) at its best evaluated step by ``metric`` and
      ``mode`` are kept; the row's metrics and ``best.model`` are that step's
      (``Row.best_step``). Needs ``eval_every``.
    patience: stop a member after this many evaluations without a better ``metric``: it
      stops changing (``Row.stopped_step``). Needs ``eval_every``.

  Returns:
    A :class:`SearchResult`; ``best.model`` is the trained model of the best
    configuration (the seed with the best metric; ``best.models`` has every seed's).
    A diverged row (a seed's loss, metric or parameter NaN or infinite:
    ``Row.diverged``) is never the best, under any metric and mode: ``best`` is None
    when every configuration diverged.

  Raises:
    ValueError: an unknown space key (the accepted ones are listed), a bad value,
      an unknown metric, a resume of another run, an ``out_dir`` that holds an earlier
      search without ``resume`` or that another process writes to (a
      ``adam_jax.checkpoint.DirectoryLockedError``), or ``devices`` that leave out a
      process.

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from adam_jax import tuning
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
    >>> loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
    >>> problem = tuning.Problem({"w": jnp.zeros((1, 1))}, loss, (x, 3 * x), (x, 3 * x))
    >>> result = tuning.grid_search(problem, {"learning_rate": [1e-3, 1e-1]}, steps=50)
    >>> result.best.config, result.best.metrics["val_loss"] < result.rows[0].metrics["val_loss"]
    ({'learning_rate': 0.1}, True)
  """
  return search(problem, space, None, optimizer=optimizer, steps=steps, seeds=seeds,
                metric=metric, mode=mode, out_dir=out_dir, resume=resume, devices=devices,
                loop=loop, checkpoint_every=checkpoint_every, progress=progress, on_row=on_row,
                diagnostics=diagnostics, max_memory=max_memory, eval_every=eval_every,
                keep=keep, patience=patience, log_dir=log_dir)


@_lock.scoped  # the lock of out_dir is given back when the search ends
def search(
    problem: Problem,
    space: Mapping[str, Sequence[Any]],
    configs: Sequence[Mapping[str, Any]] | None,
    *,
    optimizer: str | Callable[..., optax.GradientTransformation] = "adam",
    steps: int,
    seeds: int | Sequence[int] = 1,
    metric: str = "val_loss",
    mode: str = "min",
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    devices: Sequence[jax.Device] | None = None,
    loop: str = "auto",
    checkpoint_every: int = 0,
    progress: bool | None = None,
    on_row: Callable[[Row], None] | None = None,
    diagnostics: bool = False,
    meta: Mapping[str, Any] | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    max_memory: int | str | None = None,
    eval_every: int | None = None,
    keep: str = "last",
    patience: int | None = None,
) -> SearchResult:
  """:func:`grid_search` over ``configs`` (default: every combination of ``space``'s values).

  Each config takes one of ``space``'s values for every key; ``meta`` is kept in
  ``search.json`` next to the rows (a resume must match it).
  """
  if not isinstance(problem, Problem):
    raise ValueError(f"problem must be an adam_jax.tuning.Problem, got {type(problem).__name__}")
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"steps must be a positive integer, got {steps!r}")
  seeds = seed_list(seeds)
  if mode not in ("min", "max"):
    raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
  if loop not in _runner.LOOPS:
    raise ValueError(f"loop must be one of {', '.join(_runner.LOOPS)}, got {loop!r}")
  if resume and out_dir is None:
    raise ValueError("resume needs out_dir, the folder of the search to resume")
  check_resumable(problem, resume)
  if (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer))
      or checkpoint_every < 0):
    raise ValueError(f"checkpoint_every must be a nonnegative integer, got {checkpoint_every!r}")
  budget = memory_budget(max_memory)
  evaluation = evaluation_of(problem, steps, eval_every, keep, patience, metric, mode)
  factory, opt_name = resolve_optimizer(optimizer)
  sp = parse_space(problem, space, factory, opt_name)
  on_row = _tensorboard.row_logger(log_dir, on_row, _tensorboard.varied(sp.values))
  devices = list(jax.devices() if devices is None else devices)
  _runner.check_devices(devices)
  keys = list(sp.values)
  store = None
  if out_dir is not None:
    meta = {**_identity.search_identity(problem, optimizer, steps, seeds), **(meta or {}),
            "space": sp.values}
    store = _Store(os.fspath(out_dir), meta, keys, resume, sp.values)
  done = {} if store is None else store.done
  ckpt_root = None
  if store is not None and checkpoint_every:
    ckpt_root = os.path.join(os.fspath(out_dir), _CHECKPOINTS)

  if configs is None:
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*sp.values.values())]
  else:
    grid = [{k: c[k] for k in keys} for c in configs]
  make_tx = tx_builder(factory, sp, steps)
  record = None
  if diagnostics:
    from adam_jax.diagnostics import monitor

    inner = make_tx

    def make_tx(hp):
      kw = {**sp.const, **hp}
      return monitor(inner(hp), eps=kw.get("eps", 1e-8), b2=kw.get("b2", 0.999))

    record = monitor_record

  results: dict[tuple[str, ...], Row] = {}
  best: tuple[float, Row, Any, Any] | None = None  # (score, row, bound, per-seed models)
  spread, loops = 1, {}
  for combo in itertools.product(*(sp.values[k] for k in sp.group)):
    group_cfg = dict(zip(sp.group, combo))
    configs = [c for c in grid if all(c[k] == group_cfg[k] for k in sp.group)]
    todo = [c for c in configs if _key(c) not in done]
    results.update({_key(c): done[_key(c)] for c in configs if _key(c) in done})
    label = ", ".join(f"{k}={v}" for k, v in group_cfg.items()) or "all"
    ckpt = None if ckpt_root is None else os.path.join(ckpt_root, _slug(label))
    if not todo:
      if ckpt is not None and store.writes and os.path.isdir(ckpt):
        shutil.rmtree(ckpt)
      continue
    bound = problem.bind(**{k: group_cfg[k] for k in sp.shape if k in group_cfg})
    check_metric(bound, problem, metric)
    group_const = {k: v for k, v in group_cfg.items() if k not in sp.shape}
    hp = traced_values(todo, sp.traced)
    member_hp = {k: np.repeat(v, len(seeds)) for k, v in hp.items()}
    seed_pos = np.tile(np.arange(len(seeds), dtype=np.int32), len(todo))
    idx = None
    if problem.num_train is not None:
      idx = np.stack([problem.batch_indices(steps, s, bound.batch_size) for s in seeds])
    tx_group = make_tx if not group_const else with_constants(make_tx, group_const)
    bar = _bar(progress, len(todo), label)
    try:
      out = _runner.train_group(
          bound.fns, tx_group, member_hp, seed_pos, seeds, steps,
          train_data=problem.data_source, val_data=problem.val_data, batch_fn=problem.batch_fn,
          idx=idx, loop=loop, chunk=checkpoint_every or None, record=record, devices=devices,
          checkpoint_path=ckpt, resume=resume, budget=budget, evaluation=evaluation,
          on_steps=None if bar is None else functools.partial(_advance, bar, len(todo), steps))
    finally:
      if bar is not None:
        bar.close()
    loops[label] = out.loop
    spread = max(spread, out.num_devices)
    if ckpt is not None and store.writes and os.path.isdir(ckpt):
      shutil.rmtree(ckpt)
    losses, records = out.trace if diagnostics else (out.trace, None)
    diverged = diverged_members(out.metrics, out.params, losses[:, -1])
    for i, config in enumerate(todo):
      members = list(range(i * len(seeds), (i + 1) * len(seeds)))
      per_seed = [{k: float(v[m]) for k, v in out.metrics.items()} for m in members]
      metrics = summarize_members(per_seed)
      diag = None
      if records is not None:
        diag = monitor_columns(jax.tree.map(lambda r, m=members[0]: r[m], records))
      row = Row(dict(config), metrics, per_seed,
                np.asarray(losses[members], np.float32).mean(axis=0), diagnostics=diag,
                diverged=bool(diverged[members].any()), **evaluated(out, members))
      if metric not in metrics:
        raise ValueError(f"metric {metric!r} is not among the metrics "
                         f"({', '.join(metrics)}); pass val_data or metric=...")
      results[_key(config)] = row
      if store is not None:
        store.add(row)
      score = rank(row, metric, mode)
      if best is None or (score < best[0] if mode == "min" else score > best[0]):
        best = (score, row, bound, _take(out, members))
      if on_row is not None:
        on_row(row)
  if (ckpt_root is not None and store.writes and os.path.isdir(ckpt_root)
      and not os.listdir(ckpt_root)):
    os.rmdir(ckpt_root)
  rows = [results[_key(c)] for c in grid]
  if rows and metric not in rows[0].metrics:
    raise ValueError(f"metric {metric!r} is not among the metrics "
                     f"({', '.join(rows[0].metrics)}); pass val_data or metric=...")
  pick = min if mode == "min" else max
  top = pick(rows, key=lambda r: rank(r, metric, mode))
  if not math.isfinite(rank(top, metric, mode)):  # every row diverged
    return SearchResult(rows, None, metric, mode, spread, loops)
  if best is not None and best[1] is top:
    _, row, bound, trained = best
  else:  # the best row was read back from an earlier run: train it again
    row = top
    bound = problem.bind(**{k: top.config[k] for k in sp.shape})
    cfg_const = {k: top.config[k] for k in sp.group if k not in sp.shape}
    hp = {k: np.repeat(v, len(seeds)) for k, v in traced_values([top.config], sp.traced).items()}
    idx = None
    if problem.num_train is not None:
      idx = np.stack([problem.batch_indices(steps, s, bound.batch_size) for s in seeds])
    out = _runner.train_group(
        bound.fns, make_tx if not cfg_const else with_constants(make_tx, cfg_const), hp,
        np.arange(len(seeds), dtype=np.int32), seeds, steps, train_data=problem.data_source,
        val_data=problem.val_data, batch_fn=problem.batch_fn, idx=idx, loop=loop,
        devices=_runner.one_per_process(devices), budget=budget, evaluation=evaluation)
    trained = _take(out, list(range(len(seeds))))
    row = row._replace(seed_metrics=[{k: float(v[m]) for k, v in out.metrics.items()}
                                     for m in range(len(seeds))])
  models = [bound.fns.to_user(p, s) for p, s in trained]
  scores = [finite_or_nan(m[metric], mode) for m in row.seed_metrics]
  chosen = int(np.argmin(scores) if mode == "min" else np.argmax(scores))
  best_row = row._replace(model=models[chosen], models=models)
  rows = [best_row if r is top else r for r in rows]
  return SearchResult(rows, best_row, metric, mode, spread, loops)


def check_metric(bound: Any, problem: Problem, metric: str) -> None:
  """Fails before training when ``metric`` is not among the problem's metrics."""
  params, state = jax.eval_shape(bound.fns.init, jnp.zeros((), jnp.int32))
  names = list(jax.eval_shape(bound.fns.metrics, params, state, problem.train_data,
                              problem.val_data))
  if metric not in names:
    first = [k for k in ("train_loss", "val_loss") if k in names]
    names = first + [k for k in names if k not in first]
    raise ValueError(f"metric {metric!r} is not among the metrics ({', '.join(names)}); "
                     "pass val_data or metric=...")


def evaluation_of(problem: Problem, steps: int, eval_every: int | None, keep: str,
                  patience: int | None, metric: str, mode: str) -> _runner.Evaluation | None:
  """The checked ``eval_every``, ``keep`` and ``patience`` of a search (None: no evaluation)."""
  if keep not in ("last", "best"):
    raise ValueError(f"keep must be 'last' or 'best', got {keep!r}")
  if eval_every is None:
    for name, unset in (("keep='best'", keep == "last"), ("patience", patience is None)):
      if not unset:
        raise ValueError(f"{name} needs eval_every, the steps between evaluations")
    return None
  if isinstance(eval_every, bool) or not isinstance(eval_every, (int, np.integer)) or not (
      1 <= eval_every <= steps):
    raise ValueError(f"eval_every must be an integer from 1 to steps ({steps}), "
                     f"got {eval_every!r}")
  if patience is not None and (isinstance(patience, bool) or not isinstance(
      patience, (int, np.integer)) or patience < 1):
    raise ValueError(f"patience must be a positive integer (evaluations), got {patience!r}")
  if problem.val_data is None:
    raise ValueError("eval_every evaluates on val_data: pass val_data to the Problem")
  if not metric.startswith("val_"):
    raise ValueError(f"with eval_every the metric must be a validation metric (val_...), "
                     f"got {metric!r}")
  return _runner.Evaluation(int(eval_every), metric, mode, keep,
                            None if patience is None else int(patience))


def evaluated(out: Any, members: list[int]) -> dict[str, Any]:
  """A row's ``evals``, ``best_step`` and ``stopped_step`` from its members (seeds)."""
  if out.evals is None:
    return {}
  steps, curves = out.evals
  evals = {"step": np.asarray(steps)}
  evals.update({k: np.asarray(v[members], np.float64).mean(axis=0) for k, v in curves.items()})
  return {"evals": evals, "best_step": [int(out.best_step[m]) for m in members],
          "stopped_step": [int(out.stopped[m]) for m in members]}


def memory_budget(max_memory: int | str | None) -> int | None:
  """The bytes one program may need: ``max_memory`` parsed, or the default budget."""
  budget = _memory.parse_bytes(max_memory)
  return _memory.default_budget() if budget is None else budget


def with_constants(make_tx, const: dict[str, Any]):
  return lambda hp: make_tx({**hp, **const})


def _take(out: Any, members: list[int]) -> list[tuple[Any, Any]]:
  """The trained ``(params, state)`` of each member, as JAX arrays."""
  return [jax.tree.map(lambda a, m=m: jnp.asarray(a[m]), (out.params, out.state))
          for m in members]


def summarize_members(per_seed: list[dict[str, float]]) -> dict[str, float]:
  names = list(per_seed[0])
  out = {k: float(np.mean([m[k] for m in per_seed])) for k in names}
  if len(per_seed) > 1:
    out.update({f"{k}_std": float(np.std([m[k] for m in per_seed])) for k in names})
  return out


def seed_list(seeds: Any) -> list[int]:
  if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
    if seeds < 1:
      raise ValueError(f"seeds must be a positive integer or a list of seeds, got {seeds!r}")
    return list(range(int(seeds)))
  try:
    out = [int(s) for s in seeds]
  except (TypeError, ValueError):
    raise ValueError(f"seeds must be a positive integer or a list of seeds, got {seeds!r}"
                     ) from None
  if not out or len(set(out)) != len(out) or min(out) < 0:
    raise ValueError(f"seeds must be distinct non-negative integers, got {seeds!r}")
  return out


def _advance(bar: Any, configs: int, steps: int, done: int) -> None:
  bar.update(configs * done / steps - bar.n)


def _slug(label: str) -> str:
  return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)


def _bar(progress: bool | None, total: int, label: str) -> Any:
  if progress is False or jax.process_index() != 0:
    return None
  from tqdm.std import tqdm  # tqdm.auto warns in Jupyter without ipywidgets

  return tqdm(total=total, desc=label, unit="config", dynamic_ncols=True,
              disable=None if progress is None else False, leave=True)
