"""Executes every notebook under ``notebooks/`` and stores it with its outputs.

The guides of the documentation, GitHub and Colab then show the figures before anyone runs a
cell; the docs build does not execute them, and CI keeps checking that they run
(``pytest`` runs them through nbmake, without storing anything).

Usage: ``python docs/refresh_notebooks.py [NOTEBOOK ...]`` (default: all of them).
"""

from __future__ import annotations

import pathlib
import sys

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent


def refresh(path: pathlib.Path, timeout: int = 600) -> None:
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=timeout, kernel_name="python3",
                 resources={"metadata": {"path": str(path.parent)}}).execute()
  nbformat.write(nb, path)


def main(argv: list[str]) -> int:
  paths = [pathlib.Path(a) for a in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
  for path in paths:
    print(f"executing {path.name}", flush=True)
    refresh(path)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
