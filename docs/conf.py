"""Sphinx configuration: API pages from ``__all__``, notebooks rendered as guides.

Build: ``pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pathlib
import pkgutil
import re
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

html_static_path = ["_static"]
html_css_files = ["custom.css"]  # code wraps instead of being cut at the column's edge
# A local MathJax (docs/check_rendered.py renders pages offline); readers' browsers load
# Sphinx's default CDN copy.
if os.environ.get("ADAM_JAX_DOCS_MATHJAX"):
  html_static_path.append(os.environ["ADAM_JAX_DOCS_MATHJAX"])
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


# Methods of public classes that are for the package's own use, not for users.
NOT_FOR_USERS = {"adam_jax.tuning.Problem": ("bind",)}


def _directive(obj) -> str:
  if inspect.isclass(obj):
    return "autoclass"
  if callable(obj):
    return "autofunction"
  return "autodata"


def _indent(lines: list[str], prefix: str = "   ") -> list[str]:
  return [prefix + line if line else "" for line in lines]


def _field_docs(cls) -> dict[str, tuple[str, str]]:
  """A NamedTuple's fields: the type and the comment each has in its source (``name: type
  # what``, continued on ``#`` lines below it), as the STYLE guide has every state write them."""
  docs: dict[str, tuple[str, str]] = {}
  current = None
  for line in inspect.getsource(cls).splitlines():
    field = re.match(r"\s+(\w+): ([^#=]*?)\s*(?:= [^#]*)?#\s?(.*)$", line)
    more = re.match(r"\s+#\s*(.*)$", line)
    if field and field.group(1) in cls._fields:
      current = field.group(1)
      docs[current] = (field.group(2), field.group(3).strip())
    elif more and current is not None:
      docs[current] = (docs[current][0], docs[current][1] + " " + more.group(1).strip())
    else:
      current = None
  missing = [f for f in cls._fields if not docs.get(f, ("", ""))[1]]
  if missing:
    raise ValueError(f"{cls.__qualname__}: fields without a comment saying what they hold: "
                     f"{missing}")
  return docs


def _namedtuple(module_name: str, name: str, cls) -> list[str]:
  """A NamedTuple: its docstring, every field with its type and comment, its own methods.

  (autodoc alone would say "Alias for field number 0" for each field.)
  """
  if not cls.__module__.startswith("adam_jax"):  # optax's own class, re-exported as it is
    return [f".. autoclass:: {module_name}.{name}", "",
            f"   optax's own ``{cls.__module__}.{cls.__qualname__}`` (the same class, so "
            "``isinstance`` and tree maps across optax's states work); fields: "
            + ", ".join(f"``{f}``" for f in cls._fields) + ".", ""]
  methods = [k for k, v in vars(cls).items()
             if not k.startswith("_") and k not in cls._fields and callable(v)]
  lines = [f".. autoclass:: {module_name}.{name}"]
  lines += [f"   :members: {', '.join(methods)}"] if methods else []
  lines.append("")
  for field, (kind, text) in _field_docs(cls).items():
    text = re.sub(r"([\\*|`_])", r"\\\1", text)  # a plain-text comment: no markup in it
    lines += _indent([f".. py:attribute:: {field}", f"   :type: {kind}", "", f"   {text}", ""])
  return lines


def _constant(module_name: str, name: str, value) -> list[str]:
  """A module constant, with the ``#:`` comment above its definition (a tuple's own
  docstring says nothing about the constant)."""
  from sphinx.pycode import ModuleAnalyzer

  package = importlib.import_module(module_name)
  for info in pkgutil.walk_packages(package.__path__, module_name + "."):
    sub = importlib.import_module(info.name)
    if getattr(sub, name, None) is not value:
      continue
    doc = ModuleAnalyzer.for_module(info.name).find_attr_docs().get(("", name))
    if doc:
      return [f".. py:data:: {name}", f"   :value: {value!r}", "",
              *_indent([line for line in doc if line.strip()]), ""]
  raise ValueError(f"{module_name}.{name}: a public constant needs a #: comment above its "
                   "definition")


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
    if directive == "autoclass" and issubclass(obj, tuple) and hasattr(obj, "_fields"):
      lines += _namedtuple(module_name, name, obj)
      continue
    if directive == "autodata":
      lines += _constant(module_name, name, obj)
      continue
    lines.append(f".. {directive}:: {module_name}.{name}")
    if directive == "autoclass":
      lines.append("   :members:")
      hidden = NOT_FOR_USERS.get(f"{module_name}.{name}")
      if hidden:
        lines.append(f"   :exclude-members: {', '.join(hidden)}")
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
