"""StreamingT2V's CAM and APM on the embedded demo model (trained by ``launch/train_streaming.py``).

The modules are the project's (``vstar_jax.models.streaming``) at demo size. Two choices differ from
the released StreamingT2V model, because the demo model has no VAE and no CLIP image tower:

* CAM conditions on LATENT frames (the reference's ``downsample_controlnet_cond=False`` form: the
  frame encoder keeps the resolution): the previous chunk's last C frames are the 4x4x27 patch
  latents, so no decode is needed inside the sampling loop.
* APM's image embedding of the anchor frame is a fixed, parameter-free stand-in for the frozen CLIP
  image tower: the anchor frame's patch latent flattened (27 * 4 * 4 = 432 values, the frame itself:
  the patch space is a lossless rearrangement of the pixels). The unconditional row embeds a zero frame
  (a grey image, as the reference embeds ``zeros_like`` of its [-1, 1] frames).

Shipped as ``vstar_jax/assets/demo_model/streaming.safetensors`` (only the CAM / APM tensors, flat
'/'-joined UNet paths) + ``streaming.json`` (settings + training record): the base model's files do
not change, and without the extra file the demo model is exactly the base model.
"""
from __future__ import annotations

import json
import pathlib
from typing import Optional

import ml_collections
import numpy as np
from safetensors.numpy import load_file, save_file

from vstar_jax.demo import ASSET_DIR
from vstar_jax.io.atomic import atomic_path, write_text

WEIGHTS_FILE = "streaming.safetensors"
META_FILE = "streaming.json"


def demo_settings(config) -> dict:
    """{"cam": ..., "apm": ...} for the demo model config (latent conditioning, flattened-frame anchor)."""
    ch = int(config.unet.in_channels)
    side = int(config.size) // int(config.patch)
    return {
        "cam": {"frames": 4, "cond_channels": ch, "embed_channels": [32, 64], "downsample": False,
                "head_dim": 16, "norm_groups": 32},
        "apm": {"tokens": 4, "image_dim": ch * side * side, "hidden": 128,
                "text_len": int(config.text.context_length), "image_encoder": "latent"},
    }


def with_streaming(config, settings: dict):
    """A copy of the demo config whose UNet has CAM and APM."""
    c = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    c.unet.cam = dict(settings["cam"])
    c.unet.apm = dict(settings["apm"])
    return c


def save_streaming(out_dir, extra_flat: dict, settings: dict, record: Optional[dict] = None) -> pathlib.Path:
    """Write the CAM / APM tensors ('/'-joined UNet paths) and their settings + record."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file({k: np.array(v, np.float32, order="C") for k, v in extra_flat.items()},  # 0-d alphas stay 0-d
                  str(tmp))
        tmp.chmod(0o644)
    write_text(out / META_FILE, json.dumps({"settings": settings, "record": record or {}}, indent=1))
    return out


def load_streaming(folder=None) -> Optional[tuple[dict, dict, dict]]:
    """(extra flat params, settings, record) shipped next to the demo model, or None when absent."""
    folder = pathlib.Path(folder) if folder is not None else ASSET_DIR
    wf, mf = folder / WEIGHTS_FILE, folder / META_FILE
    if not wf.exists() or not mf.exists():
        return None
    meta = json.loads(mf.read_text())
    tensors = {k: (v.reshape(()) if k.endswith("/alpha") else v) for k, v in load_file(str(wf)).items()}
    return tensors, meta["settings"], meta.get("record", {})
