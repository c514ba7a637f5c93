"""``vstar_jax.configs`` and ``vstar_jax.checkpoints_convert`` when running from a source checkout.

The repository keeps ``configs/`` and ``checkpoints_convert/`` at its top level (beside ``vstar_jax/``),
and setup.py installs them as the subpackages ``vstar_jax.configs`` and ``vstar_jax.checkpoints_convert``
(``package_dir``): a wheel holds them inside ``vstar_jax/``, and an editable install's finder maps them.
From a checkout on ``PYTHONPATH`` (no install, or another checkout installed editable, whose finder would
map them to ITS folders) nothing maps them, so this finder does, to the folders beside the ``vstar_jax``
package actually imported. It acts only there: when that package's folder has no such subpackage and
its parent holds setup.py and the folder, i.e. never in an installed wheel.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

SUBPACKAGES = ("configs", "checkpoints_convert")  # top-level folders of the repository; setup.py maps the same


class SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Finds ``vstar_jax.<folder>`` for the SUBPACKAGES in the checkout holding the imported ``vstar_jax``."""

    def find_spec(self, fullname, path=None, target=None):
        parent, _, name = fullname.rpartition(".")
        if parent != __package__ or name not in SUBPACKAGES:
            return None
        for pkg_dir in path or ():
            if os.path.exists(os.path.join(pkg_dir, name)):  # a real subpackage (an installed wheel): not ours
                return None
            root = os.path.dirname(os.path.abspath(pkg_dir))
            init = os.path.join(root, name, "__init__.py")
            if os.path.isfile(os.path.join(root, "setup.py")) and os.path.isfile(init):
                return importlib.util.spec_from_file_location(fullname, init,
                                                              submodule_search_locations=[os.path.dirname(init)])
        return None


def install() -> None:
    """Put the finder first on sys.meta_path, once (before an editable install's finder of another checkout)."""
    if not any(isinstance(f, SourceTreeFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceTreeFinder())
