"""Train a small VideoCrafter2-architecture VAE (configs/vae_demo.py) on frames of the demo world.

    nice -n 15 python launch/train_demo_vae.py --out /work/demo_vae_run --steps 3000 --export /work/demo_vae

The demo model's latent is a lossless patch code with no VAE; VidRD's temporal decoder (issue 28) needs
one, so this trains LDM's ``AutoencoderKL`` from scratch on single frames of procedural clips
(``vstar_jax.demo.world``, 32 x 32): every batch takes ``train.batch`` frames, one from each of as many
clips, a pure function of (``train.data_seed``, step). Loss as LDM's autoencoder without its LPIPS and
GAN terms: L1 reconstruction of a posterior sample's decode + ``train.kl_weight`` x KL (LDM: 1e-6).
optax AdamW; orbax checkpoints every ``train.ckpt_every`` steps and on SIGINT/SIGTERM (rerun to resume;
``launch/resumable.py``). ``--export DIR`` writes a vstar-jax checkpoint with one component, ``vae``,
which ``launch/train_temporal_decoder.py --checkpoint DIR`` fine-tunes.
"""
from __future__ import annotations

import argparse
import json
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

from vstar_jax.compile_options import jit
from vstar_jax.configs import vae_demo  # noqa: E402
from launch.resumable import train_loop  # noqa: E402
from launch.train_demo import apply_overrides  # noqa: E402
from vstar_jax.demo import world  # noqa: E402
from vstar_jax.io.checkpoint import save_checkpoint  # noqa: E402
from vstar_jax.models.vae import AutoencoderKL, sample_posterior, split_moments  # noqa: E402

TRAIN_DEFAULTS = {"steps": 3000, "batch": 16, "lr": 1e-3, "warmup": 100, "clip": 1.0, "weight_decay": 0.0,
                  "kl_weight": 1e-6, "data_seed": 0, "init_seed": 0, "ckpt_every": 200, "log_every": 50,
                  "clip_frames": 8}


def make_config(overrides=()):
    c = ml_collections.ConfigDict()
    c.vae = vae_demo.get_config()
    c.size = 32
    c.train = ml_collections.ConfigDict(dict(TRAIN_DEFAULTS))
    return apply_overrides(c, overrides)


def frame_batch(config, step: int) -> np.ndarray:
    """uint8 frames (batch, size, size, 3) of a step: frame j_i of clip i (both drawn from (seed, step))."""
    tr = config.train
    rng = np.random.default_rng([tr.data_seed, step, 3])
    out = []
    for i in range(tr.batch):
        video, _, _ = world.sample_clip(int(tr.data_seed) * 1_000_003 + step * tr.batch + i, int(tr.clip_frames),
                                        int(config.size))
        out.append(world.to_uint8(video[int(rng.integers(0, video.shape[0]))]))
    return np.stack(out)


def make_step(vae, optimizer, kl_weight: float, seed: int):
    def loss_fn(params, x, key):
        moments = vae.apply({"params": params}, x, method=AutoencoderKL.encode)
        mean, logvar = split_moments(moments)
        z = sample_posterior(moments, key)
        rec = vae.apply({"params": params}, z, method=AutoencoderKL.decode)
        kl = 0.5 * jnp.mean(jnp.sum(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3)))
        return jnp.mean(jnp.abs(rec - x)) + kl_weight * kl

    @jit
    def step(params, opt_state, frames, s):
        x = jnp.transpose(jnp.asarray(frames, jnp.float32) / 127.5 - 1.0, (0, 3, 1, 2))
        key = jax.random.fold_in(jax.random.PRNGKey(seed + 1), s)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return lambda params, opt_state, frames, s: step(params, opt_state, jnp.asarray(frames), jnp.int32(s))


def train(config, out, *, export=None, progress=True, command=""):
    tr = config.train
    vae = AutoencoderKL(ml_collections.FrozenConfigDict(config.vae))
    x = jnp.zeros((1, 3, config.size, config.size))
    params = jit(vae.init)(jax.random.PRNGKey(int(tr.init_seed)), x)["params"]
    sched = optax.warmup_cosine_decay_schedule(0.0, tr.lr, tr.warmup, max(tr.steps, tr.warmup + 1),
                                               end_value=tr.lr * 0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(tr.clip), optax.adamw(sched, weight_decay=tr.weight_decay))
    model = {"vae": json.loads(config.vae.to_json()), "size": int(config.size), "train": json.loads(tr.to_json())}
    model["train"].pop("steps", None)
    n = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(params))
    print(json.dumps({"event": "start", "params": n, "steps": int(tr.steps), "batch": int(tr.batch)}), flush=True)
    res = train_loop(out=pathlib.Path(out), params=params, opt_state=optimizer.init(params),
                     step_fn=make_step(vae, optimizer, float(tr.kl_weight), int(tr.init_seed)),
                     batch_fn=lambda s: frame_batch(config, s), steps=int(tr.steps),
                     meta={"model": model, "command": command}, ckpt_every=int(tr.ckpt_every),
                     log_every=int(tr.log_every), progress=progress, desc="demo vae")
    if export is not None and not res["stopped"]:
        record = {"steps": res["step"], "wall_s": res["meta"].get("wall_s"), "command": command,
                  "history": res["meta"].get("history", [])[-5:]}
        save_checkpoint(str(export), {"vae": jax.device_get(res["params"])},
                        {"vae": config.vae.to_dict(), "demo_vae": record})
        print(json.dumps({"event": "exported", "dir": str(export), "step": res["step"]}), flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="orbax run directory (resumed if it exists)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (train.*, vae.*)")
    ap.add_argument("--export", default=None, help="write a vstar-jax checkpoint (component vae) here at the end")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        config = make_config(args.set)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.steps is not None:
        config.train.steps = args.steps
    command = "python launch/train_demo_vae.py " + " ".join(argv if argv is not None else sys.argv[1:])
    train(config, args.out, export=pathlib.Path(args.export) if args.export else None,
          progress=not args.no_progress, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
