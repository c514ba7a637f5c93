"""A tiny random full checkpoint (UNet + VAE + text encoder) for pipeline and CLI tests.

``write_tiny_checkpoint(dir)`` writes, with :func:`vstar_jax.io.checkpoint.save_checkpoint`,
the tiny golden UNet config (``configs/unet_tiny.py``: 2 levels, context 32), the tiny LDM
VAE (``configs/vae_tiny.py``: x2 spatial factor), an OpenCLIP-style text tower of width 32
and a VideoCrafter2 "diffusion" section with an 8x8 latent (16x16 video). Params are the
shapes of the modules' parameters filled from a seeded numpy PRNG (no compile), so the
checkpoint is deterministic and quick to write.
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np

from vstar_jax.checkpoints_convert.text import openclip_text_config
from vstar_jax.configs import unet_tiny, vae_tiny
from vstar_jax.io.checkpoint import save_checkpoint
from vstar_jax.models.text import text_param_shapes
from vstar_jax.models.unet3d import UNet3D, init_shapes
from vstar_jax.models.vae import vae_param_shapes


def tiny_configs(latent: int = 8) -> dict:
    """{"unet", "vae", "text", "diffusion"} plain dicts of the tiny model."""
    unet = unet_tiny.get_config()
    vae = vae_tiny.get_config()
    vae.resolution = 2 * latent
    text = openclip_text_config(width=32, heads=2, layers=2, mlp_ratio=2.0, output_dim=0)
    diffusion = {
        "flavor": "videocrafter2",
        "linear_start": 0.00085,
        "linear_end": 0.012,
        "num_timesteps": 1000,
        "scale_factor": 0.18215,
        "use_scale": True,
        "scale_b": 0.7,
        "latent_size": [latent, latent],
        "latent_channels": 4,
        "default_fps": 28,
    }
    as_dict = lambda c: c.to_dict() if isinstance(c, ml_collections.ConfigDict) else dict(c)  # noqa: E731
    return {"unet": as_dict(unet), "vae": as_dict(vae), "text": as_dict(text), "diffusion": diffusion}


def _random_like(shapes, rng: np.random.Generator):
    """Numpy random params for a ShapeDtypeStruct tree (no model compile): kernels
    N(0, 1/fan_in), embeddings N(0, 0.02), norm scales 1, biases 0."""
    def leaf(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        shape = tuple(s.shape)
        if name == "scale":
            return np.ones(shape, np.float32)
        if name == "bias":
            return np.zeros(shape, np.float32)
        if name in ("embedding", "positional_embedding"):
            return (0.02 * rng.standard_normal(shape)).astype(np.float32)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def tiny_params(configs: dict, seed: int = 0) -> dict:
    """Random numpy params {"unet", "vae", "text"} for :func:`tiny_configs` (shapes from
    ``jax.eval_shape``, values from a numpy PRNG: nothing is compiled)."""
    rng = np.random.default_rng(seed)
    ucfg = ml_collections.ConfigDict(configs["unet"])
    latent = tuple(configs["diffusion"]["latent_size"])
    unet_shapes = init_shapes(UNet3D(ucfg), 2, *latent)
    vae_shapes = vae_param_shapes(ml_collections.ConfigDict(configs["vae"]))
    text_shapes = text_param_shapes(ml_collections.ConfigDict(configs["text"]))
    return {"unet": _random_like(unet_shapes, rng), "vae": _random_like(vae_shapes, rng),
            "text": _random_like(text_shapes, rng)}


def write_tiny_checkpoint(out_dir, *, latent: int = 8, seed: int = 0) -> str:
    """Write the tiny random checkpoint to ``out_dir`` (must not exist); returns its path."""
    configs = tiny_configs(latent)
    params = tiny_params(configs, seed)
    config = dict(configs, source={"layout": "tiny-random", "seed": seed})
    return save_checkpoint(str(out_dir), params, config)


_SHARED: dict = {}


def shared_tiny_checkpoint() -> str:
    """One tiny checkpoint per test process (in a temp dir removed at exit), shared by the
    pipeline and CLI tests so they also share compiled samplers."""
    if "path" not in _SHARED:
        import atexit
        import shutil
        import tempfile

        root = tempfile.mkdtemp(prefix="vstar-tiny-ckpt-")
        atexit.register(shutil.rmtree, root, True)
        _SHARED["path"] = write_tiny_checkpoint(f"{root}/ckpt")
    return _SHARED["path"]
