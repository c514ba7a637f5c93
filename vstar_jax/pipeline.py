"""Text-to-video generation: the public entry points, composed of the stages in :mod:`vstar_jax.generation`.

The public API is listed once, in :mod:`vstar_jax` (``from vstar_jax import generate_video``); the
settings of :func:`generate_video` are the fields of :class:`~vstar_jax.generation.options.GenerationOptions`.

    validate/plan  generation.request.make_request   every setting checked before any compute
    encode         encode_text                       prompt (or VSP states per frame) + ""
    sample         generation.sampling               one jitted program per (model, plan, shapes)
    decode/write   generation.outputs                frame batches streamed into the mp4 + hash
    sidecar        generation.outputs.build_sidecar  every setting; --from-sidecar reproduces it

:func:`generate_video` validates every input first (each bad input is a one-line
:class:`~vstar_jax.errors.VstarError`, a ``ValueError``, before anything is computed), encodes
the prompt (or the VSP synopsis states, interpolated per frame), runs the long-video strategy's
loop (``single`` by default) inside one ``jax.jit``, decodes and writes the video in frame
batches, and writes a JSON sidecar from which :func:`regenerate` reproduces the frames bit for bit.

PRNG: ``key = jax.random.key(seed)``; ``k_x, k_steps = split(key)``; x_T = ``normal(k_x, (1, c, f,
h, w))`` (a strategy may reschedule it); step i's DDIM noise = ``normal(split(k_steps, N)[i])``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import sys
import threading
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from vstar_jax.demo.model import pipeline_from_demo  # noqa: F401  (importing it registers the embedded demo model)
from vstar_jax.compile_options import rerun_hint
from vstar_jax.errors import VstarError
from vstar_jax.generation.model import (DEFAULTS, DEMO_SOURCE, FLAVOR_DEFAULTS, ModelInfo, Pipeline,  # noqa: F401
                                        diffusion_settings, load_pipeline, model_info)
from vstar_jax.generation.options import GenerationOptions, check_names, document
from vstar_jax.generation.outputs import (SIDECAR_ARGS, SIDECAR_FORMAT, VIDEO_SUFFIXES,  # noqa: F401
                                          FramesDiffer, GenerationResult, VideoSink, build_sidecar, check_outputs,
                                          decode_batches, default_output, frames_digest, load_sidecar,
                                          sidecar_kwargs, write_attention)
from vstar_jax.generation.request import GenerationRequest, check_states, make_request, number
from vstar_jax.generation.sampling import (SamplePlan, SamplingInterrupted, capture_maps, compiled_sampler,  # noqa: F401
                                           describe_device_plan, device_plan, log, memory_for, plan_for, plan_params,
                                           resolve_mesh, resolve_rules, row_sharding, run_sampler, BATCH_MODES, Items,
                                           sampler_args, check_finite,
                                           reset_finite_check)
from vstar_jax.io.atomic import Staging
from vstar_jax.io.video import sidecar_path, sidecar_text
from vstar_jax.parallel.sharding import make_mesh, put_global, replicate, shard_params
from vstar_jax.tar_vsp import synopsis as syn
from vstar_jax.tar_vsp.vsp import per_frame_embeddings

_log = log
ITEMS_PER_CALL = 16  # generate_batch: items per compiled call (progress and Ctrl-C between calls)
PROGRESS_EVERY = 100  # generate_batch: a line every this many prompts encoded
_compiled_sampler = compiled_sampler  # the sampler stage (tests replace it: a fake sampler, or proof nothing runs)
BATCH_SETTINGS = ("checkpoint", "pipeline", "mesh", "progress", "keep_video", "overwrite",
                  "batch_mode")  # generate_batch's own


# ------------------------------------------------------------------------------- stages
def encode_text(pipe: Pipeline, request: GenerationRequest):
    """(cond, uncond): the prompt's context (1, 77, C), or the synopsis states spread per frame
    (F, 77, C) by VSP; uncond is the empty prompt's (1, 77, C)."""
    uncond = pipe.encode([""])
    if request.synopsis:
        cond = per_frame_embeddings(pipe.encode(list(request.synopsis)), request.frames, request.vsp_mode)
    else:
        cond = pipe.encode([request.prompt])
    return np.asarray(cond, np.float32), np.asarray(uncond, np.float32)


def sample_latents(pipe: Pipeline, plan: SamplePlan, request: GenerationRequest, cond, uncond, *, progress: bool):
    """The sampling stage: (latents (1, c, N, h, w) float32, aux, seconds)."""
    params = plan_params(pipe, plan)
    args = sampler_args(params, cond, uncond, request.seed, request.fps, request.cfg)
    if plan.row_sharding is not None:  # params FSDP/replicated, the rest replicated on the (global) mesh
        mesh = plan.row_sharding.mesh
        args = (shard_params(params, mesh),) + tuple(replicate(a, mesh) for a in args[1:])
    run = _compiled_sampler(pipe.unet, plan, args, progress)
    calls = request.strategy.check(request.frames, request.ddim_steps).calls_for(plan.windows)
    latents, aux, seconds = run_sampler(run, args, total_calls=calls, progress=progress,
                                        unit="step" if request.strategy.name == "single" else "call")
    if not getattr(latents, "is_fully_addressable", True):  # a mesh over several hosts: every process gets all
        latents = multihost_utils.process_allgather(latents, tiled=True)
    check_finite(latents, request.ddim_steps)  # NaN/inf would decode to black frames: stop, naming the step
    return np.asarray(latents, np.float32), aux, seconds


def decode_and_write(pipe: Pipeline, latents, request: GenerationRequest, paths: dict, *, keep_video: bool,
                     progress: bool, expect_sha256: Optional[str] = None, stage=None):
    """The decode + write stage: streams frame batches into the video file (if any) and the hash.
    With ``stage`` (a :class:`vstar_jax.io.atomic.Staging`) the files stay temporary until the caller
    commits them with the sidecar. Returns (video or None, frame hash, (H, W), seconds)."""
    t0 = time.time()
    n = latents.shape[2]
    sink = VideoSink(paths["video"], n, request.save_fps, gif=paths["gif"], keep=keep_video, stage=stage)
    size = None
    bar = None
    if progress and n > request.frame_batch:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=n, desc="decoding", unit="frame", file=sys.stderr, leave=True)
    try:
        for batch in decode_batches(pipe, latents, request.frame_batch):
            size = batch.shape[1:3]
            sink.write(batch)
            if bar is not None:
                bar.update(batch.shape[0])
        digest = sink.finish(expect_sha256)
    except BaseException:
        sink.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    return sink.video(), digest, size, time.time() - t0


# ------------------------------------------------------------------------------ the job
@document
def generate_video(prompt: str, **settings) -> GenerationResult:
    """Generate one video (see the module docstring); the settings are keywords, listed below.

    Every setting is checked first: each bad one (an unknown keyword too) is a one-line
    :class:`~vstar_jax.errors.VstarError` before anything is loaded or computed. Returns a
    :class:`~vstar_jax.generation.outputs.GenerationResult` (frames, sidecar, paths, latents, attention).
    """
    return _generate(prompt, GenerationOptions.from_kwargs(settings))


def _generate(prompt: str, o: GenerationOptions, *, expect_sha256: Optional[str] = None) -> GenerationResult:
    """:func:`generate_video` of checked options; ``expect_sha256``: frames that hash differently are not
    kept (:func:`regenerate`)."""
    t_start = time.time()
    # ---- validate / plan: cheap checks only, each a one-line VstarError ------------------------
    info = model_info(o.checkpoint, o.pipeline)
    request = make_request(prompt, info, **o.request_kwargs())
    splan = request.strategy.check(request.frames, request.ddim_steps)
    rules = resolve_rules(o.mesh) if o.mesh is not None else None
    mesh = resolve_mesh(o.mesh)
    rows = row_sharding(mesh, splan.unet_frames, rules=rules)
    dplan = device_plan(mesh, rules, splan, request.strategy, frames=request.frames, capture=request.capture)
    if dplan["windows_per_call"] > 1:  # the UNet's rows are D windows x 2 CFG rows
        rows = row_sharding(mesh, splan.unet_frames, rows=2 * dplan["windows_per_call"], rules=rules)
    paths = check_outputs(o.out, o.gif, o.attention_png, o.overwrite,  # creates the output folder: after the checks
                          save_fps=request.save_fps)
    progress = o.progress
    if o.llm is not None:
        states, source = _llm_synopsis(request.prompt, request.frames, dict(o.llm), progress)
        request = dataclasses.replace(request, synopsis=tuple(states), synopsis_source=source)

    # ---- model -----------------------------------------------------------------------------
    pipe = o.pipeline
    if pipe is None:
        _log(progress, f"loading {'the embedded demo model' if o.checkpoint is None else o.checkpoint}")
        pipe = load_pipeline(o.checkpoint)
    pipe = pipe.with_unet_settings(attention_backend=request.attention_backend)
    plan = plan_for(request, info.latent_channels, rows, rules, memory_for(pipe, request),
                    windows=dplan["windows_per_call"])

    # ---- encode ----------------------------------------------------------------------------
    _log(progress, "encoding the prompt" + (f" and {len(request.synopsis)} synopsis states" if request.synopsis else ""))
    cond, uncond = encode_text(pipe, request)

    # ---- sample ----------------------------------------------------------------------------
    st = request.strategy
    h, w = request.latent_hw
    _log(progress, f"sampling {request.frames} frames at {h}x{w} latents, {request.steps} DDIM steps "
                   f"(cfg {request.cfg}, eta {request.eta}, seed {request.seed}{', TAR' if request.tar else ''}"
                   f"{', VSP' if request.synopsis else ''}{f', {st.spec()}: {splan.note}' if st.name != 'single' else ''})")
    if mesh is not None or dplan["serial"]:
        _log(progress, describe_device_plan(dplan))
    latents, aux, t_sample = sample_latents(pipe, plan, request, cond, uncond, progress=progress)

    # ---- decode + write (streamed; every file temporary until all are complete) ---------------
    _log(progress and not pipe.pixel_space, f"decoding {request.frames} frames (batches of {request.frame_batch})")
    with Staging() as stage:
        video, digest, size, t_decode = decode_and_write(pipe, latents, request, paths, keep_video=o.keep_video,
                                                         progress=progress, expect_sha256=expect_sha256, stage=stage)
        attention = capture_maps(aux) if request.capture else None
        sidecar = build_sidecar(
            request, checkpoint=pipe.source, video_size=size, latent_shape=plan.latent_shape,
            vae_factor=info.vae_factor, frames_sha256=digest,
            mesh=dict(mesh.shape) if rows is not None else None, device_plan=dplan if rows is not None else None,
            paths=paths,
            scale_factor=pipe.diffusion["scale_factor"],
            timing={"sample": round(t_sample, 3), "decode": round(t_decode, 3), "total": round(time.time() - t_start, 3)})
        result = GenerationResult(video, sidecar, None, latents, attention)
        _finish_outputs(result, paths, progress, stage)
    return result


def _finish_outputs(result: GenerationResult, paths: dict, progress: bool, stage) -> None:
    """Attention plot, then the sidecar last (its presence means the video is complete); then every
    staged file is renamed into place together (a failure before that replaces nothing)."""
    result.attention_png = write_attention(result.attention, paths, stage)
    if paths["video"] is not None:
        result.path = str(paths["video"])
        result.gif_path = str(paths["gif"]) if paths["gif"] is not None else None
        sc = sidecar_path(paths["video"])
        stage.write_text(sc, sidecar_text(result.sidecar))
        result.sidecar_path = str(sc)
    stage.commit()
    if result.attention_png:
        _log(progress, f"wrote {result.attention_png} ({len(result.attention)} layers)")
    if result.path is not None:
        _log(progress, f"wrote {result.path}" + (f", {result.gif_path}" if result.gif_path else "")
             + f" and {result.sidecar_path}")


def _llm_synopsis(prompt: str, frames: int, llm: dict, progress: bool):
    asked = llm.get("num_states")  # 0 is a mistake, not "the default"
    num = number("num_states", asked if asked is not None else min(5, frames), integer=True, minimum=2,
                 maximum=frames)
    if num > frames:
        raise VstarError(f"asked the LLM for {num} states but there are only {frames} frames")
    if llm.get("local_path"):
        _log(progress, f"asking the local LM {llm['local_path']} for {num} visual states")
        states = syn.local_lm_synopsis(prompt, num, model_path=llm["local_path"])
        source = {"kind": "local", "path": os.path.abspath(str(llm["local_path"])), "num_states": num}
    else:
        url = llm.get("url") or os.environ.get(syn.ENV_URL)
        model = llm.get("model") or os.environ.get(syn.ENV_MODEL)
        _log(progress, f"asking the LLM at {url} for {num} visual states")
        states = syn.llm_synopsis(prompt, num, url=llm.get("url"), model=llm.get("model"),
                                  api_key=llm.get("api_key"), timeout=float(llm.get("timeout", 60.0)))
        source = {"kind": "llm", "url": url, "model": model, "num_states": num}  # never the key
    return check_states(states, frames), source


# ------------------------------------------------------------------------------ batches
def generate_batch(items, *, checkpoint=None, pipeline: Optional[Pipeline] = None, out_dir=None, mesh=None,
                   progress: bool = True, keep_video: bool = True, overwrite: bool = True, batch_mode: str = "exact",
                   **common) -> list:
    """Many videos, many per compiled call: ``items`` are dicts of ``generate_video`` settings (at
    least ``prompt``; e.g. ``{"prompt": ..., "seed": 3, "cfg": 7.5}``), ``common`` the settings they
    share. Items whose compiled loop is the same (shape, steps, method, TAR, VSP or not) run in one
    call with an item axis (``jax.lax.map``: one item after another, each the single-item program
    with its own seed's noise, so it equals its single-item run bit for bit). ``batch_mode="vmap"`` batches
    the items into every UNet call instead: more videos per minute, each equal to its single-item run within
    float32 rounding (docs/devices-and-hosts.md#batch-mode-exact-or-vmap); its sidecars say so and ``--from-sidecar`` does not check
    their frames bit for bit. On a mesh the item axis is split over ``data``. With ``out_dir`` each video is
    written to ``out_dir/<prompt-slug>-<seed>.mp4`` with its sidecar (``--from-sidecar`` reproduces it
    alone); an item's own ``out`` names its file instead. Returns one :class:`GenerationResult` per
    item, in order."""
    with _sigint_flag() as stop:
        return _generate_batch(items, checkpoint=checkpoint, pipeline=pipeline, out_dir=out_dir, mesh=mesh,
                               progress=progress, keep_video=keep_video, overwrite=overwrite, batch_mode=batch_mode,
                               stop=stop, **common)


@contextlib.contextmanager
def _sigint_flag():
    """Ctrl-C during a batch sets a flag checked before each prompt encoded, each call and each item
    written (a KeyboardInterrupt raised at a random point, e.g. inside the fork of a video writer,
    can be swallowed; sampling itself stops at the next UNet call, see ``interruptible``)."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):  # noqa: ARG001 - signal API
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_stop(stop) -> None:
    if stop["stop"]:
        raise SamplingInterrupted("interrupted")


def _generate_batch(items, *, checkpoint, pipeline, out_dir, mesh, progress, keep_video, overwrite, batch_mode, stop,
                    **common):
    t_start = time.time()
    if not items:
        raise VstarError("generate_batch needs at least one item")
    if batch_mode not in BATCH_MODES:
        raise VstarError(f"batch_mode must be one of {', '.join(BATCH_MODES)}, got {batch_mode!r}")
    settings = []  # each item's settings, its names checked before the model is asked anything
    for i, item in enumerate(items):
        kw = {**common, **dict(item)}
        if kw.get("prompt") is None:
            raise VstarError(f"item {i} has no prompt")
        check_names(set(kw) - {"prompt"}, f"generate_batch item {i}")
        for bad in ("llm", "attention_png", "record_attention", "gif"):
            if kw.pop(bad, None):
                raise VstarError(f"item {i}: {bad} is not available in a batch (use generate_video)")
        for whole in BATCH_SETTINGS:
            if whole in kw:
                raise VstarError(f"item {i}: {whole} is a setting of the whole batch: give it to generate_batch")
        settings.append(kw)
    info = model_info(checkpoint, pipeline)
    reqs, all_paths, outs = [], [], []
    for kw in settings:
        prompt = kw.pop("prompt")
        outs.append(kw.pop("out", None))
        reqs.append(make_request(prompt, info, **GenerationOptions(**kw).request_kwargs()))
    item_sharding = None
    if mesh is not None:
        m = mesh if hasattr(mesh, "shape") else make_mesh(dict(mesh))
        item_sharding = _item_sharding(m, len(items))
    seen: dict = {}
    for i, (r, out) in enumerate(zip(reqs, outs)):
        if out is None and out_dir is not None:
            out = default_output(r.prompt, r.seed, str(out_dir))
        if out is not None:  # two items, one file name: the second would replace the first
            key = os.path.normcase(os.path.abspath(os.fspath(out)))
            if key in seen:
                j = seen[key]
                raise VstarError(f"items {j + 1} and {i + 1} ({reqs[j].prompt!r} and {r.prompt!r}, seed {r.seed}) "
                                 f"would both be written to {out}; make the prompts differ in letters or digits "
                                 f"(file names keep only those), or give each item its own out")
            seen[key] = i
        outs[i] = out
    for r, out in zip(reqs, outs):  # only when no two collide: checking may create the folder
        all_paths.append(check_outputs(out, False, None, overwrite, save_fps=r.save_fps))
    if pipeline is None:
        _log(progress, f"loading {'the embedded demo model' if checkpoint is None else checkpoint}")
        pipeline = load_pipeline(checkpoint)
    pipe = pipeline
    encoded = []
    for n, r in enumerate(reqs):  # a long prompts file: say how far the text encoder is (Ctrl-C stops here too)
        if progress and len(reqs) > 1 and (n + 1 == len(reqs) or (n + 1) % PROGRESS_EVERY == 0):
            _log(progress, f"encoded {n + 1} of {len(reqs)} prompt(s)")
        _check_stop(stop)
        encoded.append(encode_text(pipe, r))
    groups: dict = {}
    for i, r in enumerate(reqs):
        plan = plan_for(r, info.latent_channels, memory=memory_for(pipe, r))
        groups.setdefault((plan, encoded[i][0].shape, r.attention_backend), []).append(i)
    results: list = [None] * len(items)
    # at most ITEMS_PER_CALL items a call (a multiple of the data axis): progress after each call, and
    # Ctrl-C stops at the next UNet call with every finished item's video kept
    per_call = int(number("VSTAR_BATCH_ITEMS", os.environ.get("VSTAR_BATCH_ITEMS", ITEMS_PER_CALL), integer=True,
                          minimum=1, maximum=1 << 20))
    if item_sharding is not None:
        d = item_sharding.mesh.shape["data"]
        per_call = max(d, per_call // d * d)
    chunks = [(plan, idx[k:k + per_call]) for (plan, _, _), idx in groups.items() for k in range(0, len(idx), per_call)]
    done = 0
    for plan, idx in chunks:
        _check_stop(stop)
        n_real = len(idx)
        if len(chunks) > 1 and len(idx) < per_call:  # the same shape as the other calls: one compile
            idx = idx + [idx[0]] * (per_call - len(idx))

        conds = jnp.stack([jnp.asarray(encoded[i][0]) for i in idx])
        unconds = jnp.stack([jnp.asarray(encoded[i][1]) for i in idx])
        keys = jnp.stack([jax.random.key(reqs[i].seed) for i in idx])
        fps = jnp.asarray([reqs[i].fps for i in idx], jnp.float32)
        cfg = jnp.asarray([reqs[i].cfg for i in idx], jnp.float32)
        sh = item_sharding if item_sharding is not None and len(idx) % item_sharding.mesh.shape["data"] == 0 else None
        _log(progress, f"sampling {n_real} item(s) in one call: {plan.latent_shape[2]} frames, {plan.steps} steps"
                       + (f" (items {done + 1}-{done + n_real} of {len(items)})" if len(chunks) > 1 else ""))
        done += n_real
        t0 = time.time()
        params = plan_params(pipe, plan)
        if sh is not None:  # the items over data (a mesh that may span processes), params replicated
            params = jax.tree_util.tree_map(lambda a: replicate(a, sh.mesh), params)
            conds, unconds, keys, fps, cfg = (put_global(a, sh) for a in (conds, unconds, keys, fps, cfg))
        calls = reqs[idx[0]].strategy.check(reqs[idx[0]].frames, reqs[idx[0]].ddim_steps).calls * len(idx)
        unet = pipe.with_unet_settings(attention_backend=reqs[idx[0]].attention_backend).unet
        args = (params, conds, unconds, keys, fps, cfg)
        run = _compiled_sampler(unet, plan, args, progress, items=Items(sh, batch_mode))
        lat, _, _ = run_sampler(run, args, total_calls=calls, progress=progress, unit="call")
        if not getattr(lat, "is_fully_addressable", True):
            lat = multihost_utils.process_allgather(lat, tiled=True)
        lat = np.asarray(lat, np.float32)
        check_finite(lat[:n_real], plan.steps, what=f"sampling {n_real} item(s)")  # on the host: every process
        t_sample = (time.time() - t0) / len(idx)
        for j, i in enumerate(idx[:n_real]):
            r, paths = reqs[i], all_paths[i]
            with Staging() as stage:
                video, digest, size, t_decode = decode_and_write(pipe, lat[j], r, paths, keep_video=keep_video,
                                                                 progress=False, stage=stage)
                sidecar = build_sidecar(
                    r, checkpoint=pipe.source, video_size=size, latent_shape=plan.latent_shape,
                    vae_factor=info.vae_factor, frames_sha256=digest,
                    mesh=dict(sh.mesh.shape) if sh is not None else None,
                    paths=paths, scale_factor=pipe.diffusion["scale_factor"],
                    timing={"sample": round(t_sample, 3), "decode": round(t_decode, 3),
                            "total": round(time.time() - t_start, 3), "batch": len(idx)})
                if batch_mode != "exact":  # not the single-item program: --from-sidecar cannot check it bit for bit
                    sidecar["batch_mode"] = batch_mode
                res = GenerationResult(video, sidecar, None, lat[j])
                _finish_outputs(res, paths, progress, stage)
            results[i] = res
            _check_stop(stop)  # the next item is not started
    return results


def _item_sharding(mesh, n_items: int):
    """The item axis over ``data`` (None when the mesh has no data axis > 1)."""
    if mesh.shape.get("data", 1) == 1:
        return None
    if n_items % mesh.shape["data"]:
        raise VstarError(f"{n_items} items do not split over the mesh's data axis of size {mesh.shape['data']}")
    return NamedSharding(mesh, PartitionSpec("data"))


# --------------------------------------------------------------------------- regenerate
def regenerates_exactly(sidecar: dict) -> bool:
    """Whether ``--from-sidecar`` can check this sidecar's frames bit for bit: it has a frame hash and was
    not made in a batch's ``vmap`` mode (those videos equal their single run within float32 rounding)."""
    return bool(sidecar.get("frames_sha256")) and sidecar.get("batch_mode", "exact") == "exact"


def regenerate(sidecar_path, *, out=None, checkpoint=None, pipeline=None, gif: bool = False, attention_png=None,
               progress: bool = True, verify: bool = True, keep_video: bool = True, overwrite: bool = True,
               max_memory=None, mesh=None) -> GenerationResult:
    """Reproduce a video from its sidecar (its synopsis is reused, no LLM is asked).

    ``checkpoint`` overrides the recorded path. The sidecar's fields are checked before any
    compute. With ``verify`` (and a sidecar :func:`regenerates_exactly` allows), a frame hash different
    from the recorded one raises
    :class:`~vstar_jax.generation.outputs.FramesDiffer` (a VstarError) and no file is kept (another
    backend or version may differ, or the sidecar was edited). ``mesh``: run on this mesh (as
    ``generate_video``'s); the recorded one (the sidecar's ``mesh``) reproduces a run on a mesh bit for bit.
    """
    sc = load_sidecar(sidecar_path)
    verify = verify and regenerates_exactly(sc)
    kw = sidecar_kwargs(sc)
    if checkpoint is not None:
        kw["checkpoint"] = checkpoint
    # a run that recorded attention is recomputed the same way (the same compiled graph)
    options = GenerationOptions(
        pipeline=pipeline, out=out, gif=gif, attention_png=attention_png, record_attention=bool(sc.get("attention")),
        progress=progress, synopsis_source=sc.get("synopsis_source"), keep_video=keep_video, overwrite=overwrite,
        max_memory=max_memory, mesh=mesh, **kw)
    hint = rerun_hint(sc.get("xla_options"))  # CPU convolutions compiled otherwise round otherwise
    try:
        res = _generate(sc["prompt"], options, expect_sha256=sc.get("frames_sha256") if verify else None)
    except FramesDiffer as e:
        raise FramesDiffer(f"{e}{hint}") from None
    if verify and sc.get("frames_sha256") and res.sidecar["frames_sha256"] != sc["frames_sha256"]:
        raise FramesDiffer(f"regenerated frames differ from {sidecar_path} (recorded on "
                         f"{sc.get('backend')}/jax {sc.get('versions', {}).get('jax')}, now "
                         f"{res.sidecar['backend']}/jax {res.sidecar['versions']['jax']}){hint}")
    return res
