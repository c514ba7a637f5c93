"""The device mesh and the logical-axis rules, as data (``vstar-jax generate --mesh configs/mesh.py``).

``axes``: mesh axis sizes over the devices (-1: the devices left). ``data`` splits CFG rows / batch
items, ``frames`` the frames the UNet sees, ``model`` the UNet's kernels (FSDP: stored split, gathered
for each call). ``rules``: (logical axis, mesh axis or axes or None) pairs, read by
``vstar_jax.parallel.sharding``: the latents are (batch, channels, frames, height, width); inside the
UNet the spatial layers see ``rows`` (batch x frames merged) and the temporal layers ``pixels``;
``windows``: the long-video windows of one step run together, D per UNet call (default: ``data``).
Copy this file to change either; ``--mesh data=2,frames=4`` sets the axes alone.
"""
import ml_collections

from vstar_jax.parallel.sharding import DEFAULT_RULES


def get_config():
    c = ml_collections.ConfigDict()
    c.axes = ml_collections.ConfigDict({"data": 1, "frames": -1, "model": 1})
    c.rules = [list(r) for r in DEFAULT_RULES]
    return c
