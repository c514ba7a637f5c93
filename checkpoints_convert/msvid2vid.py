"""Convert MS-Vid2Vid-XL's UNet (StreamingT2V's refiner) into a vstar-jax checkpoint.

    vstar-jax convert msvid2vid non_ema_0035000.pth --out CKPT [--modelscope DIR] [--unet-config unet.json]

The weights are the state dict of ``Vid2VidSDUNet`` (Picsart-AI-Research/StreamingT2V, branch
StreamingModelscope, ``t2v_enhanced/thirdparty/modelscope/models/multi_modal/video_to_video/``:
``modules/unet_v2v.py``; ``video_to_video_model.py`` loads it with ``load_state_dict(..., strict=True)``,
unwrapping a ``state_dict`` entry), the file the MS-Vid2Vid-XL release names ``ckpt_unet``. Its keys
are lvdm's (``vstar_jax.checkpoints_convert.unet.plan_unet_msvid2vid``); the UNet's settings are the released
``Vid2VidSDUNet()`` defaults (``configs/unet_msvid2vid.py``), or ``--unet-config`` (a JSON object of
UNet config fields over them, for another width). Every key must be planned, every planned key present
with the model's shape, or one error names them all.

The refiner's VAE (Stable Diffusion 2.1's) and text encoder (OpenCLIP ViT-H-14, penultimate layer) are
ModelScope's: ``--modelscope DIR`` (a diffusers ModelScope folder) converts them as ``vstar-jax convert
diffusers`` does; without it only the UNet is written. The diffusion settings are the refiner's:
``logsnr_cosine_interp`` noise levels with zero terminal SNR (``utils/schedules_sdedit.py``, as
``video_to_video_model.py`` builds them) and v-prediction, stepped by the project's DDIM.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Mapping, Optional

import ml_collections

from vstar_jax.checkpoints_convert import diffusers as conv_diffusers
from vstar_jax.checkpoints_convert.common import DTYPES, add_safety_flags, cast_tree, load_state_dict, run_cli
from vstar_jax.checkpoints_convert.unet import convert_unet
from vstar_jax.configs import unet_msvid2vid
from vstar_jax.io.checkpoint import check_checkpoint_out, save_checkpoint
from vstar_jax.models.unet_config import UNetConfig

# The refiner's diffusion (video_to_video_model.py: noise_schedule('logsnr_cosine_interp', n=1000,
# zero_terminal_snr=True, scale_min=2.0, scale_max=4.0), GaussianDiffusion_SDEdit(prediction_type='v'))
# and its inference settings (sample(guide_scale=7.5, steps=50, ...); model_func.py
# video2video_randomized: total_noise_levels 600 of 1000). The reference discretises 'trailing' (its
# first step is t = 999); the DDIM here keeps 'leading' (t <= 981): at t = 999 zero terminal SNR makes
# alpha_cumprod 0, and DDIM's x0 from eps divides by its square root.
DIFFUSION = {"flavor": "diffusers", "beta_schedule": "logsnr_cosine_interp", "prediction": "v",
             "num_timesteps": 1000, "steps_offset": 1, "set_alpha_to_one": False, "timestep_spacing": "leading",
             "scale_factor": 0.18215, "latent_channels": 4, "latent_size": [90, 160],
             "steps": 50, "cfg": 7.5, "eta": 0.0}


def msvid2vid_unet_config(overrides: Optional[Mapping] = None) -> UNetConfig:
    """The released UNet config (configs/unet_msvid2vid.py), ``overrides`` (UNet config fields) over it."""
    cfg = unet_msvid2vid.get_config()
    for key, value in dict(overrides or {}).items():
        cfg[key] = tuple(value) if isinstance(value, list) else value
    return UNetConfig.from_config(cfg)


def convert_msvid2vid_unet(sd: Mapping, cfg: UNetConfig, *, dtype=None) -> dict:
    """UNet3D params from a ``Vid2VidSDUNet`` state dict."""
    return convert_unet(sd, ml_collections.ConfigDict(cfg.to_dict()), "msvid2vid", dtype=dtype)


def convert(ckpt: str, out: str, *, modelscope: Optional[str] = None, unet_config: Optional[str] = None,
            dtype: Optional[str] = None, trust_pickle: bool = False, overwrite: bool = False) -> str:
    sources = [ckpt, modelscope, unet_config]
    check_checkpoint_out(out, overwrite=overwrite, sources=sources)  # before the (long) conversion
    overrides = None
    if unet_config is not None:
        with open(unet_config) as f:
            overrides = json.load(f)
        if not isinstance(overrides, dict):
            raise ValueError(f"{unet_config}: expected a JSON object of UNet config fields")
    cfg = msvid2vid_unet_config(overrides)
    if modelscope is not None:
        absent = [conv_diffusers.SUBDIRS[c] + "/" for c in ("vae", "text")
                  if not os.path.isdir(os.path.join(modelscope, conv_diffusers.SUBDIRS[c]))]
        if absent:
            raise ValueError(f"{modelscope}: missing component folder(s) {absent} (the VAE and text encoder)")
    sd = load_state_dict(ckpt, trust_pickle=trust_pickle)
    if "input_blocks.0.0.weight" not in sd or "time_embed.0.weight" not in sd:
        first = ", ".join(list(sd)[:3])
        raise ValueError(f"{ckpt}: not an MS-Vid2Vid-XL UNet state dict (no input_blocks.0.0 / time_embed.0; "
                         f"first keys: {first})")
    params = {"unet": convert_msvid2vid_unet(sd, cfg, dtype=dtype)}
    config = {"source": {"layout": "msvid2vid", "checkpoint": os.path.abspath(ckpt)}, "unet": cfg.to_dict(),
              "diffusion": dict(DIFFUSION)}
    if modelscope is not None:
        config["source"]["modelscope"] = os.path.abspath(modelscope)
        vae_text, vae_text_cfg = conv_diffusers.convert_vae_text(modelscope)
        params.update({k: cast_tree(v, dtype) if dtype is not None else v for k, v in vae_text.items()})
        config.update(vae_text_cfg)
    return save_checkpoint(out, params, config, overwrite=overwrite, sources=sources)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vstar-jax convert msvid2vid", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="the Vid2VidSDUNet weights (the release's ckpt_unet, e.g. non_ema_0035000.pth)")
    ap.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
    ap.add_argument("--modelscope", default=None, help="diffusers ModelScope folder: its vae/ and text_encoder/ "
                                                       "(default: write the UNet only)")
    ap.add_argument("--unet-config", default=None, help="JSON object of UNet config fields over the released ones")
    ap.add_argument("--dtype", choices=DTYPES, default=None, help="store weights in this dtype (default float32)")
    add_safety_flags(ap)
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    return run_cli(lambda: convert(a.ckpt, a.out, modelscope=a.modelscope, unet_config=a.unet_config, dtype=a.dtype,
                                   trust_pickle=a.trust_pickle, overwrite=a.overwrite))


if __name__ == "__main__":
    sys.exit(main())
