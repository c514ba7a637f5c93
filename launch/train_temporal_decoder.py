"""Fine-tune VidRD's temporal decoder layers of a checkpoint's VAE on videos; everything else frozen.

    nice -n 15 python launch/train_temporal_decoder.py --checkpoint CKPT --videos MY_VIDEOS/ --out RUN \
        [--frames 8 --size 64 --steps 2000 --temporal conv,attention:2 --set train.lr=1e-4 ...] \
        [--tfds ucf101 --data-dir ~/tensorflow_datasets] [--export CKPT_WITH_TEMPORAL_DECODER]

CKPT is a vstar-jax checkpoint with a ``vae`` component (``vstar-jax convert ...``, or the demo VAE of
``launch/train_demo_vae.py``). Its VAE gets the temporal layers of ``--temporal`` (zero-initialised:
step 0 is the image decoder exactly; a VAE that already has them continues from them) and only they
train (optax AdamW on the temporal params; the encoder, the image decoder and post_quant_conv are
constants, so no gradient or optimizer state exists for them).

Data: clips of ``--frames`` frames at ``--size`` through tensorflow-datasets: the project's builder of a
folder of videos (``--videos``; :mod:`vstar_jax.io.video_tfds`, prepared once in ``--data-dir``), or a
prepared catalog dataset (``--tfds ucf101``). Step s takes clips ``perm_e[(s * batch + i) mod n]`` with
``perm_e`` a permutation seeded by (``train.seed``, epoch e): a pure function of the step.

Loss (VidRD: reconstruction of the clip from its image-encoder latents; its exact terms are not
published): the clip is encoded frame by frame by the frozen encoder (posterior mean: the decoder then
learns to decode what diffusion produces, a latent per frame, not the encoder's noise), decoded by the
temporal decoder as one video, and scored by

    L = mean |x_hat - x|  +  train.temporal_weight * mean |(x_hat[t+1] - x_hat[t]) - (x[t+1] - x[t])|

L1 as LDM's autoencoder reconstruction term (LPIPS and the patch GAN of LDM's loss are left out: no
network weights here, and a GAN is unstable at this scale); the second term is the same L1 on frame
differences: it is what flicker is, so it gives the temporal layers their signal directly (0 = pure
per-frame reconstruction). ``train.latent_noise`` > 0 (default 0: VidRD's plain reconstruction) adds
independent Gaussian noise to each frame's latent (that times the clip's latent std), the frame-to-frame
jitter of generated latents that makes an image decoder flicker, which the temporal layers then learn
to smooth. Orbax checkpoints every ``train.ckpt_every`` steps and on SIGINT/SIGTERM:
rerun the same command to resume. ``--export DIR`` writes a vstar-jax checkpoint: the source's other
components unchanged and the VAE with its trained temporal layers (its config's ``vae.temporal``),
which ``vstar-jax generate --checkpoint DIR`` decodes in windows (docs/vidrd-decoder.md).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from flax.traverse_util import flatten_dict  # noqa: E402

from vstar_jax.checkpoints_convert.vae import parse_temporal_spec  # noqa: E402
from launch.resumable import train_loop  # noqa: E402
from launch.train_demo import apply_overrides  # noqa: E402
from vstar_jax.compile_options import jit
from vstar_jax.errors import VstarError  # noqa: E402
from vstar_jax.io.checkpoint import load_checkpoint, read_config, save_checkpoint  # noqa: E402
from vstar_jax.io.video_tfds import prepared_clips  # noqa: E402
from vstar_jax.models.temporal_decoder import merge_params, split_temporal, temporal_settings, with_temporal  # noqa: E402
from vstar_jax.models.vae import AutoencoderKL, init_temporal_params, split_moments  # noqa: E402

TRAIN_DEFAULTS = {"steps": 2000, "batch": 4, "lr": 1e-4, "warmup": 50, "clip": 1.0, "weight_decay": 0.0,
                  "seed": 0, "ckpt_every": 100, "log_every": 10, "temporal_weight": 1.0, "latent_noise": 0.0}


def make_config(overrides=(), *, frames: int = 8, size: int = 64, temporal: str = "conv,attention:2"):
    c = ml_collections.ConfigDict()
    c.frames, c.size, c.temporal = int(frames), int(size), str(temporal)
    c.train = ml_collections.ConfigDict(dict(TRAIN_DEFAULTS))
    return apply_overrides(c, overrides)


def check_has_vae(checkpoint) -> dict:
    """The checkpoint's config; one-line VstarError when it is no checkpoint or has no VAE."""
    try:
        cfg = read_config(str(checkpoint))
    except FileNotFoundError:
        raise VstarError(f"{checkpoint} is not a vstar-jax checkpoint (no config.json)") from None
    comps = list(cfg.get("components", []))
    if "vae" not in comps:
        raise VstarError(f"checkpoint {checkpoint} has no VAE (its components: {', '.join(comps) or 'none'}); "
                         f"give a checkpoint converted with the vae component, or train one with "
                         f"launch/train_demo_vae.py")
    return cfg


def load_vae(checkpoint) -> tuple:
    """(VAE config, VAE params) of a vstar-jax checkpoint; one-line VstarError when it has no VAE."""
    cfg = check_has_vae(checkpoint)
    params, _ = load_checkpoint(str(checkpoint), components=["vae"])
    return cfg["vae"], jax.device_get(params["vae"])


def temporal_vae(vae_cfg, vae_params, spec: str, seed: int) -> tuple:
    """(config with temporal layers, frozen image params (flat {'a/b': array}), temporal params (nested,
    what trains and is checkpointed)): the layers of ``spec`` freshly initialised, or the VAE's own when it
    has them already."""
    if temporal_settings(vae_cfg) is None:
        settings = parse_temporal_spec(spec)
        if settings is None:
            raise VstarError("--temporal is empty: name conv, attention or conv,attention[:W]")
        cfg = with_temporal(vae_cfg, **settings)
        image, _ = split_temporal(vae_params)
        temporal = init_temporal_params(cfg, seed)
    else:
        cfg = vae_cfg
        image, temporal = split_temporal(vae_params)
    return cfg, {k: jnp.asarray(v, jnp.float32) for k, v in image.items()}, \
        merge_params({k: jnp.asarray(v, jnp.float32) for k, v in temporal.items()})


def to_model_input(clips) -> jax.Array:
    """uint8 clips (b, F, H, W, 3) -> float32 [-1, 1] (b, F, 3, H, W)."""
    return jnp.transpose(jnp.asarray(clips, jnp.float32) / 127.5 - 1.0, (0, 1, 4, 2, 3))


def reconstruct(vae, params, video, noise: float = 0.0, key=None):
    """Decoded video (b, F, 3, H, W) of ``video`` (same shape, [-1, 1]) through the encoder's posterior
    mean and the (temporal) decoder, the F frames of each clip decoded together. ``noise`` > 0 adds
    independent Gaussian noise to every frame's latent, ``noise`` x the latents' std (per clip)."""
    b, f = video.shape[:2]
    flat = video.reshape((b * f,) + video.shape[2:])
    mean, _ = split_moments(vae.apply({"params": params}, flat, method=AutoencoderKL.encode))
    mean = jax.lax.stop_gradient(mean)
    if noise > 0:
        std = jnp.std(mean.reshape(b, -1), axis=1).repeat(f)[:, None, None, None]
        mean = mean + noise * std * jax.random.normal(key, mean.shape)
    out = vae.apply({"params": params}, mean, num_frames=f, method=AutoencoderKL.decode)
    return out.reshape(video.shape)


def reconstruction_loss(rec, video, temporal_weight: float):
    l1 = jnp.mean(jnp.abs(rec - video))
    dt = jnp.mean(jnp.abs(jnp.diff(rec, axis=1) - jnp.diff(video, axis=1)))
    return l1 + temporal_weight * dt


def hyper(tr) -> tuple:
    """The step's hyperparameters as a hashable tuple (a static argument of the compiled step)."""
    return (float(tr.lr), int(tr.warmup), int(tr.steps), float(tr.clip), float(tr.weight_decay),
            float(tr.latent_noise), int(tr.seed), float(tr.temporal_weight))


def make_optimizer(hp: tuple):
    lr, warmup, steps, clip, weight_decay = hp[:5]
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), end_value=lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(clip), optax.adamw(sched, weight_decay=weight_decay))


@jit(static_argnames=("vae", "hp"))
def train_step(temporal, opt_state, frozen, clips, step, *, vae, hp):
    """One AdamW step of the temporal params (nested) on uint8 clips; ``frozen``: the flat image params,
    an argument rather than constants baked into the program. Compiled once per (VAE, hyperparameters)."""
    def loss_fn(temporal, video):
        params = merge_params({**frozen, **flatten_dict(temporal, sep="/")})
        key = jax.random.fold_in(jax.random.PRNGKey(hp[6]), step)  # the step's latent noise: a pure function
        return reconstruction_loss(reconstruct(vae, params, video, hp[5], key), video, hp[-1])

    loss, grads = jax.value_and_grad(loss_fn)(temporal, to_model_input(clips))
    updates, opt_state = make_optimizer(hp).update(grads, opt_state, temporal)
    return optax.apply_updates(temporal, updates), opt_state, loss


def batch_fn(clips, batch: int, seed: int):
    """Step -> uint8 clips (batch, F, H, W, 3): a pure function of (seed, step)."""
    n = len(clips)
    perms: dict = {}

    def get(step: int):
        idx = []
        for i in range(batch):
            k = step * batch + i
            epoch = k // n
            if epoch not in perms:
                perms.clear()
                perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
            idx.append(int(perms[epoch][k % n]))
        return np.stack([clips[j] for j in idx])

    return get


def _data_key(args) -> dict:
    return {"videos": os.path.abspath(args.videos) if args.videos else None, "tfds": args.tfds,
            "split": args.split, "frame_step": args.frame_step}


def train(config, checkpoint, out, *, clips, data: dict, export=None, progress=True, command="", on_step=None):
    """Fine-tune; returns train_loop's dict plus "config" (the VAE config with temporal layers)."""
    tr = config.train
    vae_cfg, vae_params = load_vae(checkpoint)
    cfg, frozen, temporal = temporal_vae(vae_cfg, vae_params, config.temporal, int(tr.seed))
    vae = AutoencoderKL(ml_collections.FrozenConfigDict(cfg))
    hp = hyper(tr)
    opt_state = make_optimizer(hp).init(temporal)
    model = {"vae": json.loads(cfg.to_json()), "checkpoint": os.path.abspath(str(checkpoint)),
             "frames": int(config.frames), "size": int(config.size), "data": data,
             "train": json.loads(tr.to_json())}
    model["train"].pop("steps", None)  # more steps later is the same run
    n_t = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(temporal))
    n_f = sum(int(np.prod(v.shape)) for v in frozen.values())
    print(json.dumps({"event": "start", "trainable_params": n_t, "frozen_params": n_f, "clips": len(clips),
                      "frames": int(config.frames), "size": int(config.size), "steps": int(tr.steps)}), flush=True)
    res = train_loop(out=pathlib.Path(out), params=temporal, opt_state=opt_state,
                     step_fn=lambda p, o, clips, s: train_step(p, o, frozen, jnp.asarray(clips), jnp.int32(s),
                                                                  vae=vae, hp=hp),
                     batch_fn=batch_fn(clips, int(tr.batch), int(tr.seed)), steps=int(tr.steps),
                     meta={"model": model, "command": command}, ckpt_every=int(tr.ckpt_every),
                     log_every=int(tr.log_every), progress=progress, desc="temporal decoder", on_step=on_step)
    res["config"] = cfg
    res["frozen"] = frozen
    if export is not None and not res["stopped"]:
        export_checkpoint(checkpoint, export, cfg, {**frozen, **flatten_dict(res["params"], sep="/")}, res["meta"])
        print(json.dumps({"event": "exported", "dir": str(export), "step": res["step"]}), flush=True)
    return res


def export_checkpoint(checkpoint, export, cfg, flat_vae: dict, meta: dict) -> str:
    """A vstar-jax checkpoint: ``checkpoint``'s components, the VAE replaced by the temporal one."""
    src = read_config(str(checkpoint))
    params, _ = load_checkpoint(str(checkpoint))
    params["vae"] = merge_params({k: np.asarray(v) for k, v in flat_vae.items()})
    out_cfg = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in src.items()
               if k not in ("components", "format", "params_files")}
    out_cfg["vae"] = cfg.to_dict()
    out_cfg["temporal_decoder"] = {"from": os.path.abspath(str(checkpoint)), "steps": meta.get("step"),
                                   "command": meta.get("command"), "history": meta.get("history", [])[-5:]}
    return save_checkpoint(str(export), params, out_cfg, sources=[checkpoint])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="vstar-jax checkpoint with a vae component")
    ap.add_argument("--out", required=True, help="orbax run directory (resumed if it exists)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", help="a folder of videos (mp4, mov, mkv, avi, webm, gif)")
    src.add_argument("--tfds", help="a prepared tensorflow-datasets catalog dataset (e.g. ucf101)")
    ap.add_argument("--data-dir", default=None, help="TFDS data dir (default ~/tensorflow_datasets)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    ap.add_argument("--size", type=int, default=64, help="clip side in pixels (default 64)")
    ap.add_argument("--frame-step", type=int, default=1, help="take every k-th frame (default 1)")
    ap.add_argument("--temporal", default="conv,attention:2", help="temporal layers: conv,attention[:WINDOW]")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (train.*)")
    ap.add_argument("--export", default=None, help="write a checkpoint with the temporal decoder here at the end")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        config = make_config(args.set, frames=args.frames, size=args.size, temporal=args.temporal)
        if args.steps is not None:
            config.train.steps = args.steps
        parse_temporal_spec(config.temporal)
        if args.export and os.path.lexists(args.export):
            raise VstarError(f"--export {args.export} exists; choose a new folder")
        check_has_vae(args.checkpoint)
        clips = prepared_clips(args.videos, frames=args.frames, size=args.size, split=args.split,
                               frame_step=args.frame_step, data_dir=args.data_dir, tfds_name=args.tfds)
    except (VstarError, ValueError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    command = "python launch/train_temporal_decoder.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        train(config, args.checkpoint, args.out, clips=clips, data=_data_key(args),
              export=pathlib.Path(args.export) if args.export else None, progress=not args.no_progress,
              command=command)
    except VstarError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
