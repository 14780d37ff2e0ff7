"""Run identity: what defines a search or a training run, recorded where it writes.

A search's ``search.json``, a :func:`train` checkpoint and an Optuna study (a user
attribute) record the run's identity: the optimizer, the model, ``loss_fn`` and
``metrics_fn``, the data, the batch size, the steps and the seeds, as fingerprints
(:mod:`adam_jax._fingerprint`). A resume into a record of another run is refused with
the fields that differ.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from adam_jax import _fingerprint, _lock
from adam_jax.tuning._problem import Problem

STUDY_ATTR = "adam_jax_run"  # the user attribute of an Optuna study that holds its identity


def problem_identity(problem: Problem) -> dict[str, Any]:
  """The model, loss, metrics, data and batch size of ``problem``, as fingerprints."""
  return {
      "model": _model(problem),
      "loss_fn": _fingerprint.fingerprint(problem.loss_fn),
      "metrics_fn": None if problem.user_metrics_fn is None else _fingerprint.fingerprint(
          problem.user_metrics_fn),
      "train_data": _train_data(problem),
      "val_data": None if problem.val_data is None else _fingerprint.data_fingerprint(
          problem.val_data),
      "batch_size": problem.batch_size,
  }


def search_identity(problem: Problem, optimizer: str | Callable[..., Any], steps: int,
                    seeds: Sequence[int]) -> dict[str, Any]:
  """A search's identity: the optimizer (an alias's name, or a factory's fingerprint),
  the problem's (:func:`problem_identity`), the steps and the seeds."""
  opt = optimizer if isinstance(optimizer, str) else _fingerprint.fingerprint(optimizer)
  return {"optimizer": opt, **problem_identity(problem), "steps": int(steps),
          "seeds": [int(s) for s in seeds]}


def train_identity(problem: Problem, tx: Any, steps: int, seed: int, eval_every: int
                   ) -> dict[str, Any]:
  """A :func:`train` run's identity: the transformation's fingerprint (its hyperparameters
  included), the problem's, the steps, the seed and the evaluation interval."""
  return {"optimizer": _fingerprint.fingerprint(tx, "tx"), **problem_identity(problem),
          "steps": int(steps), "seed": int(seed), "eval_every": int(eval_every)}


def refusal(where: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
  """Why a resume from the record ``old`` at ``where`` is refused, or None when it matches."""
  found = _fingerprint.changes(old, new)
  if not found:
    return None
  return (f"cannot resume: {where} holds another run ({'; '.join(found)}); pass another "
          "folder to start this one")


def check_study(study: Any, identity: Mapping[str, Any]) -> None:
  """Records ``identity`` in an Optuna study, or refuses a study recorded by another run."""
  old = study.user_attrs.get(STUDY_ATTR)
  if old is None:
    study.set_user_attr(STUDY_ATTR, dict(identity))
    return
  why = refusal(f"study {study.study_name!r}", old, identity)
  if why is not None:
    raise ValueError(why.replace("another folder", "another study"))


def _model(problem: Problem) -> str:
  if problem.factory is not None:
    return _fingerprint.fingerprint(problem.factory)
  if problem.kind == "nnx":
    from flax import nnx

    state = nnx.state(problem.model)
    return (f"{type(problem.model).__name__} "
            f"{_fingerprint.data_fingerprint(state.to_pure_dict())}")
  return "params " + _fingerprint.data_fingerprint(problem.model)


def _train_data(problem: Problem) -> str:
  if problem.data_id is not None:
    return f"data_id {problem.data_id!r}" + (
        "" if problem.batch_fn is None else
        f", batch_fn {_fingerprint.fingerprint(problem.batch_fn)}")
  if problem.batch_fn is not None:
    return "batch_fn " + _fingerprint.fingerprint(problem.batch_fn)
  if problem.stream is not None:  # an iterable of batches: its type and its first batch
    return (f"iterable {type(problem.stream.data).__qualname__}, first batch "
            + _fingerprint.data_fingerprint(problem.stream.first))
  return _fingerprint.data_fingerprint(problem.train_data)


def claim_checkpoints(path: str, resume: bool, writes: bool) -> bool:
  """Whether a run's checkpoint folder holds saves (then ``resume`` is needed); when the run
  ``writes`` there, it takes the folder's lock first."""
  if writes:
    _lock.acquire(path)
  earlier = sorted(n for n in os.listdir(path) if n.startswith("save_")) if os.path.isdir(
      path) else []
  if earlier and not resume:
    raise ValueError(f"{path} already holds the checkpoints of an earlier run "
                     f"({earlier[-1]}); pass resume=True to continue it, or another folder")
  return bool(earlier)
