"""Data for the embedded tasks: scikit-learn's bundled digits, or a user's ``.npz``."""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import zipfile
from typing import Any, NamedTuple

import numpy as np


class Dataset(NamedTuple):
  """Features and (optional) integer labels, before the train/validation split."""

  x: np.ndarray  # shape=(n, features), dtype=float32
  y: np.ndarray | None  # shape=(n,), dtype=int32; None when the data has no labels


@functools.cache
def load_digits() -> Dataset:
  """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), pixels scaled to [0, 1].

  The same arrays as ``sklearn.datasets.load_digits()``, read straight from the CSV
  file scikit-learn ships (importing scikit-learn itself takes about a second, which
  a command line should not spend); falls back to ``load_digits`` if the file moved.

  Returns:
    A ``Dataset`` with ``x`` (float32, shape (1797, 64), in [0, 1]) and ``y`` (int32
    labels 0-9).

  Raises:
    ValueError: scikit-learn is not installed.

  Examples:
    >>> from adam_jax.tasks import load_digits
    >>> data = load_digits()
    >>> data.x.shape, data.x.dtype, float(data.x.max()), sorted(set(data.y.tolist()))[-1]
    ((1797, 64), dtype('float32'), 1.0, 9)
  """
  spec = importlib.util.find_spec("sklearn")
  if spec is None:
    raise ValueError("the digits tasks need scikit-learn: pip install 'adam-jax[cli]'")
  csv_path = None
  for root in spec.submodule_search_locations or ():
    candidate = os.path.join(root, "datasets", "data", "digits.csv.gz")
    if os.path.isfile(candidate):
      csv_path = candidate
  if csv_path is not None:
    table = np.loadtxt(csv_path, delimiter=",", dtype=np.float32)
    data, target = table[:, :-1], table[:, -1]
  else:  # pragma: no cover - a future scikit-learn layout
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    data, target = bunch.data, bunch.target
  x = np.asarray(data, np.float32) / np.float32(16.0)
  return Dataset(x, np.asarray(target, np.int32))


def load_npz(path: str | os.PathLike[str], *, need_labels: bool) -> Dataset:
  """Loads arrays ``x`` (and ``y``) from a ``.npz`` file, without unpickling anything.

  Args:
    path: the file. ``x``: numeric array with one example per row (further axes are
      flattened); ``y``: non-negative integer class labels, one per example.
    need_labels: whether ``y`` must be present (classification).

  Returns:
    A :class:`Dataset`.

  Raises:
    ValueError: the file is missing, is not an ``.npz`` archive, or its arrays are
      not as described above.

  Examples:
    >>> import os, tempfile, numpy as np
    >>> from adam_jax.tasks import load_npz
    >>> path = os.path.join(tempfile.mkdtemp(), "data.npz")
    >>> np.savez(path, x=np.zeros((10, 2, 3)), y=np.arange(10) % 2)
    >>> data = load_npz(path, need_labels=True)
    >>> data.x.shape, data.x.dtype, data.y.dtype
    ((10, 6), dtype('float32'), dtype('int32'))
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"data file not found: {path}")
  if not zipfile.is_zipfile(path):
    with open(path, "rb") as f:
      magic = f.read(6)
    if magic == b"\x93NUMPY":
      raise ValueError(f"{path} is a single .npy array, not an .npz archive with 'x'")
    raise ValueError(f"{path} is not a valid .npz file (save one with numpy.savez)")
  try:
    _check_sizes(path)
    with np.load(path, allow_pickle=False) as archive:
      arrays = {k: archive[k] for k in archive.files}
  except MemoryError as err:
    raise ValueError(f"{path}: its arrays do not fit in memory ({err})") from None
  except ValueError as err:
    if "pickle" in str(err).lower():
      raise ValueError(f"{path}: arrays of Python objects are not accepted; save numeric "
                       "arrays x (and y)") from None
    raise ValueError(f"{path} is not a valid .npz file ({err})") from None
  except (OSError, zipfile.BadZipFile, EOFError) as err:
    raise ValueError(f"{path} is not a valid .npz file ({err})") from None
  if "x" not in arrays:
    found = ", ".join(sorted(arrays)) or "none"
    raise ValueError(f"{path} has no array named 'x' (found: {found})")
  x = _features(path, arrays["x"])
  y = arrays.get("y")
  if y is None:
    if need_labels:
      raise ValueError(f"{path} has no array named 'y': classification needs integer labels")
    return Dataset(x, None)
  return Dataset(x, _labels(path, y, len(x)))


def _check_sizes(path: str) -> None:
  """Refuses an archive whose array headers claim more data than its members hold.

  ``numpy.load`` allocates what a header claims before reading: a damaged header
  claiming 512 GiB would be a ``MemoryError`` (or the machine's memory) rather than a
  message about the file.
  """
  readers = {(1, 0): np.lib.format.read_array_header_1_0,
             (2, 0): np.lib.format.read_array_header_2_0}
  with zipfile.ZipFile(path) as archive:
    for info in archive.infolist():
      if not info.filename.endswith(".npy"):
        continue
      with archive.open(info) as f:
        try:
          read = readers.get(np.lib.format.read_magic(f))
          if read is None:
            continue  # a format this check does not read: numpy.load checks it
          shape, _, dtype = read(f)
        except ValueError as err:
          raise ValueError(f"the header of {info.filename!r} is damaged ({err})"
                           ) from None
        have = info.file_size - f.tell()
      claimed = math.prod(shape) * dtype.itemsize
      if claimed > have:
        raise ValueError(f"{info.filename!r} claims {_size(claimed)} (shape "
                         f"{shape}, {dtype}) but holds {_size(have)}: the file is damaged")


def _size(n: int) -> str:
  for unit in ("bytes", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.4g} {unit}" if unit != "bytes" else f"{n} bytes"
    n /= 1024
  return f"{n} bytes"  # unreachable


def _features(path: str, x: Any) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim < 2 or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
    raise ValueError(f"{path}: 'x' must be a numeric array with one example per row, "
                     f"got dtype {x.dtype} and shape {x.shape}")
  if np.iscomplexobj(x):
    raise ValueError(f"{path}: 'x' must be real, got dtype {x.dtype}")
  if len(x) < 4:
    raise ValueError(f"{path}: 'x' needs at least 4 examples, got {len(x)}")
  if x[0].size == 0:
    raise ValueError(f"{path}: 'x' has no features (shape {x.shape})")
  x = x.reshape(len(x), -1).astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{path}: 'x' contains NaN or infinite values")
  return x


def _labels(path: str, y: Any, n: int) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim != 1 or len(y) != n:
    raise ValueError(f"{path}: 'y' must be one label per example, shape ({n},), got {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{path}: 'y' must hold integer class labels, got dtype {y.dtype}")
  if y.min() < 0:
    raise ValueError(f"{path}: 'y' must hold non-negative class labels, got {y.min()}")
  top = np.iinfo(np.int32).max
  if int(y.max()) > top:  # int(): a uint64 label is compared exactly, without wrapping
    raise ValueError(f"{path}: 'y' holds the class label {int(y.max())}, more than the "
                     f"largest supported ({top})")
  return y.astype(np.int32)
