"""Build hook: ship the image recipes inside the wheel.

``Dockerfile.base``, ``images/`` and ``pyproject.toml`` live at the top of the
source tree, outside any package, so a plain wheel would lack them and an
installed mlbridge could not build its images. This copies them into the
built package as ``orchestrator/images/recipes/`` (never into the source
tree); ``orchestrator.images._paths.source_dir`` falls back to them when no
checkout is found. Everything else is in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: Top-level entries copied, and where they go inside the built package.
RECIPES = ("Dockerfile.base", "images", "pyproject.toml")
TARGET = Path("orchestrator", "images", "recipes")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*")


class BuildWithRecipes(build_py):
    """``build_py`` that also copies the image recipes into the build directory."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install runs from the checkout, which has them
        missing = [name for name in RECIPES if not (ROOT / name).exists()]
        if missing:
            raise SystemExit(f"cannot build mlbridge: {', '.join(missing)} missing under {ROOT}")
        target = Path(self.build_lib) / TARGET
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name in RECIPES:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, target / name, ignore=_IGNORE)
            else:
                shutil.copy2(src, target / name)


setup(cmdclass={"build_py": BuildWithRecipes})
