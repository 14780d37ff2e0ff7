"""Save and restore optimizer state, or any pytree of arrays, with orbax.

``orbax.checkpoint`` stores a pytree's arrays; read back without a target it gives
nested dicts and lists, so ``ScaleByAdamState``, ``optax.EmptyState`` and every
other NamedTuple is lost (flax issue #4423). :func:`restore` therefore always takes
``like``, a tree with the structure wanted (a real state, or the abstract one from
``jax.eval_shape``), checks the checkpoint against it leaf by leaf and rebuilds it
with exactly that structure. Arrays round-trip bit for bit, so a run interrupted
after step ``k`` and resumed from the checkpoint takes the same steps as one that
never stopped.

A checkpoint is a directory that holds one or more *saves*::

  path/adam_jax_checkpoint.json     marks the directory as written here
  path/save_00000007/               one complete save: orbax's files and
    adam_jax_manifest.json          every leaf's name, shape, dtype and kind, and
                                    the SHA-256 digest and size of every file

A save is written aside (``path/.tmp-00000007``), its files are hashed and synced,
and only then is it renamed to its final name, so a save that is interrupted (Ctrl-C,
``SIGKILL``) leaves the previous saves as they were. Older saves are removed after
the new one is in place: :func:`save` keeps one, :func:`save_rotating` ``keep``.
:func:`restore` reads the newest save and checks every file against its digest first,
so a flipped byte or a truncated file is a :class:`CheckpointCorruptError` naming the
leaf, never a wrong number; :func:`restore_latest` falls back to the previous save,
with a :class:`CheckpointFallbackWarning`, when the newest is corrupt.

Leaves may be JAX arrays (sharded too, across processes), NumPy arrays, typed PRNG key
arrays (``jax.random.key``) and Python scalars; each comes back as the type of the
corresponding leaf of ``like``. Zero-size arrays, which orbax refuses to write, are
recorded by shape and dtype only. orbax-checkpoint is an optional dependency, imported
on first use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import warnings
from typing import Any

import jax
import numpy as np

from adam_jax import _files, _lock
from adam_jax._fingerprint import changes
from adam_jax._lock import DirectoryLockedError
from adam_jax._tree import key_name

_MARKER = "adam_jax_checkpoint.json"
_MANIFEST = "adam_jax_manifest.json"
_FORMAT = {"format": "adam_jax.checkpoint", "version": 1}
_SAVE = re.compile(r"save_(\d{8,})")
_SCRATCH = (".tmp-", ".trash-")  # prefixes of our unfinished writes and removals
_PY_SCALARS = {"bool": bool, "int": int, "float": float, "complex": complex}


class CheckpointError(ValueError):
  """Base class of the errors of this module: something is wrong with a checkpoint."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """Raised by :func:`restore` when no checkpoint exists at the path given."""


class CheckpointCorruptError(CheckpointError):
  """Raised when a checkpoint's files are missing, truncated or do not match their digests."""


class CheckpointMismatchError(CheckpointError):
  """Raised when a checkpoint holds other leaves (names, shapes, dtypes) than ``like``."""


class CheckpointIdentityError(CheckpointMismatchError):
  """Raised when a checkpoint was written by another run than the ``identity`` given."""


class CheckpointFallbackWarning(UserWarning):
  """Warned by :func:`restore_latest` when it restores an older save than the newest."""


class _DropOrbaxOcdbtNotice(logging.Filter):
  """orbax logs a warning on every save without OCDBT that says nothing is wrong."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Skipping merge of OCDBT checkpoints" not in str(record.msg)


def _orbax():
  try:
    import orbax.checkpoint as ocp
  except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "adam_jax.checkpoint needs orbax-checkpoint: pip install orbax-checkpoint"
    ) from err
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropOrbaxOcdbtNotice) for f in absl_logger.filters):
    absl_logger.addFilter(_DropOrbaxOcdbtNotice())
  return ocp


def _checkpointer():
  ocp = _orbax()
  # Without OCDBT every leaf is its own directory of files, so a file that fails its
  # digest names the leaf it belongs to.
  return ocp.Checkpointer(ocp.StandardCheckpointHandler(use_ocdbt=False))


def _leaf_name(path: tuple) -> str:
  """``(SequenceKey(0), GetAttrKey('mu'), DictKey('w'))`` -> ``"0.mu.w"``."""
  return ".".join(key_name(k) for k in path) or "<root>"


def _absolute(path: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(os.fspath(path)).expanduser().absolute()


def _is_key(dtype: Any) -> bool:
  return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _dtype_name(dtype: Any) -> str:
  return str(dtype) if _is_key(dtype) else np.dtype(dtype).name


def _describe(shape: Any, dtype: str) -> str:
  return f"{dtype}{list(shape)}"


def _primary() -> bool:
  return jax.process_index() == 0


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"adam_jax.checkpoint.{name}")


# ----------------------------------------------------------------------------- saving


def _entries(state: Any) -> tuple[list[dict], dict[str, Any]]:
  """Describes every leaf of ``state``; returns the descriptions and orbax's flat tree."""
  entries, tree, seen = [], {}, {}
  for i, (key_path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(state)[0]):
    name = _leaf_name(key_path)
    if name in seen:
      raise CheckpointError(
          f"two leaves are both named {name!r}: {seen[name]} and "
          f"{jax.tree_util.keystr(key_path)}; rename one of the keys")
    seen[name] = jax.tree_util.keystr(key_path)
    entry = {"name": name}
    if isinstance(leaf, (bool, int, float, complex)) and not isinstance(leaf, np.generic):
      entry["kind"] = type(leaf).__name__
      data = np.asarray(leaf)
    elif isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
      entry["kind"] = "array"
      data = leaf
      if _is_key(leaf.dtype):
        entry["kind"], entry["impl"] = "key", str(jax.random.key_impl(leaf))
        data = jax.random.key_data(leaf)
    else:
      raise CheckpointError(
          f"leaf {name} is a {type(leaf).__name__}; a checkpoint holds arrays, typed PRNG "
          "keys and Python scalars")
    entry["shape"] = list(np.shape(leaf))
    entry["dtype"] = _dtype_name(getattr(leaf, "dtype", data.dtype))
    # What orbax holds: the key data of a key array, the array itself otherwise.
    entry["data_shape"], entry["data_dtype"] = list(np.shape(data)), _dtype_name(data.dtype)
    if np.size(data):
      entry["key"] = str(i)
      tree[str(i)] = data
    entries.append(entry)
  return entries, tree


def _read_marker(path: pathlib.Path) -> bool:
  """Whether ``path`` is marked as a checkpoint written here; a damaged mark is an error."""
  marker = path / _MARKER
  if not marker.is_file():
    return False
  try:
    if json.loads(marker.read_text()) == _FORMAT:
      return True
  except (OSError, ValueError):
    pass
  raise CheckpointCorruptError(f"{marker} is damaged: it should hold {json.dumps(_FORMAT)}")


def _check_target(path: pathlib.Path, *, overwrite: bool, add: bool) -> None:
  """Refuses to write over anything that is not a checkpoint written here."""
  if not path.exists():
    return
  if not path.is_dir():
    raise CheckpointError(f"refusing to write a checkpoint at {path}: it is a file")
  if not _read_marker(path):
    if any(p.name != _lock.LOCK_NAME for p in path.iterdir()):
      raise CheckpointError(
          f"refusing to write a checkpoint into {path}: the directory is not empty and is "
          f"not a checkpoint written by adam_jax.checkpoint (no {_MARKER})")
    return
  if not (overwrite or add) and _saves(path):
    raise CheckpointError(
        f"checkpoint path {path} already exists; pass overwrite=True to replace it")


def _saves(path: pathlib.Path) -> list[pathlib.Path]:
  """The complete saves in ``path``, newest first."""
  try:
    names = [p for p in path.iterdir() if _SAVE.fullmatch(p.name) and p.is_dir()]
  except OSError:
    return []
  return sorted(names, key=lambda p: int(_SAVE.fullmatch(p.name)[1]), reverse=True)


def _fsync_directory(path: pathlib.Path) -> None:
  """Makes a directory's entries durable, where the platform can (not on Windows)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _hash_file(path: pathlib.Path) -> tuple[str, int]:
  digest, size = hashlib.sha256(), 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
      size += len(chunk)
    os.fsync(f.fileno())
  return digest.hexdigest(), size


def _write_json(path: pathlib.Path, value: Any) -> None:
  """Writes ``value`` to ``path`` by an atomic rename of a synced temporary file."""
  tmp = path.with_name(f".tmp-{path.name}")
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _remove(path: pathlib.Path) -> None:
  """Removes a save: renamed away first, so no half-deleted save is ever seen."""
  trash = path.with_name(f".trash-{path.name}")
  os.replace(path, trash)
  shutil.rmtree(trash, ignore_errors=True)


def _save(path: str | os.PathLike, state: Any, *, keep: int, overwrite: bool, add: bool,
          identity: Any = None, lock: bool = False) -> pathlib.Path:
  entries, tree = _entries(state)  # refuses bad trees before anything is written
  identity = None if identity is None else _json_value(identity)
  path = _absolute(path)
  _check_target(path, overwrite=overwrite, add=add)
  if lock and jax.process_count() == 1:  # (across processes, process 0 could not refuse
    _lock.acquire(path)  # alone) one writer: a second process is refused, naming the holder
  # Ctrl-C waits for the save to be committed (orbax's threads and event loop, stopped
  # mid-write, print dozens of tracebacks); a second Ctrl-C stops it at once.
  with _files.interrupts_held(second_raises=True):
    return _write(path, entries, tree, keep=keep, identity=identity)


def _write(path: pathlib.Path, entries: list[dict], tree: dict[str, Any], *, keep: int,
           identity: Any) -> pathlib.Path:
  _sync("checked")
  if _primary():
    path.mkdir(parents=True, exist_ok=True)
    if not _read_marker(path):
      _write_json(path / _MARKER, _FORMAT)
    for stale in path.iterdir():  # left by a save or removal that was killed
      if stale.name.startswith(_SCRATCH):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
  _sync("prepared")
  saves = _saves(path)
  number = int(_SAVE.fullmatch(saves[0].name)[1]) + 1 if saves else 1
  final = path / f"save_{number:08d}"
  tmp = path / f".tmp-{final.name}"
  try:
    if tree:
      with _checkpointer() as checkpointer:
        checkpointer.save(tmp, args=_orbax().args.StandardSave(tree))
    elif _primary():
      tmp.mkdir()
    _sync("written")
    if _primary():
      files = {}
      for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
        digest, size = _hash_file(file)
        files[file.relative_to(tmp).as_posix()] = {"sha256": digest, "size": size}
      body = {"leaves": entries, "files": files}
      if identity is not None:
        body["identity"] = identity
      _write_json(tmp / _MANIFEST, {"body": body, "sha256": _json_digest(body)})
      _fsync_directory(tmp)
      os.replace(tmp, final)
      _fsync_directory(path)
      for old in saves[max(keep - 1, 0):]:
        _remove(old)
  except BaseException:
    if _primary():  # with orbax's own temporary directory, named after ours
      for partial in path.glob(f"{tmp.name}*"):
        shutil.rmtree(partial, ignore_errors=True)
    raise
  _sync("committed")
  return path


def _json_digest(value: Any) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _json_value(identity: Any) -> dict[str, Any]:
  """``identity`` as it reads back from the manifest (a mapping of JSON values)."""
  try:
    return json.loads(json.dumps(dict(identity)))
  except (TypeError, ValueError) as err:
    raise CheckpointError(f"identity must be a mapping of JSON values, got {identity!r}"
                          ) from err


def save(path: str | os.PathLike, state: Any, *, overwrite: bool = False,
         identity: Any = None) -> pathlib.Path:
  """Writes ``state`` (any pytree of arrays) to the checkpoint directory ``path``.

  The new save is written aside and switched in by a rename once complete, so the
  checkpoint at ``path`` is at every moment either the previous save or the new one,
  whatever interrupts the process. Ctrl-C during a save waits until it is committed,
  then raises ``KeyboardInterrupt`` (a second Ctrl-C raises at once).

  Args:
    path: directory to create; relative paths are taken from the working
      directory. Its parent directories are created as needed. An existing empty
      directory is used as it is.
    state: the pytree to save: an optimizer state, ``(params, opt_state)``, ...
      Leaves are arrays (JAX, also sharded over processes, or NumPy), typed PRNG
      key arrays or Python scalars; ``None`` and empty nodes are kept.
    overwrite: replace an existing checkpoint at ``path`` instead of raising.
    identity: what defines the run that writes it (a mapping of JSON values: flags,
      digests, ...), kept with the save; :func:`restore` given an ``identity`` refuses a
      save of another one.

  Returns:
    The absolute path written.

  Raises:
    CheckpointError: ``path`` is a checkpoint and ``overwrite`` is false; ``path`` is
      a file or a non-empty directory that is not a checkpoint written here (even
      with ``overwrite``); two leaves have the same name (``{"a.b": x, "a": {"b": y}}``);
      a leaf is not an array, a key array or a Python scalar.

  Examples:
    >>> import tempfile, jax.numpy as jnp, adam_jax
    >>> from adam_jax import checkpoint
    >>> tx = adam_jax.adam(1e-3)
    >>> state = tx.init({"w": jnp.ones(3)})
    >>> path = checkpoint.save(tempfile.mkdtemp() + "/step_10", state)
    >>> restored = checkpoint.restore(path, like=state)
    >>> type(restored[0]).__name__
    'ScaleByAdamState'
  """
  return _save(path, state, keep=1, overwrite=overwrite, add=False, identity=identity)


def save_rotating(path: str | os.PathLike, state: Any, *, keep: int = 2,
                  identity: Any = None) -> pathlib.Path:
  """Adds a save of ``state`` to the checkpoint at ``path``, keeping the newest ``keep``.

  For a training loop that checkpoints every so often: with ``keep=2`` the previous
  save survives a newest one that is later found corrupt, and :func:`restore_latest`
  falls back to it.

  One process writes a directory: the first save takes its lock (the file
  ``.adam_jax.lock``, naming the process, its host and its start time), and a save from
  another process is refused with a ``DirectoryLockedError`` naming the holder. The lock
  is held until the process exits (or, inside :func:`adam_jax.tuning.train` or a search,
  until it returns); a lock whose process is gone is taken over with a one-line
  ``StaleLockWarning``. (A run of several processes, which write a save together, takes
  no lock here: its search holds the lock of its ``out_dir``.)

  Args:
    path: the checkpoint directory, created if needed (as in :func:`save`).
    state: the pytree to save, as in :func:`save`.
    keep: how many saves to keep, the new one included (at least 1).
    identity: what defines the run, as in :func:`save`.

  Returns:
    The absolute path written.

  Raises:
    CheckpointError: as :func:`save` (an existing checkpoint is added to, never refused).
    DirectoryLockedError: another process writes to ``path``.
    ValueError: ``keep`` is below 1.

  Examples:
    >>> import tempfile, jax.numpy as jnp
    >>> from adam_jax import checkpoint
    >>> path = tempfile.mkdtemp() + "/run"
    >>> for step in range(3):
    ...   _ = checkpoint.save_rotating(path, {"step": jnp.int32(step)}, keep=2)
    >>> int(checkpoint.restore_latest(path, like={"step": jnp.int32(0)})["step"])
    2
  """
  if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
    raise ValueError(f"keep must be an integer of at least 1, got {keep!r}")
  return _save(path, state, keep=keep, overwrite=False, add=True, identity=identity, lock=True)


# --------------------------------------------------------------------------- restoring


def _read_manifest(save_dir: pathlib.Path) -> dict:
  file = save_dir / _MANIFEST
  try:
    manifest = json.loads(file.read_text())
    body = manifest["body"]
    intact = manifest["sha256"] == _json_digest(body)
  except FileNotFoundError as err:
    raise CheckpointCorruptError(f"{file} is missing") from err
  except (OSError, ValueError, KeyError, TypeError) as err:
    raise CheckpointCorruptError(f"{file} is unreadable: {err}") from err
  if not intact:
    raise CheckpointCorruptError(f"{file} does not match its digest")
  return body


def _verify(save_dir: pathlib.Path, body: dict) -> None:
  """Checks every file of a save against its size and digest."""
  leaf_of = {e["key"]: e["name"] for e in body["leaves"] if "key" in e}
  for rel, want in body["files"].items():
    top = rel.split("/", 1)[0]
    what = f"leaf {leaf_of[top]}" if top in leaf_of else "the checkpoint's metadata"
    file = save_dir / rel
    try:
      digest, size = _hash_file(file)
    except OSError as err:
      raise CheckpointCorruptError(
          f"{what} is unreadable: {file} ({err.strerror or err})") from err
    if size != want["size"]:
      raise CheckpointCorruptError(
          f"{what} is truncated or altered: {file} holds {size} bytes, {want['size']} "
          "were written")
    if digest != want["sha256"]:
      raise CheckpointCorruptError(
          f"{what} is corrupt: {file} does not match the SHA-256 digest written with it")


def _concrete_mesh(abstract: Any) -> Any:
  """A concrete mesh for an abstract one: the current mesh if it fits, else a new one."""
  current = jax.sharding.get_mesh()
  if (not current.empty and current.axis_names == abstract.axis_names
      and current.axis_sizes == abstract.axis_sizes):
    return current
  return jax.make_mesh(abstract.axis_sizes, abstract.axis_names,
                       axis_types=abstract.axis_types)


def _sharding(leaf: Any) -> Any:
  """The sharding to restore one leaf of ``like`` with, or ``None`` for the default."""
  sharding = getattr(leaf, "sharding", None)
  if isinstance(leaf, jax.core.Tracer) or sharding is None:
    return None
  if (isinstance(sharding, jax.sharding.NamedSharding)
      and isinstance(sharding.mesh, jax.sharding.AbstractMesh)):
    sharding = jax.sharding.NamedSharding(_concrete_mesh(sharding.mesh), sharding.spec,
                                          memory_kind=sharding.memory_kind)
  return sharding


def _default_sharding() -> Any:
  """For a leaf of ``like`` without a sharding: replicated over the current mesh, if one
  is set (``jax.set_mesh``), else on this process's first device."""
  mesh = jax.sharding.get_mesh()
  if not mesh.empty:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _key_data_sharding(sharding: Any, ndim: int) -> Any:
  """The sharding of ``key_data`` of a key array with ``sharding`` (one more axis)."""
  if isinstance(sharding, jax.sharding.NamedSharding):
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec) + 1)
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
  if isinstance(sharding, jax.sharding.SingleDeviceSharding):
    return sharding
  return None


def _want(leaf: Any) -> tuple[str, tuple, str]:
  """(kind, shape, dtype name) of one leaf of ``like``."""
  if isinstance(leaf, (bool, int, float, complex)) and not isinstance(leaf, np.generic):
    return "python", (), np.asarray(leaf).dtype.name
  if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
    raise CheckpointMismatchError(
        f"`like` has a leaf of type {type(leaf).__name__}; expected arrays, "
        "jax.ShapeDtypeStruct, typed PRNG keys or Python scalars")
  kind = "numpy" if isinstance(leaf, (np.ndarray, np.generic)) else "jax"
  return kind, tuple(leaf.shape), _dtype_name(leaf.dtype)


def _restore_save(save_dir: pathlib.Path, like: Any, identity: Any = None) -> Any:
  body = _read_manifest(save_dir)
  if identity is not None:
    found = changes(body.get("identity") or {}, _json_value(identity))
    if found:
      raise CheckpointIdentityError(
          f"the checkpoint at {save_dir.parent} belongs to another run: {'; '.join(found)}")
  _verify(save_dir, body)
  stored = {e["name"]: e for e in body["leaves"]}
  like_with_path, treedef = jax.tree_util.tree_flatten_with_path(like)
  names = [_leaf_name(key_path) for key_path, _ in like_with_path]
  missing = [n for n in names if n not in stored]
  extra = sorted(set(stored) - set(names))
  if missing or extra:
    raise CheckpointMismatchError(
        f"the checkpoint at {save_dir.parent} holds a different tree than `like`: "
        f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
        f"not in `like` {extra[:5]}{' ...' if len(extra) > 5 else ''}")
  target, plan = {}, []
  for name, (_, leaf) in zip(names, like_with_path):
    entry = stored[name]
    kind, shape, dtype = _want(leaf)
    if tuple(entry["shape"]) != shape or entry["dtype"] != dtype:
      raise CheckpointMismatchError(
          f"leaf {name} of the checkpoint at {save_dir.parent} is "
          f"{_describe(entry['shape'], entry['dtype'])}, but `like` has {_describe(shape, dtype)}")
    sharding = None if kind != "jax" else _sharding(leaf)
    data_shape, data_dtype = tuple(entry["data_shape"]), entry["data_dtype"]
    if "key" in entry:
      if kind == "jax":
        sharding = sharding or _default_sharding()
        data_sharding = (_key_data_sharding(sharding, len(shape)) if entry["kind"] == "key"
                         else sharding)
        target[entry["key"]] = jax.ShapeDtypeStruct(data_shape, data_dtype,
                                                    sharding=data_sharding)
      else:
        target[entry["key"]] = np.zeros(data_shape, data_dtype)
    plan.append((entry, kind, data_shape, data_dtype, sharding, leaf))
  restored = {}
  if target:
    with _checkpointer() as checkpointer:
      restored = checkpointer.restore(save_dir, args=_orbax().args.StandardRestore(target))
  leaves = []
  for entry, kind, data_shape, data_dtype, sharding, leaf in plan:
    if "key" in entry:
      value = restored[entry["key"]]
    else:
      value = np.zeros(data_shape, data_dtype)
      if kind == "jax":
        # Placed (committed) like the arrays orbax restores, so one jitted step sees
        # one signature for the whole tree.
        value = jax.device_put(
            value, sharding or _default_sharding())
    if entry["kind"] == "key":
      value = jax.random.wrap_key_data(value, impl=entry["impl"])
    if kind == "python":
      value = type(leaf)(np.asarray(value).item())
    elif isinstance(leaf, np.generic):
      value = np.asarray(value)[()]  # a NumPy scalar, as in `like`
    leaves.append(value)
  return treedef.unflatten(leaves)


def _checkpoint_saves(path: str | os.PathLike) -> tuple[pathlib.Path, list[pathlib.Path]]:
  path = _absolute(path)
  if not path.exists():
    raise CheckpointNotFoundError(f"no checkpoint at {path}: the path does not exist")
  if not path.is_dir():
    raise CheckpointError(f"{path} is not a checkpoint directory (it is a file)")
  if not _read_marker(path):
    legacy = (path / "_CHECKPOINT_METADATA").exists()
    raise CheckpointError(
        f"{path} is not a checkpoint written by adam_jax.checkpoint.save "
        + ("(it was written by an earlier version, without digests; save it again)"
           if legacy else f"(no {_MARKER})"))
  saves = _saves(path)
  if not saves:
    raise CheckpointNotFoundError(f"no checkpoint at {path}: no save was completed there")
  return path, saves


def restore(path: str | os.PathLike, like: Any, *, identity: Any = None) -> Any:
  """Reads the newest save of the checkpoint at ``path`` into a tree shaped like ``like``.

  Every file is checked against the SHA-256 digest written with it before anything
  is read, so a corrupt checkpoint is an error, never a wrong value.

  Args:
    path: a directory written by :func:`save` or :func:`save_rotating`.
    like: a tree with the structure, shapes and dtypes to restore: the value
      saved, a fresh ``tx.init(params)``, or its abstract form
      ``jax.eval_shape(tx.init, params)``. Its NamedTuple types (``ScaleByAdamState``,
      ``optax.EmptyState``, chains' tuples) are the restored tree's types; a NumPy
      leaf comes back as NumPy, a Python scalar as a Python scalar, a typed key
      array as a key array. JAX arrays are placed with the sharding of ``like``'s
      leaves where they have one; a sharding over an abstract mesh (``jax.eval_shape``
      on an explicit mesh) is placed on the current mesh (``jax.set_mesh``) if its
      axes match, else on ``jax.make_mesh`` of the same axes.
    identity: the identity of the run that restores (as given to :func:`save`); a
      save written with another one, or with none, is refused.

  Returns:
    The restored tree, with ``like``'s structure.

  Raises:
    CheckpointNotFoundError: nothing exists at ``path``, or no save was completed
      there (a ``FileNotFoundError`` too).
    CheckpointCorruptError: a file is missing, truncated or altered; the message
      names the leaf.
    CheckpointMismatchError: the checkpoint's leaves differ from ``like``'s in name
      (missing and extra leaves are listed), shape or dtype.
    CheckpointIdentityError: the save was written by a run of another ``identity``
      (the fields that differ are named).
    CheckpointError: ``path`` is not a checkpoint written here. Every error above is
      a ``CheckpointError``, which is a ``ValueError``.

  Examples:
    >>> import tempfile, jax, jax.numpy as jnp, adam_jax
    >>> from adam_jax import checkpoint
    >>> tx = adam_jax.adam(1e-3)
    >>> params = {"w": jnp.ones(3)}
    >>> _, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    >>> path = checkpoint.save(tempfile.mkdtemp() + "/opt", state)
    >>> restored = checkpoint.restore(path, like=jax.eval_shape(tx.init, params))
    >>> int(restored[0].count), restored[0].nu["w"].dtype
    (1, dtype('float32'))
  """
  _, saves = _checkpoint_saves(path)
  return _restore_save(saves[0], like, identity)


def restore_latest(path: str | os.PathLike, like: Any, *, identity: Any = None) -> Any:
  """Like :func:`restore`, but falls back to an older save when the newest is corrupt.

  Each save is tried newest first; a :class:`CheckpointCorruptError` moves on to the
  next one, and restoring any but the newest warns once, in one line, with a
  :class:`CheckpointFallbackWarning`. A mismatch with ``like`` is raised at once.

  Args:
    path: a directory written by :func:`save_rotating` (or :func:`save`).
    like: the tree to restore into, as in :func:`restore`.
    identity: the run's identity, as in :func:`restore`.

  Returns:
    The newest save that is intact, with ``like``'s structure.

  Raises:
    CheckpointCorruptError: every save is corrupt (the newest one's error).
    CheckpointNotFoundError, CheckpointMismatchError, CheckpointError: as :func:`restore`.

  Examples:
    >>> import tempfile, jax.numpy as jnp
    >>> from adam_jax import checkpoint
    >>> path = checkpoint.save_rotating(tempfile.mkdtemp() + "/run", {"w": jnp.ones(2)})
    >>> checkpoint.restore_latest(path, like={"w": jnp.zeros(2)})["w"].tolist()
    [1.0, 1.0]
  """
  path, saves = _checkpoint_saves(path)
  first = None
  for save_dir in saves:
    try:
      restored = _restore_save(save_dir, like, identity)
    except CheckpointCorruptError as err:
      first = first or err
      continue
    if first is not None:
      warnings.warn(f"{saves[0].name} of the checkpoint at {path} is unusable ({first}); "
                    f"restored the older {save_dir.name}", CheckpointFallbackWarning,
                    stacklevel=2)
    return restored
  raise first


__all__ = [
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointIdentityError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "DirectoryLockedError",
    "restore",
    "restore_latest",
    "save",
    "save_rotating",
]
