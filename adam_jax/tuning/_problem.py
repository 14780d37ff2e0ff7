"""The user's training problem, in the two forms JAX users write: Flax NNX or functional."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adam_jax.tuning._batches import BatchStream, is_batch_iterable

_NO_STATE = ()  # the non-optimized state of a functional problem


class Problem:
  r"""A model, its loss and its data: what :func:`grid_search` and :func:`lr_find` train.

  Two forms:

  * **Flax NNX**: ``model`` is an ``nnx.Module``, or a factory
    ``model(rngs, **shape_hparams) -> nnx.Module`` (a parameter named ``rngs``,
    which is passed by keyword; an ``nnx.Module`` class is such a factory);
    ``loss_fn(model, batch) -> loss`` or ``(loss, aux_dict)``. Only ``nnx.Param``
    variables are optimized; every other variable (BatchNorm statistics, the RNG
    streams of Dropout, counters) is carried from step to step exactly as an
    ``nnx.jit`` training loop carries it. The model is in train mode
    (``model.train()``) while it trains and in eval mode (``model.eval()``) when it is
    evaluated and when it is returned.
  * **Functional**: ``model`` is a pytree of params, or ``init(key, **shape_hparams)
    -> params``; ``loss_fn(params, batch) -> loss`` or ``(loss, aux_dict)``.

  Data: ``train_data`` is a pytree of arrays sharing their leading axis (``(x, y)``,
  a dict, ...), from which mini-batches of ``batch_size`` examples are drawn, each
  epoch a fresh permutation seeded by the run's seed (the last incomplete batch of an
  epoch is dropped; see :meth:`batch_indices`); or a callable ``batch_fn(step, key)
  -> batch``, traced with ``step`` an int32 scalar and ``key`` =
  ``jax.random.fold_in(jax.random.key(seed), step)``, for data that is generated; or
  an iterable of batches from one's own pipeline (a generator, a grain or torch
  ``DataLoader``, a ``tf.data`` NumPy iterator, any object with ``__iter__`` that is not
  a tuple, list or dict of arrays), each batch a pytree of arrays of the same shapes and
  dtypes. Step ``t`` trains on its ``t``-th batch; every member of a search sees the same
  batches (the seeds vary the initial params and the dropout streams only), pulled a
  chunk at a time in a background thread, so memory depends on the chunk, not on the
  data. A re-iterable (``iter()`` gives a fresh pass) can feed several groups, rungs and
  resumes (the batches already trained on are skipped); a one-shot iterator (a
  generator) feeds one pass and cannot resume. ``batch_size`` is then the pipeline's,
  there is no ``train_loss``, and ``val_data`` may be a finite re-iterable too (its
  batches are concatenated).

  Metrics of a trained model, always in eval mode, each computed in mini-batches of
  ``eval_batch_size`` examples (never on a whole split at once, so evaluation needs the
  memory of one batch, not of the split):

  * ``train_loss``: ``loss_fn`` over ``train_data`` (when it holds arrays);
  * ``val_loss``: ``loss_fn`` over ``val_data``, and ``val_<name>`` for every
    entry of the aux dict (``val_accuracy`` when the loss returns
    ``{"accuracy": ...}``); aux values must be scalars;
  * ``val_<name>`` for every entry of ``metrics_fn(model_or_params, batch) -> dict`` on
    ``val_data``'s batches (it is traced; its values must be scalars). One rule names
    every metric of the validation data: ``val_`` and the name, unless the name already
    starts with ``val_``; ``metrics_fn``'s ``"accuracy"`` replaces the aux dict's.

  Each reported value is the example-weighted mean over the batches, the last partial
  batch included:

  .. math::

    m = \frac{1}{N} \sum_b n_b\, f(B_b), \qquad N = \sum_b n_b,

  where :math:`f(B_b)` is ``loss_fn`` (or an aux or ``metrics_fn`` value) on batch
  :math:`B_b` of :math:`n_b` examples, taken in order. For a loss that is a mean over
  its batch's examples (the usual contract) this is the mean over the split, and it
  equals a user's own loop over the same batches to float32 summation order; a value
  that is not a per-example mean (a median, a maximum) is averaged over batches all
  the same.

  The problem is checked when it is built, by an abstract evaluation
  (``jax.eval_shape``, no computation): ``loss_fn`` on a batch of ``train_data`` and on
  ``val_data``, and ``metrics_fn``; an error names the data or function that fails.
  (A factory with a keyword that has no default is checked when a search gives it a
  value.)

  Args:
    model: an ``nnx.Module``, a factory of one, a param pytree or an ``init`` function.
    loss_fn: the training loss of a batch (a scalar), optionally with an aux dict.
    train_data: a pytree of arrays with a shared leading axis, ``batch_fn``, or an
      iterable of batches.
    val_data: a pytree of arrays (or a finite iterable of batches) for evaluation, or None.
    batch_size: examples per mini-batch (array data); a search may vary it.
    metrics_fn: more metrics of a trained model on ``val_data``'s batches.
    eval_batch_size: examples per batch when the metrics are computed (default: the
      problem's ``batch_size``, whose training step already fits in memory).
    data_id: a name for the training data that identifies it to a resume
      (``out_dir``, checkpoints): recorded and compared in place of the digest of
      ``train_data``'s arrays, or next to ``batch_fn``'s fingerprint for data a
      function draws from elsewhere (files, a generator, an iterable of batches).
      Without it, arrays are digested (see the tuning guide's "Run identity").

  Raises:
    ValueError: the data's leading axes differ, a batch is larger than the data, a
      value has the wrong type, ``loss_fn`` does not fit ``train_data`` or
      ``val_data``, an aux value or a metric is not a scalar, or the model factory
      lacks a value for a keyword.

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from adam_jax import tuning
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
    >>> loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
    >>> problem = tuning.Problem({"w": jnp.zeros((1, 1))}, loss, (x, 3 * x), (x, 3 * x),
    ...                          batch_size=16)
    >>> problem.kind, problem.shape_keys
    ('functional', ('batch_size',))
  """

  def __init__(self, model: Any, loss_fn: Callable[..., Any], train_data: Any,
               val_data: Any = None, *, batch_size: int = 32,
               metrics_fn: Callable[[Any, Any], dict[str, Any]] | None = None,
               eval_batch_size: int | None = None, data_id: str | None = None):
    from flax import nnx

    if not callable(loss_fn):
      raise ValueError(f"loss_fn must be a function (model, batch) -> loss, got {loss_fn!r}")
    if metrics_fn is not None and not callable(metrics_fn):
      raise ValueError(f"metrics_fn must be a function (model, data) -> dict, got {metrics_fn!r}")
    _check_positive_int("batch_size", batch_size)
    if data_id is not None and not isinstance(data_id, str):
      raise ValueError(f"data_id must be a string, got {data_id!r}")
    self.model = model
    self.loss_fn = loss_fn
    self.user_metrics_fn = metrics_fn  # the user's; metrics_fn names its results val_*
    self.metrics_fn = None if metrics_fn is None else _on_val(metrics_fn)
    self.data_id = data_id
    self.batch_size = int(batch_size)
    if eval_batch_size is not None:
      _check_positive_int("eval_batch_size", eval_batch_size)
    self.eval_batch_size = int(eval_batch_size or batch_size)
    if isinstance(model, nnx.Module):
      self.kind, self.factory = "nnx", None
    elif callable(model) and not _is_pytree_of_arrays(model):
      params = list(_signature(model).parameters)
      is_module = inspect.isclass(model) and issubclass(model, nnx.Module)
      self.kind = "nnx" if is_module or "rngs" in params else "functional"
      self.factory = model
    else:
      self.kind, self.factory = "functional", None
    self.model_keys = _keywords(self.factory) if self.factory is not None else ()
    self.stream = None
    if is_batch_iterable(train_data):
      self.stream = BatchStream(train_data)
      self.batch_fn, self.train_data, self.num_train = None, None, None
      self.batch_size = self.stream.batch_size
      self.eval_batch_size = int(eval_batch_size or self.batch_size)
    elif callable(train_data) and not _is_pytree_of_arrays(train_data):
      self.batch_fn, self.train_data, self.num_train = train_data, None, None
    else:
      self.batch_fn = None
      self.train_data, self.num_train = _arrays("train_data", train_data)
      if self.batch_size > self.num_train:
        raise ValueError(f"batch_size must be at most the number of training examples "
                         f"({self.num_train}), got {self.batch_size}")
    if is_batch_iterable(val_data):  # a finite re-iterable: its batches, concatenated
      batches = [jax.tree.map(np.asarray, b) for b in val_data]
      if not batches:
        raise ValueError("val_data is an empty iterable: it gave no batch")
      val_data = jax.tree.map(lambda *a: np.concatenate(a), *batches)
    self.val_data = None if val_data is None else _arrays("val_data", val_data)[0]
    self._bound: dict[tuple[Any, ...], _Bound] = {}  # bind()'s results, by shape
    if not self.required_keys:
      self.bind()  # checks the problem (abstractly) now, not deep in a search's tracing

  @property
  def required_keys(self) -> tuple[str, ...]:
    """The model factory's keywords without a default: a search must give them values."""
    if self.factory is None:
      return ()
    params = _signature(self.factory).parameters
    return tuple(k for k in self.model_keys if params[k].default is inspect.Parameter.empty)

  @property
  def data_source(self) -> Any:
    """What the runner trains on: the arrays, the iterable's stream, or None (``batch_fn``)."""
    return self.stream if self.stream is not None else self.train_data

  @property
  def shape_keys(self) -> tuple[str, ...]:
    """Names a search may vary that change shapes: ``batch_size`` and the factory's keywords."""
    return ("batch_size",) + tuple(k for k in self.model_keys if k != "batch_size")

  def batch_indices(self, steps: int, seed: int = 0, batch_size: int | None = None
                    ) -> np.ndarray:
    """The mini-batch indices into ``train_data`` of a run: shape ``(steps, batch_size)``.

    Each epoch is a permutation drawn with ``numpy.random.default_rng(seed)``; the last
    incomplete batch of an epoch is dropped. A run with this seed trains on
    ``jax.tree.map(lambda a: a[idx[t]], train_data)`` at step ``t``.

    Examples:
      >>> import numpy as np
      >>> from adam_jax import tuning
      >>> problem = tuning.Problem({"w": np.zeros(1)}, lambda p, b: 0.0, np.zeros((10, 1)),
      ...                          batch_size=4)
      >>> problem.batch_indices(3, seed=0).shape
      (3, 4)
    """
    if self.train_data is None:
      raise ValueError("this problem draws its batches from batch_fn, not from arrays")
    bs = self.batch_size if batch_size is None else int(batch_size)
    per_epoch = self.num_train // bs
    epochs = -(-steps // per_epoch)
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(self.num_train)[: per_epoch * bs] for _ in range(epochs)]
    return np.concatenate(idx).reshape(-1, bs)[:steps].astype(np.int32)

  def bind(self, **shape: Any) -> _Bound:
    """The problem at one point of the shape hyperparameters (private to the tuning tools).

    With a model factory, each shape is bound (checked, its functions built) once: the
    check at construction serves the search that trains the default shape.
    """
    key = self._bind_key(shape)
    if key is None:
      return _Bound(self, shape)
    if key not in self._bound:
      self._bound[key] = _Bound(self, shape)
    return self._bound[key]

  def _bind_key(self, shape: dict[str, Any]) -> tuple[Any, ...] | None:
    """The batch size and every factory keyword (defaults filled in) of ``shape``; None
    where a binding is not kept: a module or param pytree (the user may change it between
    searches), a pipeline's batches, a keyword without a value or an unhashable value."""
    if self.factory is None or self.stream is not None or not set(shape) <= {
        "batch_size", *self.model_keys}:
      return None
    params = _signature(self.factory).parameters
    values = {"batch_size": shape.get("batch_size", self.batch_size)}
    for k in self.model_keys:
      if k not in shape and params[k].default is inspect.Parameter.empty:
        return None
      values[k] = shape.get(k, params[k].default)
    key = tuple((k, type(v), v) for k, v in sorted(values.items()))
    try:
      hash(key)
    except TypeError:
      return None
    return key


class _Functions(NamedTuple):
  """The problem as pure functions of ``(params, state)`` pytrees."""

  init: Callable[[Any], tuple[Any, Any]]  # seed (int32, may be traced) -> (params, state)
  loss: Callable[..., Any]  # (params, state, batch) -> (loss, (aux, state)), train mode
  metrics: Callable[..., dict[str, Any]]  # (params, state, train_data, val_data) -> metrics
  to_user: Callable[[Any, Any], Any]  # (params, state) -> nnx.Module (eval mode) or params


class _Bound:
  """A :class:`Problem` with its shape hyperparameters fixed."""

  def __init__(self, problem: Problem, shape: dict[str, Any]):
    self.problem = problem
    shape = dict(shape)
    if problem.stream is not None and "batch_size" in shape:
      raise ValueError("batch_size cannot be searched when train_data is an iterable of "
                       "batches: the pipeline sets it")
    self.batch_size = int(shape.pop("batch_size", problem.batch_size))
    _check_positive_int("batch_size", self.batch_size)
    if problem.num_train is not None and self.batch_size > problem.num_train:
      raise ValueError(f"batch_size must be at most the number of training examples "
                       f"({problem.num_train}), got {self.batch_size}")
    self.model_shape = shape
    missing = [k for k in problem.required_keys if k not in shape]
    if missing:
      name = getattr(problem.factory, "__qualname__", repr(problem.factory))
      raise ValueError(f"the model factory {name} has no default for "
                       f"{', '.join(missing)}: give {'it' if len(missing) == 1 else 'them'} "
                       f"a value in the search's space (e.g. {{{missing[0]!r}: [...]}}) or "
                       "a default in the factory")
    self.fns = _nnx_functions(problem, shape) if problem.kind == "nnx" else _functional(
        problem, shape)
    self._check_loss()

  def batch(self, data: Any, idx: jax.Array) -> Any:
    return jax.tree.map(lambda a: a[idx], data)

  def _check_loss(self) -> None:
    """Evaluates the problem abstractly (``jax.eval_shape``): an error names what fails."""
    p = self.problem
    params, state = _abstractly("the model", self.fns.init, jnp.zeros((), jnp.int32))
    if p.batch_fn is not None:
      batch = _abstractly("batch_fn(step, key)", p.batch_fn, jnp.zeros((), jnp.int32),
                          jax.random.key(0))
      what = "a batch of batch_fn"
    elif p.stream is not None:
      batch = p.stream.shapes()
      what = "a batch of train_data"
    else:
      batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((self.batch_size,) + a.shape[1:],
                                                          a.dtype), p.train_data)
      what = "a batch of train_data"
    checks = [(what, batch)] + ([] if p.val_data is None else [("val_data", p.val_data)])
    for what, data in checks:
      loss, (aux, _) = _abstractly(f"loss_fn(model, {what})", self.fns.loss, params, state,
                                   data)
      if loss.shape != () or not jnp.issubdtype(loss.dtype, jnp.floating):
        raise ValueError(f"loss_fn must return a scalar floating-point loss (or (loss, aux)), "
                         f"got shape {loss.shape} and dtype {loss.dtype} on {what}")
      for key, value in (aux.items() if isinstance(aux, dict) else ()):
        if jnp.shape(value) != ():
          raise ValueError(f"loss_fn's aux {key!r} has shape {jnp.shape(value)} on {what}: "
                           f"aux values are metrics ({val_name(key)}) and must be scalars; "
                           "reduce it to one number or leave it out")
    if p.metrics_fn is not None and p.val_data is not None:
      _abstractly("metrics_fn(model, val_data)",
                  lambda params, state: _check_metrics(p.metrics_fn(
                      self.fns.to_user(params, state), p.val_data)), params, state)


def _abstractly(what: str, fn: Callable[..., Any], *args: Any) -> Any:
  """``jax.eval_shape(fn, *args)``; an error names ``what`` failed (and keeps its cause)."""
  try:
    return jax.eval_shape(fn, *args)
  except ValueError as err:
    if str(err).startswith(("loss_fn", "metrics_fn", "init returned", "the model factory")):
      raise  # ours, already named
    raise ValueError(f"{what} fails: {_first_line(err)}") from err
  except Exception as err:  # noqa: BLE001 - shapes that do not fit: TypeError and others
    raise ValueError(f"{what} fails: {_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
  text = str(err).strip()
  return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _on_val(metrics_fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
  """``metrics_fn`` with its names given the validation data's prefix, ``val_``."""

  def named(model: Any, data: Any) -> Any:
    out = metrics_fn(model, data)
    if not isinstance(out, dict):
      return out  # refused by _check_metrics, with its type
    return {val_name(k): v for k, v in out.items()}

  return named


def val_name(name: Any) -> str:
  """The metric name of ``name`` on the validation data: ``val_<name>`` (once)."""
  name = str(name)
  return name if name.startswith("val_") else f"val_{name}"


def _check_positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _is_pytree_of_arrays(x: Any) -> bool:
  leaves = jax.tree.leaves(x)
  return bool(leaves) and all(isinstance(v, (jax.Array, np.ndarray, np.generic, float, int))
                              for v in leaves)


def _signature(factory: Callable[..., Any]) -> inspect.Signature:
  """The factory's signature; a class's is its ``__init__``'s without ``self``."""
  if inspect.isclass(factory):
    sig = inspect.signature(factory.__init__)
    return sig.replace(parameters=list(sig.parameters.values())[1:])
  return inspect.signature(factory)


def _keywords(factory: Callable[..., Any]) -> tuple[str, ...]:
  """The factory's keywords other than its ``rngs`` (or its first, the key)."""
  params = list(_signature(factory).parameters.values())
  params = [p for p in params if p.name != "rngs"] if any(
      p.name == "rngs" for p in params) else params[1:]
  return tuple(p.name for p in params
               if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _arrays(name: str, data: Any) -> tuple[Any, int]:
  """The data as NumPy arrays (kept on the host) and its number of examples."""
  leaves, treedef = jax.tree.flatten(data)
  if not leaves:
    raise ValueError(f"{name} must be a pytree of arrays (or a function), got {data!r}")
  arrays = [np.asarray(v) for v in leaves]
  if any(a.ndim == 0 for a in arrays):
    raise ValueError(f"{name}: every array needs a leading axis of examples, got a scalar")
  sizes = {a.shape[0] for a in arrays}
  if len(sizes) > 1:
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(data)[0]]
    shown = ", ".join(f"{p or 'data'}: {a.shape[0]}" for p, a in zip(paths, arrays))
    raise ValueError(f"{name}: the arrays' leading axes differ ({shown})")
  return jax.tree.unflatten(treedef, arrays), sizes.pop()


def _split_loss(out: Any) -> tuple[Any, Any]:
  if isinstance(out, tuple) and len(out) == 2:
    return out[0], out[1]
  return out, None


def _default_metrics(loss_fn: Callable[..., Any], model: Callable[[], Any], train_data: Any,
                     val_data: Any, metrics_fn: Callable[..., Any] | None,
                     batch_size: int) -> dict[str, Any]:
  """The metrics of ``model()`` (built afresh for each batch), each a batched mean."""
  out = {}
  if train_data is not None:
    out.update(batched_mean(lambda b: {"train_loss": _split_loss(loss_fn(model(), b))[0]},
                            train_data, batch_size))
  if val_data is not None:
    def on_val(batch):
      m = model()
      loss, aux = _split_loss(loss_fn(m, batch))
      values = {"val_loss": loss}
      if isinstance(aux, dict):
        values.update({val_name(k): v for k, v in aux.items() if jnp.shape(v) == ()})
      if metrics_fn is not None:
        values.update(_check_metrics(metrics_fn(m, batch)))
      return values

    out.update(batched_mean(on_val, val_data, batch_size))
  return out


def batched_mean(fn: Callable[[Any], dict[str, Any]], data: Any, batch_size: int
                 ) -> dict[str, jax.Array]:
  r"""The example-weighted mean of ``fn(batch)`` over ``data`` in batches of ``batch_size``.

  :math:`\frac{1}{N}\sum_b n_b\,fn(B_b)`: the full batches in one ``lax.scan`` (so only
  one batch's activations are alive at a time), the last partial batch in one more call;
  sums in float32.
  """
  n = jax.tree.leaves(data)[0].shape[0]
  full, rest = divmod(n, batch_size)
  total = None
  if full:
    head = jax.tree.map(lambda a: a[:full * batch_size].reshape(
        (full, batch_size) + a.shape[1:]), data)

    def body(acc, batch):
      return {k: acc[k] + jnp.asarray(v, jnp.float32) for k, v in fn(batch).items()}, None

    first = jax.tree.map(lambda a: a[0], head)
    zeros = {k: jnp.zeros((), jnp.float32) for k in jax.eval_shape(fn, first)}
    total, _ = jax.lax.scan(body, zeros, head)
    total = jax.tree.map(lambda t: t * np.float32(batch_size), total)
  if rest:
    tail = jax.tree.map(lambda a: a[full * batch_size:], data)
    last = {k: jnp.asarray(v, jnp.float32) * np.float32(rest) for k, v in fn(tail).items()}
    total = last if total is None else jax.tree.map(jnp.add, total, last)
  return {k: v / np.float32(n) for k, v in total.items()}


def _check_metrics(metrics: Any) -> dict[str, Any]:
  if not isinstance(metrics, dict):
    raise ValueError(f"metrics_fn must return a dict of scalars, got {type(metrics).__name__}")
  for key, value in metrics.items():
    if jnp.shape(value) != ():
      raise ValueError(f"metrics_fn's {key!r} must be a scalar, got shape {jnp.shape(value)}")
  return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def _functional(problem: Problem, shape: dict[str, Any]) -> _Functions:
  if problem.factory is None:
    if shape:
      raise ValueError(f"{', '.join(shape)}: a param pytree has no shape hyperparameters; "
                       "pass init(key, **hparams) instead")
    params = jax.tree.map(jnp.asarray, problem.model)
    init = lambda seed: (params, _NO_STATE)
  else:
    def init(seed):
      params = problem.factory(jax.random.key(seed), **shape)
      if type(params).__module__.startswith("flax"):
        raise ValueError("init returned a Flax module: name the factory's parameter 'rngs' "
                         "for the NNX form")
      return params, _NO_STATE

  def loss(params, state, batch):
    value, aux = _split_loss(problem.loss_fn(params, batch))
    return value, (aux, state)

  def metrics(params, state, train_data, val_data):
    del state
    return _default_metrics(problem.loss_fn, lambda: params, train_data, val_data,
                            problem.metrics_fn, problem.eval_batch_size)

  return _Functions(init, loss, metrics, lambda params, state: params)


def _nnx_functions(problem: Problem, shape: dict[str, Any]) -> _Functions:
  from flax import nnx

  filters = (nnx.Param, nnx.RngKey, ...)

  def graphdefs(module):
    module = nnx.clone(module)
    module.train()
    train_def = nnx.split(module, *filters)[0]
    module.eval()
    return train_def, nnx.split(module, *filters)[0]

  if problem.factory is None:
    if shape:
      raise ValueError(f"{', '.join(shape)}: a module has no shape hyperparameters; "
                       "pass a factory model(rngs, **hparams) instead")
    train_def, eval_def = graphdefs(problem.model)
    _, params0, keys0, rest0 = nnx.split(problem.model, *filters)

    def init(seed):  # seed 0: the module's own RNG streams; others: folded with the seed
      keys = jax.tree.map(lambda k: jax.lax.cond(seed == 0, lambda: k,
                                                 lambda: jax.random.fold_in(k, seed)), keys0)
      return params0, (keys, rest0)
  else:
    build = lambda seed: problem.factory(rngs=nnx.Rngs(jax.random.key(seed)), **shape)
    module = nnx.eval_shape(lambda: build(np.int32(0)))
    if not isinstance(module, nnx.Module):
      raise ValueError(f"the model factory must return an nnx.Module, got "
                       f"{type(module).__name__}")
    train_def, eval_def = graphdefs(module)
    def init(seed):
      params, keys, rest = nnx.split(build(seed), *filters)[1:]
      return params, (keys, rest)

  def loss(params, state, batch):
    module = nnx.merge(train_def, params, *state, copy=True)
    value, aux = _split_loss(problem.loss_fn(module, batch))
    _, _, keys, rest = nnx.split(module, *filters)
    return value, (aux, (keys, rest))

  def metrics(params, state, train_data, val_data):
    return _default_metrics(problem.loss_fn, lambda: nnx.merge(eval_def, params, *state,
                                                               copy=True),
                            train_data, val_data, problem.metrics_fn, problem.eval_batch_size)

  def to_user(params, state):
    return nnx.merge(eval_def, params, *state, copy=True)

  return _Functions(init, loss, metrics, to_user)
