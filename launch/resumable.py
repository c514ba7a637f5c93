"""The resumable, SIGINT-safe training loop of the VAE trainers (train_demo_vae, train_temporal_decoder).

It runs ``step_fn`` from the newest orbax checkpoint in ``out`` (or step 0) to ``steps``, with a tqdm
progress bar and a JSON log line every ``log_every`` steps, saves every ``ckpt_every`` steps, at the end
and on SIGINT/SIGTERM (then returns, ``stopped`` True), through train_demo's checkpoint helpers
(``_manager``, ``_save``, ``restore_latest``: the same layout and metadata as the demo model's runs).
Every batch must be a pure function of the step (``batch_fn(step)``), so a resumed run is the
uninterrupted one. A checkpoint written under another ``meta["model"]`` is refused (one line).
"""
from __future__ import annotations

import json
import pathlib
import signal
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np
from tqdm import tqdm

from launch.train_demo import _manager, _save, restore_latest
from vstar_jax.errors import VstarError


def train_loop(*, out: pathlib.Path, params, opt_state, step_fn: Callable, batch_fn: Callable, steps: int,
               meta: dict, ckpt_every: int, log_every: int, progress: bool = True, desc: str = "train",
               on_step: Optional[Callable[[int], None]] = None) -> dict:
    """``step_fn(params, opt_state, batch, step) -> (params, opt_state, loss)``; returns {"step", "params",
    "opt_state", "meta", "stopped"}. ``meta`` holds "model" (what the params mean), "command" and
    whatever the caller records; history, runs and wall time are added here."""
    mngr = _manager(pathlib.Path(out), None)
    meta = {"history": [], "wall_s": 0.0, "runs": [], **meta}
    stop = {"flag": False}

    def _on_signal(signum, frame):  # noqa: ARG001
        stop["flag"] = True

    old_handlers = {}
    try:
        restored = restore_latest(mngr, {"params": params, "opt_state": opt_state, "ema": params})
        start = 0
        if restored is not None:
            start, state, old = restored
            if old.get("model") != meta.get("model"):
                raise VstarError(f"the checkpoint in {out} was trained with another model or data config; "
                                 f"use a new --out")
            params, opt_state = state["params"], state["opt_state"]
            meta.update(history=old.get("history", []), wall_s=old.get("wall_s", 0.0), runs=old.get("runs", []))
            print(json.dumps({"event": "resume", "step": int(start)}), flush=True)
        meta["runs"] = meta["runs"] + [{"command": meta.get("command", ""), "from_step": int(start)}]
        old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        step, losses, wall0, t0 = int(start), [], float(meta["wall_s"]), time.time()
        bar = tqdm(total=steps, initial=step, desc=desc, mininterval=5, file=sys.stderr, disable=not progress)
        t_last = t0
        while step < steps and not stop["flag"]:
            params, opt_state, loss = step_fn(params, opt_state, batch_fn(step), step)
            step += 1
            losses.append(loss)
            bar.update(1)
            if on_step is not None:
                on_step(step)
            if step % log_every == 0 or step == steps:
                now = time.time()
                rec = {"step": step, "loss": float(np.mean(np.asarray(jax.device_get(losses), np.float64))),
                       "s_per_step": round((now - t_last) / max(len(losses), 1), 3),
                       "wall_s": round(wall0 + now - t0, 1)}
                meta["history"].append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                if progress:
                    print(json.dumps(rec), flush=True)
                losses, t_last = [], now
            if step % ckpt_every == 0 or step == steps or stop["flag"]:
                meta.update(step=step, wall_s=round(wall0 + time.time() - t0, 1))
                _save(mngr, step, params, opt_state, params, meta)
        bar.close()
        if stop["flag"]:
            print(json.dumps({"event": "interrupted", "step": step, "saved": True}), flush=True)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        mngr.close()
    return {"step": step, "params": params, "opt_state": opt_state, "meta": meta, "stopped": stop["flag"]}
