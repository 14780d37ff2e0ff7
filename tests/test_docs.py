"""The documentation builds without warnings and has an entry for every public name."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import subprocess
import sys

import pytest

import adam_jax

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"

pytestmark = pytest.mark.slow


def _public_names() -> set[str]:
  """``module.name`` for every name of the public surface, submodules included."""
  names = set()
  modules = ["adam_jax"] + [f"adam_jax.{n}" for n in adam_jax.__all__
                            if inspect.ismodule(getattr(adam_jax, n))]
  modules += ["adam_jax.tuning", "adam_jax.tasks"]
  for module_name in dict.fromkeys(modules):
    module = importlib.import_module(module_name)
    for name in module.__all__:
      if not inspect.ismodule(getattr(module, name)):
        names.add(f"{module_name}.{name}")
  return names


def test_every_public_name_has_a_page_entry(tmp_path):
  pytest.importorskip("sphinx")
  pytest.importorskip("myst_nb")
  from sphinx.util.inventory import InventoryFile

  out = tmp_path / "html"
  build = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS),
                          str(out)], capture_output=True, text=True, timeout=600)
  assert build.returncode == 0, build.stderr[-3000:]
  with open(out / "objects.inv", "rb") as f:
    inventory = InventoryFile.load(f, "", lambda base, uri: uri)
  documented = {name for entries in inventory.values() for name in entries}
  missing = sorted(_public_names() - documented)
  assert not missing, f"public names without a page entry: {missing}"
