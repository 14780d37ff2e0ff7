"""The documentation: it builds without warnings, has an entry for every public name, shows
every figure of the stored notebooks, and links only to the repository the package names."""

from __future__ import annotations

import importlib
import inspect
import json
import pathlib
import re
import subprocess
import sys

import pytest

import adam_jax

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


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


@pytest.mark.slow
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


def _code_cells(path: pathlib.Path) -> list[tuple[int, str, list[dict]]]:
  nb = json.loads(path.read_text())
  return [(i, "".join(c["source"]).strip(), c.get("outputs", []))
          for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def _draws(source: str) -> bool:
  """Whether a cell shows a figure: ``plt.show()``, or a last line that is a figure
  (``fig``) or a ``.plot(...)`` call of ours (a result's figure)."""
  last = source.splitlines()[-1].strip() if source else ""
  return "plt.show()" in source or bool(re.fullmatch(r"fig|\w+\.plot\(.*\)", last))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_figure_cell_of_a_stored_notebook_has_its_image(path):
  """The guides show the stored outputs: a figure stored as ``<Figure size ...>`` text (no
  image) is a hole in the page, and so is a drawing cell stored without its PNG."""
  for i, source, outputs in _code_cells(path):
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    bare = [o for o in outputs if "image/png" not in o.get("data", {}) and
            "".join(o.get("data", {}).get("text/plain", "")).startswith("<Figure")]
    assert not bare, f"cell {i} stores a figure as text, without its image"
    if _draws(source):
      assert images, f"cell {i} draws a figure but stores no image (refresh the notebook)"
    else:
      assert not images, f"cell {i} stores an image the check does not know it draws"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_notebooks_show_no_warning(path):
  for i, _, outputs in _code_cells(path):
    for o in outputs:
      text = "".join(o.get("text", ""))
      assert "Warning" not in text, f"cell {i} shows a warning: {text[:300]}"


def test_notebook_links_name_the_repository_of_pyproject():
  """The Colab badge and the install line of every notebook point at the repository that
  pyproject.toml names; the README and the docs name no other."""
  tomllib = pytest.importorskip("tomllib")  # Python 3.11
  with open(ROOT / "pyproject.toml", "rb") as f:
    urls = tomllib.load(f)["project"]["urls"]
  repo = urls["Repository"]
  assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo), repo
  slug = repo.removeprefix("https://github.com/")
  for path in NOTEBOOKS:
    text = path.read_text()
    assert f"colab.research.google.com/github/{slug}/blob/main/notebooks/{path.name}" in text
    assert f"git+{repo}" in text, f"{path.name} installs from another repository"
  for path in [ROOT / "README.md", *NOTEBOOKS, *DOCS.glob("*.md")]:
    for other in re.findall(r"github\.com/([\w.-]+/[\w.-]+)", path.read_text()):
      assert other in (slug, "google-deepmind/optax"), f"{path.name} links to github.com/{other}"
