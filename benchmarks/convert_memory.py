"""Peak memory of converting a full-size VideoCrafter2 UNet checkpoint (1.4 B parameters, 5.65 GB fp32).

    python benchmarks/convert_memory.py --workdir /tmp/vc2mem

Writes a random-weight ``model.ckpt`` ({"state_dict": ...}, lvdm key layout, real
VideoCrafter2 shapes) and the real inference YAML, then converts it in a fresh
subprocess and prints that process's peak resident memory next to the checkpoint
size (ratio = how many checkpoint copies were held at the peak).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import yaml

VC2_UNET = dict(in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1], num_res_blocks=2,
                channel_mult=[1, 2, 4, 4], num_head_channels=64, transformer_depth=1, context_dim=1024,
                use_linear=True, use_checkpoint=True, temporal_conv=True, temporal_attention=True,
                temporal_selfatt_only=True, use_relative_position=False, use_causal_attention=False,
                temporal_length=16, addition_attention=True, fps_cond=True)


def torch_shape(key, flax_shape, kind):
    if kind == "dense":
        o_i = (flax_shape[1], flax_shape[0])
        return o_i + ((1,) if key.startswith("init_attn.0.proj_") and key.endswith("weight") else ())
    if kind == "conv2d":
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    if kind == "conv3d":
        return (flax_shape[4], flax_shape[3], flax_shape[0], flax_shape[1], flax_shape[2])
    return tuple(flax_shape)


def make_checkpoint(workdir):
    import torch

    from vstar_jax.checkpoints_convert.common import flatten
    from vstar_jax.checkpoints_convert.unet import plan_unet_lvdm, unet_config_from_lvdm
    from vstar_jax.models.unet3d import UNet3D, init_shapes

    cfg = unet_config_from_lvdm(VC2_UNET)
    shapes = flatten(init_shapes(UNet3D(cfg)))
    sd = {}
    for key, (dst, kind) in plan_unet_lvdm(cfg).items():
        sd["model.diffusion_model." + key] = torch.empty(torch_shape(key, shapes[dst].shape, kind)).normal_(0, 0.02)
    path = os.path.join(workdir, "model.ckpt")
    torch.save({"state_dict": sd}, path)
    with open(os.path.join(workdir, "inference_t2v_512_v2.0.yaml"), "w") as f:
        yaml.safe_dump({"model": {"params": {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000,
                                             "scale_factor": 0.18215, "use_scale": True, "scale_b": 0.7,
                                             "image_size": [40, 64], "channels": 4,
                                             "unet_config": {"params": VC2_UNET}}}}, f)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/vc2_convert_mem")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)
    os.makedirs(a.workdir, exist_ok=True)
    ckpt = os.path.join(a.workdir, "model.ckpt")
    if not os.path.exists(ckpt):
        t0 = time.time()
        # in a subprocess, so the generator's memory is not counted below
        subprocess.run([sys.executable, "-c", f"import benchmarks.convert_memory as m; m.make_checkpoint({a.workdir!r})"],
                       check=True)
        print(f"made {ckpt} in {time.time() - t0:.0f}s", file=sys.stderr)
    out = os.path.join(a.workdir, "converted")
    shutil.rmtree(out, ignore_errors=True)
    code = ("import resource, time, json, sys; t=time.time();"
            "from vstar_jax.checkpoints_convert.videocrafter2 import convert;"
            f"convert({ckpt!r}, {os.path.join(a.workdir, 'inference_t2v_512_v2.0.yaml')!r}, {out!r}, components=['unet']);"
            "print(json.dumps({'seconds': time.time()-t, 'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20}))")
    r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    sys.stderr.write(r.stderr)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    size = os.path.getsize(ckpt) / 2**30
    res.update(checkpoint_gib=size, copies_at_peak=res["peak_rss_gib"] / size)
    print(json.dumps(res))
    if not a.keep:
        shutil.rmtree(a.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
