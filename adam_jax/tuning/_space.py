"""The search space: its keys checked and split (traced, shape, fixed) and a member's optimizer."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import aliases, schedules
from adam_jax._names import did_you_mean
from adam_jax.tuning._problem import Problem

#: The schedules a search takes for its ``schedule`` key (:func:`schedule_fn`), in index order.
SCHEDULES = ("constant", "cosine", "step", "exponential")

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


def resolve_optimizer(optimizer: Any) -> tuple[Callable[..., optax.GradientTransformation], str]:
  if isinstance(optimizer, str):
    return aliases.get_optimizer(optimizer), optimizer
  if not callable(optimizer):
    raise ValueError(f"optimizer must be a name in adam_jax.optimizers() or a function "
                     f"(**hparams) -> GradientTransformation, got {optimizer!r}")
  return optimizer, getattr(optimizer, "__qualname__", repr(optimizer))


class Space(NamedTuple):
  values: dict[str, list[Any]]  # every key, in the user's order
  traced: tuple[str, ...]  # numeric optimizer keys with several values (and schedule)
  const: dict[str, Any]  # optimizer keys with one value
  group: tuple[str, ...]  # shape keys and non-numeric optimizer keys with several values
  shape: tuple[str, ...]  # batch_size and model factory keywords


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def parse_space(problem: Problem, space: Mapping[str, Any], factory: Callable[..., Any],
                 opt_name: str) -> Space:
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
  space_ = Space(values, traced, const, group, tuple(k for k in values if k in shape_keys))
  _check_optimizer_values(factory, space_, opt_name)
  return space_


def _check_optimizer_values(factory: Callable[..., Any], space: Space, opt_name: str) -> None:
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


def tx_builder(factory, space: Space, steps: int):
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


def with_constants(make_tx, const: dict[str, Any]):
  return lambda hp: make_tx({**hp, **const})


