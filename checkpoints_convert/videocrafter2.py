r"""Convert a VideoCrafter2 ``model.ckpt`` (+ its inference YAML) into a vstar-jax checkpoint.

    python -m vstar_jax.checkpoints_convert.videocrafter2 --ckpt model.ckpt \
        --config inference_t2v_512_v2.0.yaml --out checkpoints/vc2 [--components unet,vae,text]

Every requested component is converted and checked (missing, unexpected and
wrongly shaped keys are reported by name) before anything is written; the
output directory appears only when complete.
"""
from __future__ import annotations

import argparse
import gc
import sys
from typing import Mapping, Optional, Sequence

import yaml

from vstar_jax.checkpoints_convert.common import (DTYPES, ConversionError, PrefixView, add_safety_flags,
                                                  convert_components, load_state_dict, peak_rss_gib, run_cli)
from vstar_jax.checkpoints_convert.text import convert_openclip_text, openclip_text_config_from_state_dict
from vstar_jax.checkpoints_convert.unet import convert_unet, unet_config_from_lvdm
from vstar_jax.checkpoints_convert.vae import add_temporal, parse_temporal_spec, convert_vae_ldm, vae_config_from_ldm
from vstar_jax.generation.request import number
from vstar_jax.io.checkpoint import check_checkpoint_out, save_checkpoint

PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text": "cond_stage_model.model.",
}
# Keys of a real model.ckpt that no component uses (diffusion buffers, the CLIP image tower).
IGNORED = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
           "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
           "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
           "scale_arr", "logvar", "model_ema.", "cond_stage_model.model.visual.")


def read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise ValueError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', None) or type(e).__name__}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a YAML text file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, not a VideoCrafter inference YAML") from None
    try:
        return doc["model"]["params"]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a VideoCrafter inference config (no model.params)") from None


def diffusion_config(mp: Mapping) -> dict:
    param = mp.get("parameterization", "eps")  # lvdm LatentDiffusion: "eps" (VideoCrafter2) or "v"
    if param not in ("eps", "v"):
        raise ValueError(f"model.params.parameterization {param!r} is not supported (eps or v)")
    return {
        "flavor": "videocrafter2",
        "linear_start": float(mp.get("linear_start", 0.00085)),
        "linear_end": float(mp.get("linear_end", 0.012)),
        "num_timesteps": int(mp.get("timesteps", 1000)),
        "scale_factor": float(mp.get("scale_factor", 0.18215)),
        "use_scale": bool(mp.get("use_scale", False)),
        "scale_b": float(mp.get("scale_b", 0.7)),
        "latent_size": list(mp.get("image_size", [40, 64])),
        "latent_channels": int(mp.get("channels", 4)),
        "default_fps": 28,
        "prediction": param,
    }


def _convert_unet(sd, mp):
    up = mp["unet_config"]["params"]
    if not up.get("temporal_selfatt_only", True) or up.get("use_causal_attention", False):
        raise ValueError("only temporal_selfatt_only=true, use_causal_attention=false UNets are supported")
    cfg = unet_config_from_lvdm(up)
    return convert_unet(sd, cfg, "lvdm"), cfg


def _convert_vae(sd, mp, temporal=None):
    fp = mp["first_stage_config"]["params"]
    cfg = add_temporal(vae_config_from_ldm(fp["ddconfig"], embed_dim=fp.get("embed_dim", 4),
                                           scale_factor=float(mp.get("scale_factor", 0.18215))), temporal)
    return convert_vae_ldm(sd, cfg), cfg


def _convert_text(sd, mp, heads=None):
    layer = mp.get("cond_stage_config", {}).get("params", {}).get("layer", "penultimate")
    # Head count is not in the weights' shapes; OpenCLIP text towers use 64-wide heads (ViT-H-14: 16).
    cfg = openclip_text_config_from_state_dict(sd, layer=layer, heads=heads)
    return convert_openclip_text(sd, cfg), cfg


CONVERTERS = {"unet": _convert_unet, "vae": _convert_vae, "text": _convert_text}


def convert(ckpt: str, config: str, out: str, *, components: Sequence[str] = ("unet", "vae", "text"),
            dtype: Optional[str] = None, overwrite: bool = False, trust_pickle: bool = False,
            text_heads: Optional[int] = None, vae_temporal: Optional[str] = None, verbose: bool = True) -> str:
    check_checkpoint_out(out, overwrite=overwrite, sources=[ckpt, config])  # before the (long) conversion
    unknown = sorted(set(components) - set(CONVERTERS))
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {sorted(CONVERTERS)}")
    parse_temporal_spec(vae_temporal)  # a bad --vae-temporal fails before loading
    mp = read_yaml(config)
    sd = load_state_dict(ckpt, trust_pickle=trust_pickle)
    absent = [c for c in components if not any(k.startswith(PREFIXES[c]) for k in sd)]
    if absent:
        raise ValueError(f"{ckpt}: no weights for component(s) {absent} "
                         f"(no keys starting with {[PREFIXES[c] for c in absent]}); "
                         f"convert fewer with --components")
    # Keys no component claims are reported too, unless known to be unused.
    # They are reported together with every component's own problems (one run shows everything).
    stray = sorted(k for k in sd if not k.startswith(tuple(PREFIXES.values()) + IGNORED))
    errors = [ConversionError("checkpoint", unexpected=stray, note="keys outside every known component")] if stray else []
    params, cfgs = convert_components(
        {c: (lambda c=c: CONVERTERS[c](PrefixView(sd, PREFIXES[c]), mp, *([text_heads] if c == "text" else [vae_temporal] if c == "vae" else [])))
         for c in components}, components,
        dtype=dtype, verbose=verbose, errors=errors)
    sd = None  # unmap the source before writing: the peak stays near two checkpoint copies
    gc.collect()
    config_out = {"source": {"layout": "videocrafter2", "ckpt": str(ckpt), "config": str(config)},
                  "diffusion": diffusion_config(mp), **cfgs}
    path = save_checkpoint(out, params, config_out, overwrite=overwrite, sources=[ckpt, config])
    if verbose:
        print(f"[convert] wrote {path} (peak RSS {peak_rss_gib():.2f} GiB)", file=sys.stderr)
    return path


MAX_HEADS = 1024  # attention heads of the text tower (ViT-H-14: 16)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vstar-jax convert videocrafter2", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="model.ckpt (torch pickle) or .safetensors")
    ap.add_argument("--config", required=True, help="VideoCrafter inference YAML (inference_t2v_512_v2.0.yaml)")
    ap.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
    ap.add_argument("--components", default="unet,vae,text", help="comma list of unet,vae,text")
    ap.add_argument("--dtype", choices=DTYPES, default=None,
                    help="store weights in this dtype (default float32)")
    add_safety_flags(ap)
    ap.add_argument("--vae-temporal", default=None, metavar="conv,attention[:W]",
                    help="add VidRD's temporal decoder layers to the VAE, zero-initialised (the image decoder until "
                         "fine-tuned with launch/train_temporal_decoder.py; docs/vidrd-decoder.md)")
    ap.add_argument("--text-heads", type=int, default=None,
                    help="text encoder attention heads (default width/64: 16 for ViT-H-14)")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.text_heads is not None:  # 0 would silently mean "the default" (width // 64) further down
        rc = run_cli(lambda: number("--text-heads", a.text_heads, integer=True, minimum=1, maximum=MAX_HEADS))
        if rc:
            return rc
    return run_cli(lambda: convert(a.ckpt, a.config, a.out, components=[c for c in a.components.split(",") if c],
                                   dtype=a.dtype, overwrite=a.overwrite, trust_pickle=a.trust_pickle,
                                   text_heads=a.text_heads, vae_temporal=a.vae_temporal))


if __name__ == "__main__":
    sys.exit(main())
