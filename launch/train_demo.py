"""Train the embedded demo model (configs/demo_tiny.py, or demo_vc: configs/demo_vc.py) on the procedural world.

    python launch/train_demo.py --out /work/demo_ckpt --steps 6000 \
        [--set train.batch=8 --set unet.model_channels=32 ...] [--init-from OTHER_RUN] \
        [--export vstar_jax/assets/demo_model]

The UNet and the text encoder are trained jointly from scratch (optax AdamW) on VideoCrafter2's
schedule (``make_alphas_cumprod``) with the config's parameterization (``diffusion.prediction``: eps
or v), optional Min-SNR weighting (``train.min_snr``), a loss weight on the pixels the object's path
crosses (``train.fg_weight``) and a share of timesteps from the noisier half (``train.high_noise_frac``);
the exported weights are an EMA of the params (``train.ema``). Every batch and every noise draw is a
pure function of (data seed, step), and the orbax checkpoint (every ``train.ckpt_every`` steps, and on
SIGINT/SIGTERM) holds params, optimizer state, EMA, step and the loss history, so an interrupted run
resumes exactly where it stopped: rerun the same command. ``--init-from DIR`` starts a new run from
another run's params (new parameters, e.g. relative-position tables, keep their initialisation).
``--export DIR`` writes the shipped model (``vstar_jax.demo.model.save_demo_model``) from the latest
checkpoint when training ends; ``--export-only`` exports without training.
"""
from __future__ import annotations

import argparse
import ast
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
import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from vstar_jax.compile_options import jit
from vstar_jax.configs import demo_tiny, demo_vc  # noqa: E402
from vstar_jax.demo import model as demo_model  # noqa: E402
from vstar_jax.demo import world  # noqa: E402
from vstar_jax.diffusion.parameterization import check_prediction, min_snr_weight, target  # noqa: E402
from vstar_jax.diffusion.schedules import make_alphas_cumprod  # noqa: E402
from vstar_jax.models.tokenizer import get_tokenizer  # noqa: E402

CONFIGS = {"demo_tiny": demo_tiny, "demo_vc": demo_vc}  # --config


def apply_overrides(config, overrides):
    """``key.sub=value`` strings (value a Python literal, else a string) onto a ConfigDict."""
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        node = config
        *path, last = key.split(".")
        for p in path:
            if p not in node:
                raise ValueError(f"unknown config key {key!r}")
            node = node[p]
        if last not in node:
            raise ValueError(f"unknown config key {key!r}")
        node[last] = value
    return config


def clip_seed(data_seed: int, step: int, index: int, batch: int) -> int:
    """World seed of clip ``index`` in the batch of ``step``."""
    return int(data_seed) * 1_000_000_007 + int(step) * int(batch) + int(index)


def make_batch(config, step: int, tokenizer, token_cache: dict):
    """(videos float32 (b, F, H, W, 3), tokens int32 (b, 77), captions, path masks float32 (b, H, W))
    of a step: a pure function. A clip's path mask marks the pixels its object covers in any frame."""
    tr = config.train
    vids, caps, masks = [], [], []
    for i in range(tr.batch):
        v, cap, spec = world.sample_clip(clip_seed(tr.data_seed, step, i, tr.batch), config.frames, config.size,
                                         tr.kind)
        vids.append(v)
        caps.append(cap)
        masks.append(path_mask(v, spec))
    drop = np.random.default_rng([tr.data_seed, step, 7]).random(tr.batch) < tr.uncond_prob
    texts = ["" if d else c for c, d in zip(caps, drop)]
    rows = []
    for t in texts:
        if t not in token_cache:
            token_cache[t] = tokenizer([t])[0]
        rows.append(token_cache[t])
    return np.stack(vids), np.stack(rows).astype(np.int32), texts, np.stack(masks)


def path_mask(video: np.ndarray, spec: dict, threshold: float = 0.02) -> np.ndarray:
    """(H, W) float32: 1 where the clip differs from its background in some frame (the object's path)."""
    bg = world.background(spec["nuisance"], video.shape[1])
    return (np.abs(video - bg[None]).max(axis=(0, 3)) > threshold).astype(np.float32)


def _decay_mask(params):
    """Weight decay on matrices/kernels only (not biases, norms, embeddings, positions)."""
    def mask(path, x):
        names = [getattr(p, "key", str(p)) for p in path]
        return x.ndim >= 2 and "token_embedding" not in names and "positional_embedding" not in names
    return jax.tree_util.tree_map_with_path(mask, params)


def make_optimizer(config):
    tr = config.train
    sched = optax.warmup_cosine_decay_schedule(0.0, tr.lr, tr.warmup, max(tr.steps, tr.warmup + 1),
                                               end_value=tr.lr * 0.05)
    return optax.chain(optax.clip_by_global_norm(tr.clip),
                       optax.adamw(sched, b1=0.9, b2=0.99, weight_decay=tr.weight_decay, mask=_decay_mask))


def sample_timesteps(key, batch: int, num_timesteps: int, high_frac: float = 0.0):
    """Training timesteps: uniform over [0, T), except a ``high_frac`` share of the batch drawn from the
    noisier half [T/2, T) -- where the caption alone must decide the layout (which way the object
    goes), so where a text-to-video model learns to follow motion words."""
    ku, kh = jax.random.split(key)
    t = jax.random.randint(ku, (batch,), 0, num_timesteps)
    if high_frac <= 0:
        return t
    n_high = int(round(high_frac * batch))
    high = jax.random.randint(kh, (batch,), num_timesteps // 2, num_timesteps)
    return jnp.where(jnp.arange(batch) < n_high, high, t)


def make_train_step(config, unet, text, optimizer):
    d = config.diffusion
    ac = jnp.asarray(make_alphas_cumprod(d.linear_start, d.linear_end, d.num_timesteps), jnp.float32)
    prediction = check_prediction(str(d.get("prediction", "eps")))
    gamma = float(config.train.get("min_snr", 0.0))
    high_frac = float(config.train.get("high_noise_frac", 0.0))
    fg_weight = float(config.train.get("fg_weight", 0.0))
    ema_decay = float(config.train.get("ema", 0.0))
    patch = config.patch
    seed = config.train.init_seed

    def loss_fn(params, video, tokens, mask, step):
        key = jax.random.fold_in(jax.random.PRNGKey(seed + 1), step)
        kt, kn = jax.random.split(key)
        x0 = demo_model.patchify(video, patch)
        b = x0.shape[0]
        t = sample_timesteps(kt, b, ac.shape[0], high_frac)
        noise = jax.random.normal(kn, x0.shape)
        a = ac[t][:, None, None, None, None]
        xt = jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * noise
        ctx = text.apply({"params": params["text"]}, tokens)
        out = unet.apply({"params": params["unet"]}, xt, t, ctx)
        # path-weighted MSE: 1 + fg_weight on the pixels the object crosses (all frames; the patch latent
        # is a rearrangement of pixels, so the mask maps onto it exactly)
        on_path = demo_model.patchify(jnp.broadcast_to(mask[:, None, :, :, None], video.shape), patch) > 0.0
        weight = 1.0 + fg_weight * on_path.astype(jnp.float32)
        per_clip = jnp.mean(weight * (out - target(x0, noise, a, prediction)) ** 2, axis=(1, 2, 3, 4))
        return jnp.mean(min_snr_weight(ac[t], gamma, prediction) * per_clip)

    @jit
    def train_step(params, opt_state, ema, video, tokens, mask, step):
        loss, grads = jax.value_and_grad(loss_fn)(params, video, tokens, mask, step)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if ema_decay > 0:  # bias-free warm start: the average tracks params closely early on
            decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
            ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
        else:
            ema = params
        return params, opt_state, ema, loss, optax.global_norm(grads)

    return train_step


def _manager(out: pathlib.Path, config):
    opts = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(out.resolve(), options=opts)


def _save(mngr, step, params, opt_state, ema, meta):
    state = {"params": params, "opt_state": opt_state, "ema": ema}
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
              force=True)
    mngr.wait_until_finished()


def same_model_config(a, b) -> bool:
    """Equal configs, where a key only one side has counts as equal when its value is off (False, 0,
    None): an option added to the config later, default off, does not orphan older checkpoints."""
    if isinstance(a, dict) and isinstance(b, dict):
        return all(same_model_config(a[k], b[k]) if k in a and k in b else not (a.get(k) or b.get(k))
                   for k in set(a) | set(b))
    return a == b


def restore_latest(mngr, abstract_state):
    """(step, state, meta) of the newest checkpoint, or None."""
    step = mngr.latest_step()
    if step is None:
        return None
    got = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                     meta=ocp.args.JsonRestore()))
    return step, got["state"], got["meta"]


def lineage(meta: dict, limit: int = 20) -> list[dict]:
    """The chain of runs a checkpoint descends from through ``--init-from``, oldest first: per run its
    directory, the step it was taken at, its wall time, command, ``diffusion`` and ``train`` settings
    and whether its UNet had relative position, read from each source's newest checkpoint metadata."""
    def run(link, step, cfg, wall_s, command, **extra):
        return {"dir": link["dir"], "step": int(link.get("step", step)), "wall_s": wall_s, "command": command,
                "diffusion": cfg.get("diffusion"), "train": cfg.get("train"),
                "relative_position": (cfg.get("unet") or {}).get("use_relative_position", False), **extra}

    chain, link = [], meta.get("init_from")
    while link and len(chain) < limit:
        if is_export(link["dir"]):  # an export records its own lineage: splice it in, then this run
            rec = json.loads((pathlib.Path(link["dir"]) / demo_model.CONFIG_FILE).read_text())
            r = rec.get("record", {})
            last = run(link, r.get("steps", 0), rec.get("config", {}), r.get("wall_s"), r.get("command"), export=True)
            return list(r.get("lineage", [])) + [last] + chain[::-1]
        src = ocp.CheckpointManager(pathlib.Path(link["dir"]).resolve())
        try:
            step = src.latest_step()
            if step is None:
                chain.append({"dir": link["dir"], "step": link.get("step"), "missing": True})
                break
            m = src.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        finally:
            src.close()
        chain.append(run(link, step, m.get("config", {}), m.get("wall_s"), m.get("command")))
        link = m.get("init_from")
    return chain[::-1]


def is_export(path) -> bool:
    """Whether ``path`` holds an exported demo model (``--export`` output, e.g. the shipped one)."""
    p = pathlib.Path(path)
    return (p / demo_model.PARAMS_FILE).is_file() and (p / demo_model.CONFIG_FILE).is_file()


def init_from_checkpoint(path: pathlib.Path, params):
    """Params of the newest step of another run's orbax directory, for fine-tuning under new training
    settings (another ``diffusion.prediction``) or a grown model (e.g. relative position added to the
    temporal attention): every stored array must exist in ``params`` with its shape; parameters the old
    run did not have keep their fresh initialisation. Returns (step, params, names of the new ones)."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    if is_export(path):  # a shipped/exported model (its weights, EMA if it was trained with EMA)
        m = demo_model.load_demo_model(path, streaming=False)  # the base model only (CAM/APM ship apart)
        step = int(m.record.get("steps", 0))
        old = flatten_dict({"unet": jax.device_get(m.unet_params), "text": jax.device_get(m.text_params)})
    else:
        src = ocp.CheckpointManager(pathlib.Path(path).resolve())
        try:
            step = src.latest_step()
            if step is None:
                raise ValueError(f"--init-from {path}: no checkpoint there")
            got = src.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))
        finally:
            src.close()
        old = flatten_dict(got["state"]["params"])
    new = flatten_dict(params)
    extra = sorted("/".join(k) for k in old if k not in new)
    wrong = sorted("/".join(k) for k in old if k in new and tuple(old[k].shape) != tuple(new[k].shape))
    if extra or wrong:
        raise ValueError(f"--init-from {path}: its model config differs from this one "
                         f"(not in this model: {extra[:5]}; other shapes: {wrong[:5]})")
    fresh = sorted("/".join(k) for k in new if k not in old)
    merged = {k: jnp.asarray(old[k], new[k].dtype) if k in old else new[k] for k in new}
    return step, unflatten_dict(merged), fresh


def train(config, out: pathlib.Path, *, export: pathlib.Path | None = None, export_only: bool = False,
          progress: bool = True, command: str = "", init_from: pathlib.Path | None = None) -> dict:
    tr = config.train
    unet, text = demo_model.build_modules(config)
    tokenizer = get_tokenizer(int(config.text.get("pad_token_id", 0)), int(config.text.context_length))
    optimizer = make_optimizer(config)
    params = demo_model.init_params(config, tr.init_seed)
    opt_state = optimizer.init(params)
    mngr = _manager(out, config)
    cfg_json = json.loads(config.to_json())
    meta = {"config": cfg_json, "history": [], "wall_s": 0.0, "step": 0, "command": command}
    ema = params
    restored = restore_latest(mngr, {"params": params, "opt_state": opt_state, "ema": ema})
    start = 0
    if restored is None and init_from is not None:
        src_step, params, fresh = init_from_checkpoint(init_from, params)
        opt_state = optimizer.init(params)
        ema = params
        meta["init_from"] = {"dir": str(init_from), "step": int(src_step), "new_params": len(fresh)}
        print(json.dumps({"event": "init_from", "dir": str(init_from), "step": int(src_step),
                          "new_params": fresh}), flush=True)
    if restored is not None:
        step, state, old = restored
        model_keys = ("unet", "text", "space", "frames", "size", "patch", "diffusion")  # what params mean
        old_cfg = {k: old["config"].get(k) for k in model_keys}
        new_cfg = {k: cfg_json.get(k) for k in model_keys}
        if not same_model_config(old_cfg, new_cfg):
            raise ValueError(f"checkpoint in {out} was trained with another model config; use a new --out")
        params, opt_state, ema = state["params"], state["opt_state"], state["ema"]
        if "init_from" in old:
            meta["init_from"] = old["init_from"]
        runs = old.get("runs") or [{"command": old.get("command", ""), "from_step": 0}]
        if not export_only:
            runs = runs + [{"command": command, "from_step": step}]
        meta.update(history=old.get("history", []), wall_s=old.get("wall_s", 0.0), resumed=old.get("resumed", [])
                    + ([step] if not export_only else []), command=old.get("command", command), runs=runs)
        start = step
        print(json.dumps({"event": "resume", "step": step}), flush=True)
    n_unet = sum(x.size for x in jax.tree_util.tree_leaves(params["unet"]))
    n_text = sum(x.size for x in jax.tree_util.tree_leaves(params["text"]))
    print(json.dumps({"event": "start", "step": start, "steps": tr.steps, "unet_params": int(n_unet),
                      "text_params": int(n_text), "batch": tr.batch, "frames": config.frames,
                      "size": config.size, "devices": str(jax.devices())}), flush=True)

    stop = {"flag": False}

    def _on_signal(signum, frame):
        stop["flag"] = True

    old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    step = start
    try:
        if not export_only and start < tr.steps:
            train_step = make_train_step(config, unet, text, optimizer)
            cache: dict = {}
            bar = None
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=tr.steps, initial=start, desc="train_demo", mininterval=5, file=sys.stderr)
            losses, t_last, wall0 = [], time.time(), meta["wall_s"]
            t_start = time.time()
            while step < tr.steps and not stop["flag"]:
                video, tokens, _, mask = make_batch(config, step, tokenizer, cache)
                params, opt_state, ema, loss, gnorm = train_step(params, opt_state, ema, jnp.asarray(video),
                                                                 jnp.asarray(tokens), jnp.asarray(mask),
                                                                 jnp.int32(step))
                step += 1
                losses.append(float(loss))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                if step % tr.log_every == 0 or step == tr.steps:
                    now = time.time()
                    rec = {"step": step, "loss": float(np.mean(losses)), "grad_norm": float(gnorm),
                           "s_per_step": (now - t_last) / max(len(losses), 1),
                           "wall_s": round(wall0 + now - t_start, 1)}
                    meta["history"].append(rec)
                    print(json.dumps(rec), flush=True)
                    losses, t_last = [], now
                if step % tr.ckpt_every == 0 or step == tr.steps or stop["flag"]:
                    meta.update(step=step, wall_s=round(wall0 + time.time() - t_start, 1))
                    _save(mngr, step, params, opt_state, ema, meta)
            if bar is not None:
                bar.close()
            if stop["flag"]:
                print(json.dumps({"event": "interrupted", "step": step, "saved": True}), flush=True)
        if export is not None and not stop["flag"]:
            record = {"steps": step, "wall_s": meta["wall_s"], "command": meta.get("command", command),
                      "runs": meta.get("runs", [{"command": meta.get("command", command), "from_step": 0}]),
                      "history": meta["history"], "resumed": meta.get("resumed", []),
                      "machine": f"{os.cpu_count()} CPU cores, JAX {jax.__version__} {jax.default_backend()}"}
            if "init_from" in meta:
                record["init_from"] = meta["init_from"]
                record["lineage"] = lineage(meta)
                record["total_wall_s"] = round(meta["wall_s"] + sum(r.get("wall_s") or 0 for r in record["lineage"]), 1)
            use_ema = float(tr.get("ema", 0.0)) > 0
            record["weights"] = f"EMA (decay {tr.ema})" if use_ema else "last step"
            demo_model.save_demo_model(export, ema if use_ema else params, config, record,
                                       dtype=str(config.get("export_dtype", "float32")))
            print(json.dumps({"event": "exported", "dir": str(export), "step": step}), flush=True)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        mngr.close()
    return {"step": step, "params": params, "ema": ema, "meta": meta}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="orbax checkpoint directory (resumed if it exists)")
    ap.add_argument("--config", choices=tuple(CONFIGS), default="demo_tiny",
                    help="the model and training settings: demo_tiny (the default demo model) or demo_vc (its "
                         "trained-length sibling; configs/demo_vc.py)")
    ap.add_argument("--steps", type=int, default=None, help="total training steps (config train.steps)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. train.batch=8 (repeatable)")
    ap.add_argument("--export", default=None, help="write the shipped model here when training ends")
    ap.add_argument("--export-only", action="store_true", help="export the latest checkpoint, no training")
    ap.add_argument("--init-from", default=None,
                    help="start from the params of another run's checkpoint directory (fresh optimizer)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    config = apply_overrides(CONFIGS[args.config].get_config(), args.set)
    if args.steps is not None:
        config.train.steps = args.steps
    if args.export_only and not args.export:
        ap.error("--export-only needs --export DIR")
    command = "python launch/train_demo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    train(config, pathlib.Path(args.out), export=pathlib.Path(args.export) if args.export else None,
          export_only=args.export_only, progress=not args.no_progress, command=command,
          init_from=pathlib.Path(args.init_from) if args.init_from else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
