"""Convert a diffusers text-to-video model directory (ModelScope layout) into a vstar-jax checkpoint.

    python -m vstar_jax.checkpoints_convert.diffusers MODEL_DIR --out checkpoints/modelscope \
        [--components unet,vae,text]

MODEL_DIR holds ``unet/`` (UNet3DConditionModel), ``vae/`` (AutoencoderKL),
``text_encoder/`` (CLIPTextModel), ``tokenizer/`` and ``scheduler/``; each
component's ``config.json`` and weights (``*.safetensors`` or ``*.bin``).
"""
from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import sys
from typing import Optional, Sequence


from vstar_jax.checkpoints_convert.common import (DTYPES, add_safety_flags, convert_components, load_state_dict,
                                                  run_cli)
from vstar_jax.checkpoints_convert.text import convert_hf_clip_text, hf_clip_text_config
from vstar_jax.checkpoints_convert.unet import convert_unet, unet_config_from_diffusers
from vstar_jax.checkpoints_convert.vae import (add_temporal, convert_vae_diffusers, parse_temporal_spec,
                                               vae_config_from_diffusers)
from vstar_jax.io.checkpoint import check_checkpoint_out, save_checkpoint
from vstar_jax.models.tokenizer import pad_token_id_from_hf

SUBDIRS = {"unet": "unet", "vae": "vae", "text": "text_encoder"}


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing {path}")
    with open(path) as f:
        return json.load(f)


def weights_file(component_dir: str) -> str:
    """The component's weights: safetensors preferred, then a torch .bin (fp16 variants accepted)."""
    for pattern in ("*.safetensors", "*.bin"):
        found = sorted(glob.glob(os.path.join(component_dir, pattern)))
        found = [f for f in found if not f.endswith(".index.json")]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            plain = [f for f in found if ".fp16." not in os.path.basename(f)]
            if len(plain) == 1:
                return plain[0]
            raise ValueError(f"{component_dir}: several weight files {found}; sharded checkpoints are not supported")
    raise FileNotFoundError(f"{component_dir}: no *.safetensors or *.bin weights")


def _convert_unet(d):
    path = os.path.join(d, "config.json")
    try:
        cfg = unet_config_from_diffusers(_read_json(path))
    except ValueError as e:  # a config UNet3DConditionModel refuses: one line naming the field
        raise ValueError(f"{path}: {e}") from None
    return convert_unet(load_state_dict(weights_file(d)), cfg, "diffusers"), cfg


def _convert_vae(d, temporal=None):
    cfg = add_temporal(vae_config_from_diffusers(_read_json(os.path.join(d, "config.json"))), temporal)
    return convert_vae_diffusers(load_state_dict(weights_file(d)), cfg), cfg


def _convert_text(d):
    tok_dir = os.path.join(os.path.dirname(d), "tokenizer")
    pad = pad_token_id_from_hf(tok_dir) if os.path.isfile(os.path.join(tok_dir, "vocab.json")) else None
    # The pipeline feeds last_hidden_state (after final_layer_norm) to the UNet.
    cfg = hf_clip_text_config(_read_json(os.path.join(d, "config.json")), layer="last", pad_token_id=pad)
    return convert_hf_clip_text(load_state_dict(weights_file(d)), cfg), cfg


CONVERTERS = {"unet": _convert_unet, "vae": _convert_vae, "text": _convert_text}


def convert_vae_text(model_dir: str) -> tuple:
    """The VAE and text encoder of a diffusers ModelScope folder, for converters whose UNet comes from
    elsewhere (StreamingT2V, MS-Vid2Vid-XL): ({"vae": params, "text": params}, {"vae": config, "text": config})."""
    params, configs = {}, {}
    for comp in ("vae", "text"):
        p, c = CONVERTERS[comp](os.path.join(model_dir, SUBDIRS[comp]))
        params[comp] = p
        configs[comp] = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    return params, configs


def diffusion_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "scheduler", "scheduler_config.json")
    sc = _read_json(path) if os.path.isfile(path) else {}
    if sc.get("beta_schedule", "scaled_linear") != "scaled_linear":
        raise ValueError(f"{path}: beta_schedule {sc.get('beta_schedule')!r} is not supported")
    kinds = {"epsilon": "eps", "v_prediction": "v"}
    ptype = sc.get("prediction_type", "epsilon")
    if ptype not in kinds:
        raise ValueError(f"{path}: prediction_type {ptype!r} is not supported (epsilon or v_prediction)")
    return {
        "flavor": "diffusers",
        "linear_start": float(sc.get("beta_start", 0.00085)),
        "linear_end": float(sc.get("beta_end", 0.012)),
        "num_timesteps": int(sc.get("num_train_timesteps", 1000)),
        "steps_offset": int(sc.get("steps_offset", 1)),
        "set_alpha_to_one": bool(sc.get("set_alpha_to_one", False)),
        "timestep_spacing": sc.get("timestep_spacing", "leading"),
        "scale_factor": 0.18215,
        "use_scale": False,
        "latent_size": [32, 32],
        "latent_channels": 4,
        "prediction": kinds[ptype],
    }


def convert(model_dir: str, out: str, *, components: Sequence[str] = ("unet", "vae", "text"),
            dtype: Optional[str] = None, overwrite: bool = False, vae_temporal: Optional[str] = None,
            verbose: bool = True) -> str:
    check_checkpoint_out(out, overwrite=overwrite, sources=[model_dir])  # before the (long) conversion
    parse_temporal_spec(vae_temporal)  # a bad --vae-temporal fails before loading
    unknown = sorted(set(components) - set(CONVERTERS))
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {sorted(CONVERTERS)}")
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    absent = [SUBDIRS[c] + "/" for c in components if not os.path.isdir(os.path.join(model_dir, SUBDIRS[c]))]
    if absent:
        raise ValueError(f"{model_dir}: missing component folder(s) {absent}; convert fewer with --components")
    vae_cfg = os.path.join(model_dir, "vae", "config.json")
    diff = diffusion_config(model_dir)
    if os.path.isfile(vae_cfg):
        diff["scale_factor"] = float(_read_json(vae_cfg).get("scaling_factor", 0.18215))
    params, cfgs = convert_components(
        {c: (lambda c=c: CONVERTERS[c](os.path.join(model_dir, SUBDIRS[c]),
                                                   *([vae_temporal] if c == "vae" else []))) for c in components}, components,
        dtype=dtype, verbose=verbose)
    gc.collect()
    config_out = {"source": {"layout": "diffusers", "model_dir": str(model_dir)}, "diffusion": diff, **cfgs}
    return save_checkpoint(out, params, config_out, overwrite=overwrite, sources=[model_dir])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vstar-jax convert diffusers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", help="diffusers folder with unet/ vae/ text_encoder/ (tokenizer/ scheduler/)")
    ap.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
    ap.add_argument("--components", default="unet,vae,text", help="comma list of unet,vae,text (default: all)")
    ap.add_argument("--vae-temporal", default=None, metavar="conv,attention[:W]",
                    help="add VidRD's temporal decoder layers to the VAE, zero-initialised (docs/vidrd-decoder.md)")
    ap.add_argument("--dtype", choices=DTYPES, default=None, help="store weights in this dtype (default float32)")
    add_safety_flags(ap, trust_pickle=False)
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    return run_cli(lambda: convert(a.model_dir, a.out, components=[c for c in a.components.split(",") if c],
                                   dtype=a.dtype, overwrite=a.overwrite, vae_temporal=a.vae_temporal))


if __name__ == "__main__":
    sys.exit(main())
