"""Peak memory of converting a full-size VideoCrafter2 UNet checkpoint (1.4 B parameters, 5.65 GB fp32).

    python benchmarks/convert_memory.py --workdir /tmp/vc2mem

Writes a random-weight ``model.ckpt`` ({"state_dict": ...}, lvdm key layout, real
VideoCrafter2 shapes) and the real inference YAML, then converts it in a fresh
subprocess and prints that process's peak resident memory next to the checkpoint
size (ratio = how many checkpoint copies were held at the peak).

``--baseline-rev REV`` also converts the same checkpoint with the converter as it was at git revision
REV (a ``git archive`` copy), one process after the other, so a before/after figure comes from one
command: ``--baseline-rev 8d0fad5^`` is the converter before the memory-mapped source was released
before writing (RESULTS.md: "19.0 GiB before the fix").
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
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


def convert_once(workdir: str, ckpt: str, rev=None) -> dict:
    """Convert the UNet in a fresh process (this checkout, or the code at git revision ``rev``); its
    seconds and peak RSS."""
    out = os.path.join(workdir, "converted")
    shutil.rmtree(out, ignore_errors=True)
    env, cwd = dict(os.environ), None
    if rev is not None:  # the old code from git archive, first on the path (older trees had top-level packages)
        cwd = tempfile.mkdtemp(prefix="convmem-")
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        archive = subprocess.run(["git", "-C", repo, "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", cwd], input=archive, check=True)
        env["PYTHONPATH"] = cwd
    # an old tree's top-level checkpoints_convert first: its vstar_jax has no such subpackage, and the
    # editable install's finder would map that name to this checkout's converter
    first, second = (("checkpoints_convert", "vstar_jax.checkpoints_convert") if rev is not None
                     else ("vstar_jax.checkpoints_convert", "checkpoints_convert"))
    code = ("import resource, time, json, sys; t=time.time()\n"
            f"try:\n from {first}.videocrafter2 import convert\n"
            f"except ImportError:\n from {second}.videocrafter2 import convert\n"
            "print('converter:', convert.__code__.co_filename, file=sys.stderr)\n"
            f"convert({ckpt!r}, {os.path.join(workdir, 'inference_t2v_512_v2.0.yaml')!r}, {out!r}, components=['unet'])\n"
            "print(json.dumps({'seconds': time.time()-t, 'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20}))")
    try:
        r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd=cwd)
    finally:
        if cwd is not None:
            shutil.rmtree(cwd, ignore_errors=True)
    sys.stderr.write(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/vc2_convert_mem")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--baseline-rev", help="also convert with the converter at this git revision (e.g. 8d0fad5^)")
    a = ap.parse_args(argv)
    os.makedirs(a.workdir, exist_ok=True)
    ckpt = os.path.join(a.workdir, "model.ckpt")
    if not os.path.exists(ckpt):
        t0 = time.time()
        # in a subprocess, so the generator's memory is not counted below
        subprocess.run([sys.executable, "-c", f"import benchmarks.convert_memory as m; m.make_checkpoint({a.workdir!r})"],
                       check=True)
        print(f"made {ckpt} in {time.time() - t0:.0f}s", file=sys.stderr)
    size = os.path.getsize(ckpt) / 2**30
    runs = [("current", None)] + ([(a.baseline_rev, a.baseline_rev)] if a.baseline_rev else [])
    for label, rev in runs:
        res = convert_once(a.workdir, ckpt, rev)
        res.update(code=label, checkpoint_gib=size, copies_at_peak=res["peak_rss_gib"] / size)
        print(json.dumps(res), flush=True)
    if not a.keep:
        shutil.rmtree(a.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
