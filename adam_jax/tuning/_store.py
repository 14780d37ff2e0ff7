"""A search's folder: rows written as they finish, read back on resume, one writer at a time."""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from adam_jax import _files, _lock
from adam_jax.tuning import _identity
from adam_jax.tuning._results import Row

CSV = "results.csv"
CURVES = "curves.jsonl"
META = "search.json"
CHECKPOINTS = "checkpoints"


def config_key(config: dict[str, Any]) -> tuple[str, ...]:
  return tuple(f"{k}={v!r}" for k, v in config.items())


class Store:
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
    self.csv_path = os.path.join(out_dir, CSV)
    self.curves_path = os.path.join(out_dir, CURVES)
    self.keys = keys
    self.names: list[str] | None = None
    self.done: dict[tuple[str, ...], Row] = {}
    self.writes = jax.process_index() == 0
    self.done, self.resuming = from_process_0(
        lambda: self._open(out_dir, meta, resume, space))

  def _open(self, out_dir: str, meta: dict[str, Any], resume: bool,
            space: dict[str, list[Any]]) -> tuple[dict[tuple[str, ...], Row], bool]:
    _lock.acquire(out_dir)  # one writer: another search in out_dir is refused, named
    meta_path = os.path.join(out_dir, META)
    self.resuming = resume and os.path.exists(meta_path)
    earlier = [p for p in (self.csv_path, os.path.join(out_dir, CHECKPOINTS))
               if os.path.exists(p)]
    if earlier and not self.resuming:
      why = (f"it has no {META} to resume from" if resume
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
      key = config_key(config)
      item = curves.get(key)
      self.done.setdefault(key, Row(config, metrics, [], None if item is None else np.asarray(
          item["curve"], np.float32), diverged=fields[-1] == "True",
          **({} if item is None else _evaluations(item))))
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
      item = {"key": list(config_key(row.config)), "curve": [float(v) for v in row.curve]}
      if row.evals is not None:  # the validation curve (eval_every) and the kept steps
        item.update(evals={k: [float(v) for v in vs] for k, vs in row.evals.items()},
                    best_step=row.best_step, stopped_step=row.stopped_step)
      with open(self.curves_path, "a") as f:
        f.write(json.dumps(item) + "\n")


def _evaluations(item: dict[str, Any]) -> dict[str, Any]:
  """A curves.jsonl item's validation curve and kept steps, as a row holds them."""
  if "evals" not in item:
    return {}
  evals = {k: np.asarray(v, np.int32 if k == "step" else np.float64)
           for k, v in item["evals"].items()}
  return {"evals": evals, "best_step": item["best_step"], "stopped_step": item["stopped_step"]}


def _union(old: dict[str, list[Any]], new: dict[str, list[Any]]) -> dict[str, list[Any]]:
  """The values searched so far: a resume over another space adds its values."""
  return {k: list({json.dumps(v, default=str): v for v in old.get(k, []) + list(new[k])
                   }.values()) for k in new}


def from_process_0(fn: Callable[[], Any]) -> Any:
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


def slug(label: str) -> str:
  return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)


