"""Suggestions for misspelt names: the "did you mean" of error messages."""

from __future__ import annotations

from collections.abc import Iterable


def did_you_mean(word: object, options: Iterable[object]) -> str:
  """`` (did you mean 'x'?)`` for the option closest to ``word``, or ``""`` when none is close.

  Case is ignored and ``-`` and ``_`` count as one (``learning-rate``, ``Adamw``).

  Examples:
    >>> did_you_mean("adamm", ["adam", "adamw", "nadam"])
    " (did you mean 'adam'?)"
    >>> did_you_mean("learning-rate", ["learning_rate", "b1"])
    " (did you mean 'learning_rate'?)"
    >>> did_you_mean("zzz", ["adam"])
    ''
  """
  import difflib  # only when a name is wrong

  if not isinstance(word, str):
    return ""
  names = {str(o).lower().replace("-", "_"): str(o) for o in options}
  close = difflib.get_close_matches(word.lower().replace("-", "_"), list(names), n=1, cutoff=0.6)
  return f" (did you mean {names[close[0]]!r}?)" if close else ""
