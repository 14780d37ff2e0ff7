"""Opens every built page in headless Chromium and fails on pages that do not render.

Run after a build: ``python docs/check_rendered.py`` builds the site with a local copy of
MathJax (from the npm package ``mathjax@3``, so that no page depends on a CDN here), loads
each page in ``chromium --headless --dump-dom``, and checks what a reader would see:

* every page has a title and a body;
* a page whose source has math shows it typeset (MathJax's ``mjx-container`` elements, and
  no MathJax error);
* every API page has at least one documented object and no empty section;
* every guide (notebook) shows at least one stored output, and no figure as its text
  (``<Figure size 640x420 with 1 Axes>``) instead of its image.

Needs ``chromium`` (Debian: ``apt-get install chromium``) and ``npm``. Exit code 1 lists
the pages that fail.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

DOCS = pathlib.Path(__file__).resolve().parent
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000", "--dump-dom")


def _mathjax(workdir: pathlib.Path) -> pathlib.Path:
  """A local ``tex-chtml.js`` with its fonts, from the npm package."""
  subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix",
                  str(workdir), "mathjax@3"], check=True)
  return workdir / "node_modules" / "mathjax" / "es5"


def _build(out: pathlib.Path, mathjax: pathlib.Path) -> None:
  env = dict(os.environ, ADAM_JAX_DOCS_MATHJAX=str(mathjax))
  subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS),
                  str(out)], check=True, env=env)


def _dom(chromium: str, page: pathlib.Path, profile: pathlib.Path) -> str:
  result = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
  return result.stdout


def _problems(page: pathlib.Path, dom: str, source: str) -> list[str]:
  problems = []
  if "<h1" not in dom or 'role="main"' not in dom:
    problems.append("no title or no main body")
  if 'class="math notranslate' in source:
    if "mjx-container" not in dom:
      problems.append("math not typeset")
    if "<mjx-merror" in dom or "Math input error" in dom:
      problems.append("a MathJax error")
  if page.parent.name == "api":
    if dom.count('class="sig-name descname"') == 0:
      problems.append("no documented object")
    for match in re.finditer(r'<dd>\s*</dd>', dom):
      problems.append(f"an empty section at offset {match.start()}")
  if page.parent.name == "guides" and "cell_output" not in dom:
    problems.append("no stored output")
  if page.parent.name == "guides" and "&lt;Figure size" in dom:
    problems.append("a figure shown as its text, without its image")
  return problems


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    out = tmp / "html"
    _build(out, _mathjax(tmp / "npm"))
    failures = {}
    pages = sorted(p for p in out.rglob("*.html")
                   if p.parent.name != "_static" and p.name not in ("genindex.html", "search.html",
                                                                     "py-modindex.html"))
    for page in pages:
      source = page.read_text()
      problems = _problems(page, _dom(args.chromium, page, tmp / "profile"), source)
      if problems:
        failures[page.relative_to(out)] = problems
      print(f"{'FAIL' if problems else 'ok  '} {page.relative_to(out)}"
            + (f": {'; '.join(problems)}" if problems else ""))
  print(f"{len(pages) - len(failures)} of {len(pages)} pages render")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
