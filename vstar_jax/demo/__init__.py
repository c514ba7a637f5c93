"""The embedded demo model (:mod:`vstar_jax.demo.model`), its procedural world and its checker.

Importing :mod:`vstar_jax.demo.model` registers the model as the built-in ``builtin:demo``
(:mod:`vstar_jax.generation.builtin`), the model ``checkpoint=None`` loads, and its trained-length sibling as
``builtin:demo_vc`` (``--checkpoint demo_vc``).
"""
import pathlib

ASSET_DIR = pathlib.Path(__file__).resolve().parents[1] / "assets" / "demo_model"  # the shipped files
DEMO_VC_DIR = ASSET_DIR.parent / "demo_vc"  # ``demo_vc``: the demo model with a trained length
