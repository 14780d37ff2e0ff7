"""Sphinx configuration: API pages from ``__all__``, notebooks rendered as guides.

Build: ``pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pathlib
import shutil
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
# The API pages import the package; flax's import-time IPython probe is not needed here.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import adam_jax  # noqa: E402

project = "adam_jax"
author = "adam_jax developers"
copyright = "2026, adam_jax developers"  # noqa: A001
release = adam_jax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# The notebooks are stored executed; the guides show their stored outputs.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

autodoc_typehints = "none"  # the docstrings' Args say what each argument is
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# A local MathJax (docs/check_rendered.py renders pages offline); readers' browsers load
# Sphinx's default CDN copy.
if os.environ.get("ADAM_JAX_DOCS_MATHJAX"):
  html_static_path = [os.environ["ADAM_JAX_DOCS_MATHJAX"]]
  mathjax_path = "tex-chtml.js"

html_theme = "sphinx_book_theme"
html_title = "adam_jax"
html_theme_options = {"show_toc_level": 2}

# ----------------------------------------------------------------------------- generated pages

# Every public module: the package itself and the submodules users import by name.
PUBLIC_MODULES = ("adam_jax", "adam_jax.schedules", "adam_jax.diagnostics",
                  "adam_jax.checkpoint", "adam_jax.quantization", "adam_jax.tuning",
                  "adam_jax.tasks")

TITLES = {
    "adam_jax": "adam_jax: transformations, aliases and the registry",
    "adam_jax.schedules": "adam_jax.schedules",
    "adam_jax.diagnostics": "adam_jax.diagnostics",
    "adam_jax.checkpoint": "adam_jax.checkpoint",
    "adam_jax.quantization": "adam_jax.quantization",
    "adam_jax.tuning": "adam_jax.tuning",
    "adam_jax.tasks": "adam_jax.tasks",
}


def public_names(module_name: str) -> list[str]:
  """The names a page documents: the module's ``__all__``, submodules left out."""
  module = importlib.import_module(module_name)
  return [n for n in module.__all__ if not inspect.ismodule(getattr(module, n))]


def _directive(obj) -> str:
  if inspect.isclass(obj):
    return "autoclass"
  if callable(obj):
    return "autofunction"
  return "autodata"


def _api_page(module_name: str) -> str:
  module = importlib.import_module(module_name)
  title = TITLES[module_name]
  lines = [title, "=" * len(title), "", f".. module:: {module_name}", ""]
  doc = inspect.getdoc(module) or ""
  first = doc.split("\n\n")[0].strip()
  if first:
    lines += [first, ""]
  for name in public_names(module_name):
    obj = getattr(module, name)
    directive = _directive(obj)
    lines.append(f".. {directive}:: {module_name}.{name}")
    # NamedTuple states: their docstring says what they hold; the fields' own
    # docstrings would only say "Alias for field number 0".
    if directive == "autoclass" and not issubclass(obj, tuple):
      lines.append("   :members:")
    lines.append("")
  return "\n".join(lines)


def _write_api_pages() -> None:
  api = DOCS / "api"
  api.mkdir(exist_ok=True)
  for module_name in PUBLIC_MODULES:
    path = api / f"{module_name}.rst"
    text = _api_page(module_name)
    if not path.exists() or path.read_text() != text:
      path.write_text(text)


def _copy_notebooks() -> None:
  """The notebooks, as stored (executed), under ``docs/guides/``."""
  guides = DOCS / "guides"
  guides.mkdir(exist_ok=True)
  for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
    target = guides / nb.name
    if not target.exists() or target.read_bytes() != nb.read_bytes():
      shutil.copyfile(nb, target)


_write_api_pages()
_copy_notebooks()
