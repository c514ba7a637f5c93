"""Train StreamingT2V's CAM and APM on top of the embedded demo model, the base model frozen.

    nice -n 15 python launch/train_streaming.py --out /work/streaming_ckpt --steps 1500 \
        [--set train.batch=8 ...] [--export vstar_jax/assets/demo_model]

As StreamingT2V trains them (``t2v_enhanced/configs/text_to_video/config.yaml``: base UNet frozen, the
control branch, the mergers and the image-token parts trained): the UNet gets ``unet.cam`` / ``unet.apm``
(``vstar_jax.demo.streaming.demo_settings``), the control branch starts as a copy of the base encoder
(``ControlNetModel.from_unet``), the injections at zero (so step 0 is exactly the base model), and only
the CAM / APM parameters receive gradients (optax AdamW; the base UNet and text encoder are constants).

Data: procedural clips LONGER than the base model's window (a clip of L in {2, 4, 8} x window frames,
its motion spread over all L frames), cut into the chunks ``--long-video streaming:F:C`` makes (F = the
window, consecutive chunks overlapping by C); one chunk k >= 1 per clip: the model is conditioned on its
first C frames (the previous chunk's last C, clean, through CAM) and on the clip's first frame (the first
chunk's anchor, through APM), and denoises the whole chunk (v-prediction loss as the base model's).
Captions are dropped for CFG with the base run's probability; a dropped row also embeds a zero anchor
(the reference's unconditional image). Every batch and noise draw is a pure function of (seed, step);
the orbax checkpoint (every ``train.ckpt_every`` steps and on SIGINT/SIGTERM) holds the trainable params,
optimizer state, EMA, step and history: rerun the same command to resume. ``--export DIR`` writes
``streaming.safetensors`` + ``streaming.json`` there (the base model's files are not touched).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax.traverse_util import flatten_dict, unflatten_dict  # noqa: E402

from launch.train_demo import _manager, _save, apply_overrides, path_mask, restore_latest, sample_timesteps  # noqa: E402
from vstar_jax.compile_options import jit
from vstar_jax.demo import model as demo_model  # noqa: E402
from vstar_jax.demo import streaming as demo_streaming  # noqa: E402
from vstar_jax.demo import world  # noqa: E402
from vstar_jax.diffusion.parameterization import target  # noqa: E402
from vstar_jax.diffusion.schedules import make_alphas_cumprod  # noqa: E402
from vstar_jax.models.streaming import init_control_from_base, latent_anchor_embedding, split_params  # noqa: E402
from vstar_jax.models.streaming import StreamingUNet  # noqa: E402

TRAIN_DEFAULTS = {"steps": 1500, "batch": 8, "lr": 3e-4, "warmup": 50, "clip": 1.0, "weight_decay": 0.0,
                  "ema": 0.99, "data_seed": 1, "init_seed": 0, "ckpt_every": 100, "log_every": 10,
                  "uncond_prob": 0.1, "fg_weight": 4.0, "high_noise_frac": 0.3, "lengths": (2, 4, 8)}


def make_config(base_config, overrides=()):
    settings = demo_streaming.demo_settings(base_config)
    c = demo_streaming.with_streaming(base_config, settings)
    c.train = ml_collections.ConfigDict(dict(TRAIN_DEFAULTS))
    return apply_overrides(c, overrides), settings


def make_batch(config, step: int, tokenizer, cache: dict):
    """(chunk video (b, F, H, W, 3), anchor frame (b, H, W, 3), tokens, drop mask (b,), path masks) of a step."""
    tr, window, cond = config.train, int(config.frames), int(config.unet.cam.frames)
    hop = window - cond
    rng = np.random.default_rng([tr.data_seed, step, 11])
    vids, anchors, masks, rows = [], [], [], []
    drop = rng.random(tr.batch) < tr.uncond_prob
    for i in range(tr.batch):
        length = window * int(rng.choice(tr.lengths))
        length = window + ((length - window) // hop) * hop  # a length streaming:F:C makes
        v, cap, spec = world.sample_clip(int(tr.data_seed) * 1_000_003 + step * tr.batch + i, length, config.size)
        k = int(rng.integers(1, (length - window) // hop + 1))  # a chunk with a previous chunk
        chunk = v[k * hop: k * hop + window]
        vids.append(chunk)
        anchors.append(v[0])
        masks.append(path_mask(chunk, spec))
        text = "" if drop[i] else cap
        if text not in cache:
            cache[text] = tokenizer([text])[0]
        rows.append(cache[text])
    return (np.stack(vids), np.stack(anchors), np.stack(rows).astype(np.int32), drop.astype(np.float32),
            np.stack(masks))


def make_train_step(config, unet, text, base_unet, text_params, optimizer):
    d = config.diffusion
    ac = jnp.asarray(make_alphas_cumprod(d.linear_start, d.linear_end, d.num_timesteps), jnp.float32)
    prediction = str(d.get("prediction", "eps"))
    patch, n_cond = config.patch, int(config.unet.cam.frames)
    tr = config.train
    base_flat = {k: jnp.asarray(v) for k, v in base_unet.items()}

    def loss_fn(extra, video, anchor, tokens, drop, mask, step):
        params = unflatten_dict({**base_flat, **extra}, sep="/")
        key = jax.random.fold_in(jax.random.PRNGKey(tr.init_seed + 7), step)
        kt, kn = jax.random.split(key)
        x0 = demo_model.patchify(video, patch)
        b = x0.shape[0]
        t = sample_timesteps(kt, b, ac.shape[0], float(tr.high_noise_frac))
        noise = jax.random.normal(kn, x0.shape)
        a = ac[t][:, None, None, None, None]
        xt = jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * noise
        ctx = jax.lax.stop_gradient(text.apply({"params": text_params}, tokens))
        anchor_lat = demo_model.patchify(anchor[:, None], patch)[:, :, 0]
        img = latent_anchor_embedding(anchor_lat) * (1.0 - drop)[:, None]
        out = unet.apply({"params": params}, xt, t, ctx, cam_frames=x0[:, :, :n_cond], image_embed=img)
        on_path = demo_model.patchify(jnp.broadcast_to(mask[:, None, :, :, None], video.shape), patch) > 0.0
        weight = 1.0 + float(tr.fg_weight) * on_path.astype(jnp.float32)
        return jnp.mean(weight * (out - target(x0, noise, a, prediction)) ** 2)

    ema_decay = float(tr.ema)

    @jit
    def train_step(extra, opt_state, ema, video, anchor, tokens, drop, mask, step):
        loss, grads = jax.value_and_grad(loss_fn)(extra, video, anchor, tokens, drop, mask, step)
        updates, opt_state = optimizer.update(grads, opt_state, extra)
        extra = optax.apply_updates(extra, updates)
        decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema, extra)
        return extra, opt_state, ema, loss, optax.global_norm(grads)

    return train_step


def initial_params(config, base_params: dict) -> dict:
    """Full UNet params: the base model's, plus fresh CAM / APM params (control = a copy of the base encoder)."""
    unet = StreamingUNet(config.unet.to_dict() if hasattr(config.unet, "to_dict") else dict(config.unet))
    n_cond = int(config.unet.cam.frames)
    shape = demo_model.latent_shape(config, config.frames)
    x = jnp.zeros(shape)
    ctx = jnp.zeros((1, config.text.context_length, config.unet.context_dim))
    fresh = jit(lambda k: unet.init(k, x, jnp.zeros((1,), jnp.int32), ctx, cam_frames=x[:, :, :n_cond],
                                        image_embed=jnp.zeros((1, config.unet.apm.image_dim))))(
        jax.random.PRNGKey(config.train.init_seed))["params"]
    flat = flatten_dict(jax.device_get(fresh), sep="/")
    flat.update(flatten_dict(jax.device_get(base_params), sep="/"))
    return init_control_from_base(unflatten_dict(flat, sep="/"))


def train(config, settings, out: pathlib.Path, *, export=None, export_only=False, progress=True, command=""):
    tr = config.train
    base = demo_model.load_demo_model(streaming=False)
    unet = StreamingUNet(config.unet.to_dict())
    full = initial_params(config, base.unet_params)
    base_flat, extra = split_params(full)
    extra = {k: jnp.asarray(v) for k, v in extra.items()}
    sched = optax.warmup_cosine_decay_schedule(0.0, tr.lr, tr.warmup, max(tr.steps, tr.warmup + 1),
                                               end_value=tr.lr * 0.1)
    optimizer = optax.chain(optax.clip_by_global_norm(tr.clip), optax.adamw(sched, b1=0.9, b2=0.99,
                                                                            weight_decay=tr.weight_decay))
    opt_state = optimizer.init(extra)
    ema = extra
    mngr = _manager(out, config)
    cfg_json = json.loads(config.to_json())
    meta = {"config": cfg_json, "history": [], "wall_s": 0.0, "step": 0, "command": command, "runs": []}
    restored = restore_latest(mngr, {"params": extra, "opt_state": opt_state, "ema": ema})
    start = 0
    if restored is not None:
        start, state, old = restored
        if old["config"].get("unet") != cfg_json.get("unet"):
            raise ValueError(f"checkpoint in {out} was trained with another model config; use a new --out")
        extra, opt_state, ema = state["params"], state["opt_state"], state["ema"]
        meta.update(history=old.get("history", []), wall_s=old.get("wall_s", 0.0), runs=old.get("runs", []),
                    command=old.get("command", command))
        print(json.dumps({"event": "resume", "step": start}), flush=True)
    if not export_only:
        meta["runs"] = meta["runs"] + [{"command": command, "from_step": start}]
    n_extra = sum(int(np.prod(v.shape)) for v in extra.values())
    print(json.dumps({"event": "start", "step": start, "steps": tr.steps, "trainable_params": n_extra,
                      "frozen_unet_params": int(sum(int(np.prod(v.shape)) for v in base_flat.values())),
                      "batch": tr.batch}), flush=True)
    stop = {"flag": False}

    def _on_signal(signum, frame):  # noqa: ARG001
        stop["flag"] = True

    old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    step = start
    try:
        if not export_only and start < tr.steps:
            train_step = make_train_step(config, unet, base.text, base_flat, base.text_params, optimizer)
            cache: dict = {}
            losses, t_last, wall0, t_start = [], time.time(), meta["wall_s"], time.time()
            while step < tr.steps and not stop["flag"]:
                video, anchor, tokens, drop, mask = make_batch(config, step, base.tokenizer, cache)
                extra, opt_state, ema, loss, gnorm = train_step(
                    extra, opt_state, ema, jnp.asarray(video), jnp.asarray(anchor), jnp.asarray(tokens),
                    jnp.asarray(drop), jnp.asarray(mask), jnp.int32(step))
                step += 1
                losses.append(loss)  # a device array: no host sync per step (read at the log line)
                if step % tr.log_every == 0 or step == tr.steps:
                    now = time.time()
                    mean_loss = float(np.mean(np.asarray(jax.device_get(losses), np.float64)))
                    rec = {"step": step, "loss": mean_loss, "grad_norm": float(gnorm),
                           "s_per_step": round((now - t_last) / max(len(losses), 1), 3),
                           "wall_s": round(wall0 + now - t_start, 1)}
                    meta["history"].append(rec)
                    if progress:
                        print(json.dumps(rec), flush=True)
                    losses, t_last = [], now
                if step % tr.ckpt_every == 0 or step == tr.steps or stop["flag"]:
                    meta.update(step=step, wall_s=round(wall0 + time.time() - t_start, 1))
                    _save(mngr, step, extra, opt_state, ema, meta)
            if stop["flag"]:
                print(json.dumps({"event": "interrupted", "step": step, "saved": True}), flush=True)
        if export is not None and not stop["flag"]:
            record = {"steps": step, "wall_s": meta["wall_s"], "command": meta.get("command", command),
                      "runs": meta["runs"], "history": meta["history"], "weights": f"EMA (decay {tr.ema})",
                      "train": json.loads(config.train.to_json()),
                      "machine": f"{os.cpu_count()} CPU cores, JAX {jax.__version__} {jax.default_backend()}"}
            demo_streaming.save_streaming(export, jax.device_get(ema), settings, record)
            print(json.dumps({"event": "exported", "dir": str(export), "step": step}), flush=True)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        mngr.close()
    return {"step": step, "extra": extra, "ema": ema, "meta": meta}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="orbax checkpoint directory (resumed if it exists)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (train.*)")
    ap.add_argument("--export", default=None, help="write streaming.safetensors + streaming.json here at the end")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    base = demo_model.load_demo_model(streaming=False)
    config, settings = make_config(base.config, args.set)
    if args.steps is not None:
        config.train.steps = args.steps
    command = "python launch/train_streaming.py " + " ".join(argv if argv is not None else sys.argv[1:])
    train(config, settings, pathlib.Path(args.out), export=pathlib.Path(args.export) if args.export else None,
          export_only=args.export_only, progress=not args.quiet, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
