"""Tiny random PyTorch reference models shared by the conversion tests (torch, diffusers, transformers).

``modelscope_folder(root)`` writes a diffusers text-to-video folder (UNet3D, VAE, CLIP text encoder and,
optionally, the scheduler) and returns the torch modules; ``hf_to_openclip_layers`` /
``hf_vision_to_openclip`` rewrite transformers CLIP weights in OpenCLIP's key layout.
"""
from __future__ import annotations

import numpy as np


def modelscope_folder(root, *, unet_channels=(32, 64), vae_channels=(32, 64), groups=32,
                      perturb=("unet", "vae", "text"), scheduler: bool = True) -> dict:
    """Write ``root/{unet,vae,text_encoder[,scheduler]}`` of a tiny random ModelScope-style model
    (2 levels, cross-attention width 32, VAE factor 2); ``perturb``: the modules whose weights get
    0.1 N(0, 1) added (non-trivial norms and zero-initialised layers). Returns {"unet", "vae", "text"}."""
    import diffusers
    import torch
    import transformers

    torch.manual_seed(0)
    unet = diffusers.UNet3DConditionModel(
        block_out_channels=tuple(unet_channels), layers_per_block=1, attention_head_dim=8, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        norm_num_groups=groups).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=tuple(vae_channels), norm_num_groups=groups, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2).eval()
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=49406, eos_token_id=49407,
        pad_token_id=1)).eval()
    models = {"unet": unet, "vae": vae, "text": text}
    with torch.no_grad():
        for name in perturb:
            for p in models[name].parameters():
                p.add_(0.1 * torch.randn_like(p))
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    if scheduler:
        diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                steps_offset=1, set_alpha_to_one=False).save_pretrained(root / "scheduler")
    return models


def hf_to_openclip_layers(sd, src: str, dst: str, n: int) -> dict:
    """transformers CLIP encoder layers ``{src}encoder.layers.{i}`` -> OpenCLIP resblocks
    ``{dst}transformer.resblocks.{i}`` (q, k, v fused into ``in_proj``)."""
    out = {}
    for i in range(n):
        s, d = f"{src}encoder.layers.{i}", f"{dst}transformer.resblocks.{i}"
        out[f"{d}.attn.in_proj_weight"] = np.concatenate([sd[f"{s}.self_attn.{q}_proj.weight"] for q in "qkv"])
        out[f"{d}.attn.in_proj_bias"] = np.concatenate([sd[f"{s}.self_attn.{q}_proj.bias"] for q in "qkv"])
        for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            out[f"{d}.{b}.weight"], out[f"{d}.{b}.bias"] = sd[f"{s}.{a}.weight"], sd[f"{s}.{a}.bias"]
    return out


def hf_vision_to_openclip(sd, layers: int, prefix: str = "visual.") -> dict:
    """A transformers CLIP vision tower (``vision_model.*`` + ``visual_projection``) in OpenCLIP's
    ``visual.*`` layout under ``prefix`` (``proj`` a (width, out) matrix)."""
    v = "vision_model."
    out = hf_to_openclip_layers(sd, v, prefix, layers)
    out[f"{prefix}conv1.weight"] = sd[v + "embeddings.patch_embedding.weight"]
    out[f"{prefix}class_embedding"] = sd[v + "embeddings.class_embedding"]
    out[f"{prefix}positional_embedding"] = sd[v + "embeddings.position_embedding.weight"]
    out[f"{prefix}proj"] = np.ascontiguousarray(sd["visual_projection.weight"].T)
    for a, b in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        out[f"{prefix}{b}.weight"], out[f"{prefix}{b}.bias"] = sd[f"{v}{a}.weight"], sd[f"{v}{a}.bias"]
    return out
