"""Time one UNet3D call in JAX beside the PyTorch baseline (diffusers UNet3DConditionModel), same run.

CPU, issue 14 (2-core developer machine; old code path from git beside the new one, per-op table):
    python benchmarks/unet_speed.py --config small --shape 2,4,16,32,32 --reps 3 --baseline-rev 81c7222 --ops
CPU (tiny config):   python benchmarks/unet_speed.py --config tiny --shape 2,4,8,16,16
GPU (anchor shapes): python benchmarks/unet_speed.py --config modelscope --dtype bfloat16 \
                         --backend auto --shape 2,4,16,32,32 --shape 2,4,64,32,32 --shape 2,4,16,40,64 --torch-compile

Both models have the same weights: torch's random (re-randomised, so no zero-initialised layer
hides anything) diffusers weights converted by the project's converter. The JAX side is one
jitted call (compile time reported apart), the torch side eager (and, with --torch-compile,
``torch.compile`` default mode) under no_grad, fp16 on GPU when --dtype is not float32 (the
anchors' setting). Every repetition runs every implementation once, interleaved, so load from
other jobs on a shared machine hits all of them alike; read the ratios, not the absolute times.

--baseline-rev REV (or --baseline-src DIR) also times the project's own UNet as it was at git
revision REV (imported from a ``git archive`` copy under another module name), on the same
parameters: the before/after comparison in one process.

TFLOP/s: XLA's ``cost_analysis()`` of the compiled call. Loops (the blockwise attention's
lax.map/scan, the chunked transformer blocks' nn.scan) are counted once there, not per trip, so the
FLOP count is taken from the same call compiled with both off (a loop-free graph of the same math).

--ops adds a per-op table at the UNet's level-0 shape (first block width, full latent):
attention cores (spatial self, text cross, temporal), whole temporal and spatial transformer
modules, GroupNorm, 3x3 conv and the temporal conv block, each beside its torch counterpart.

--threads 1,all (issue 30: fair baselines) runs the whole measurement once per thread count, each in a
fresh process pinned to that many cores (``sched_setaffinity``: XLA:CPU sizes its thread pools from them; for
1 also no multi-threaded Eigen) where torch gets as many threads (``torch.set_num_threads``), then prints
a ``kind: "threads"`` summary per shape: each framework's median at each count, the ratio at matched counts,
and each framework at its best count against the other at its best. Quote the matched ratio. Every row
records the load average and the commit.
    python benchmarks/unet_speed.py --config small --shape 2,4,16,32,32 --shape 2,4,64,32,32 --reps 5 --threads 1,all

The JAX side compiles as vstar-jax does (``vstar_jax.compile_options.jit``: on CPU, convolutions run by XLA on
every core rather than as one-thread YNNPACK fusions; each row's ``xla_options`` says what was passed).
``VSTAR_JAX_CPU_CONV=ynnpack`` measures jaxlib's default instead.

Prints one JSON line per measurement; --json also writes them all to a file.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.compile_options import jit, options_for  # what vstar-jax compiles with (on CPU: convolutions on every core)
from vstar_jax.io.atomic import append_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

CONFIGS = {
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8, cross_attention_dim=32,
                 down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), norm_num_groups=32),
    "small": dict(block_out_channels=(64, 128, 128), layers_per_block=1, attention_head_dim=32, cross_attention_dim=64,
                  down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                  up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"), norm_num_groups=32),
    "modelscope": {},  # UNet3DConditionModel() defaults = the real ModelScope config
}
OUR_PACKAGES = ("vstar_jax", "checkpoints_convert", "configs")  # the last two: older revisions' top-level names


# ------------------------------------------------------------------ loading the old code beside the new

def _our_modules():
    return [k for k in sys.modules if k.split(".")[0] in OUR_PACKAGES]


def load_baseline(src: str):
    """Import the project from ``src`` (a copy of an older revision) without disturbing the current one.

    Returns a namespace with that revision's UNet3D, converter and building blocks."""
    saved = {k: sys.modules.pop(k) for k in _our_modules()}
    sys.path.insert(0, src)
    try:
        unet = importlib.import_module("vstar_jax.models.unet3d")
        ns = argparse.Namespace(
            UNet3D=unet.UNet3D, unet=unet,
            attention=importlib.import_module("vstar_jax.models.attention").attention,
            GroupNorm32=importlib.import_module("vstar_jax.models.layers").GroupNorm32,
            config_from_diffusers=_converter().unet_config_from_diffusers, convert_unet=_converter().convert_unet)
    finally:
        sys.path.remove(src)
        for k in _our_modules():
            del sys.modules[k]
        sys.modules.update(saved)
    return ns


def _converter():
    """The UNet converter module: vstar_jax.checkpoints_convert.unet, or checkpoints_convert.unet in a revision
    from before the converters moved under the vstar_jax namespace."""
    try:
        return importlib.import_module("vstar_jax.checkpoints_convert.unet")
    except ModuleNotFoundError:
        return importlib.import_module("checkpoints_convert.unet")


def current():
    unet = importlib.import_module("vstar_jax.models.unet3d")
    conv = _converter()
    return argparse.Namespace(
        UNet3D=unet.UNet3D, unet=unet, attention=importlib.import_module("vstar_jax.models.attention").attention,
        GroupNorm32=importlib.import_module("vstar_jax.models.layers").GroupNorm32,
        config_from_diffusers=conv.unet_config_from_diffusers, convert_unet=conv.convert_unet)


def checkout_rev(rev: str) -> str:
    dest = tempfile.mkdtemp(prefix=f"vstar-base-{rev}-")
    arch = subprocess.run(["git", "-C", REPO, "archive", rev, *OUR_PACKAGES], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=arch, check=True)
    return dest


# ------------------------------------------------------------------ timing

def interleaved(fns: dict, reps: int, warm: int, clock=time.perf_counter) -> dict:
    """Median/min ms per callable; every repetition calls each once, in turn. ``clock``: wall time, or
    ``time.process_time`` for this process's CPU time (steadier on a loaded machine at one thread)."""
    for _ in range(warm):
        for fn in fns.values():
            fn()
    ts = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            ts[k].append((clock() - t0) * 1e3)
    return {k: dict(ms=statistics.median(v), ms_min=min(v), n=len(v)) for k, v in ts.items()}


@contextlib.contextmanager
def blockwise_off():
    """No loops in the graph: blockwise attention and the chunked transformer blocks off."""
    from vstar_jax.models import attention as A
    from vstar_jax.models import unet3d as U
    old, old_chunk = A.BLOCK_THRESHOLD, getattr(U, "CHUNK_ELEMS", None)
    A.BLOCK_THRESHOLD = 1 << 62
    if old_chunk is not None:
        U.CHUNK_ELEMS = 0
    try:
        yield
    finally:
        A.BLOCK_THRESHOLD = old
        if old_chunk is not None:
            U.CHUNK_ELEMS = old_chunk


def flops_of(jitted, *args) -> float:
    ca = jitted.lower(*args).compile().cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return float((ca or {}).get("flops", float("nan")))


TORCH_THREADS = None  # --torch-threads: torch.set_num_threads before the baseline is built
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false"


def pin_to_cores(n: int) -> None:
    """Restrict this process (and what it starts) to the first ``n`` CPUs it may run on. This is what holds
    JAX to n threads: XLA:CPU sizes its thread pools from the CPUs the process may use, and the Eigen flag
    alone (``ONE_THREAD_XLA``) leaves the YNNPACK fusions and the thunk executor on every core. Before this,
    "1 thread" JAX ran the attention dots and softmax on both cores (2 CPU seconds a wall second) while torch
    had one (issue 30, 2026-12-05 evening rerun). Call it before JAX's CPU client starts."""
    cpus = sorted(os.sched_getaffinity(0))
    if 0 < n < len(cpus):
        os.sched_setaffinity(0, cpus[:n])


def torch_setup(dcfg, dtype, seed=0):
    import torch
    from diffusers import UNet3DConditionModel

    if TORCH_THREADS is not None:
        torch.set_num_threads(TORCH_THREADS)

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = torch.float16 if (dtype != "float32" and dev == "cuda") else torch.float32
    torch.manual_seed(seed)
    m = UNet3DConditionModel(**dcfg).eval()
    with torch.no_grad():
        for p in m.parameters():  # diffusers zero-initialises some outputs; make every weight matter
            p.copy_(torch.randn_like(p) * (0.5 / max(1, p[0].numel()) ** 0.5) if p.ndim > 1 else torch.randn_like(p) * 0.05)
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    return torch, m.to(dev, tdtype), sd, dev, tdtype


def bench_call(a, dcfg, shape, ns_new, ns_old):
    torch = None
    fns, info = {}, {}
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal(shape).astype(np.float32)
    t_np = np.full((shape[0],), 500)
    if not a.no_torch:
        try:
            torch, tm, sd, dev, tdtype = torch_setup(dcfg, a.dtype)
        except ImportError as e:
            info["torch_error"] = str(e)
    cfg = ns_new.config_from_diffusers({**dcfg, "cross_attention_dim": dcfg.get("cross_attention_dim", 1024)})
    ctx_np = np.random.default_rng(1).standard_normal((shape[0], 77, cfg.context_dim)).astype(np.float32)
    cfg.dtype = cfg.param_dtype = a.dtype
    cfg.attention_backend = a.backend
    if a.remat:
        cfg.remat = True
    jd = jnp.dtype(a.dtype)
    x, t, ctx = jnp.asarray(x_np, jd), jnp.asarray(t_np), jnp.asarray(ctx_np, jd)
    model = ns_new.UNet3D(cfg)
    if torch is not None and "torch_error" not in info:
        params = ns_new.convert_unet(sd, cfg, "diffusers")
    else:
        params = jax.jit(model.init)(jax.random.PRNGKey(0), x, t, ctx)["params"]
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jd), params)
    outs = {}

    def add_jax(name, mdl):
        fn = jit(lambda p, x, t, c: mdl.apply({"params": p}, x, t, c))
        t0 = time.perf_counter()
        outs[name] = np.asarray(fn(params, x, t, ctx).block_until_ready())
        info[f"{name}_compile_s"] = time.perf_counter() - t0
        mem = fn.lower(params, x, t, ctx).compile().memory_analysis()
        if mem is not None:
            info[f"{name}_temp_gib"] = getattr(mem, "temp_size_in_bytes", float("nan")) / 2 ** 30
        fns[name] = lambda: fn(params, x, t, ctx).block_until_ready()
        return fn

    fn_new = add_jax("jax", model)
    with blockwise_off():
        info["tflop"] = flops_of(jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c)), params, x, t, ctx) / 1e12
    if ns_old is not None:
        cfg_old = ns_old.config_from_diffusers({**dcfg, "cross_attention_dim": dcfg.get("cross_attention_dim", 1024)})
        cfg_old.dtype = cfg_old.param_dtype = a.dtype
        cfg_old.attention_backend = a.backend
        add_jax("jax_before", ns_old.UNet3D(cfg_old))
    del fn_new
    if torch is not None and "torch_error" not in info:
        tx = torch.from_numpy(x_np).to(dev, tdtype)
        tt = torch.from_numpy(t_np).to(dev)
        tc = torch.from_numpy(ctx_np).to(dev, tdtype)
        sync = (lambda: torch.cuda.synchronize()) if dev == "cuda" else (lambda: None)

        def eager():
            with torch.no_grad():
                y = tm(tx, tt, tc).sample
            sync()
            return y

        outs["torch"] = eager().float().cpu().numpy()
        fns["torch"] = eager
        info.update(torch_dtype=str(tdtype), torch_device=dev)
        if a.torch_compile:
            cm = torch.compile(tm)

            def compiled():
                with torch.no_grad():
                    y = cm(tx, tt, tc).sample
                sync()
                return y

            t0 = time.perf_counter()
            compiled()
            info["torch_compile_compile_s"] = time.perf_counter() - t0
            fns["torch_compile"] = compiled
    for k, o in outs.items():  # same weights: every output should be the same function
        if k != "jax":
            info[f"maxrel_jax_vs_{k}"] = float(np.abs(outs["jax"] - o).max() / max(1e-12, np.abs(o).max()))
    res = interleaved(fns, a.reps, a.warm)
    for k, r in res.items():
        info[f"{k}_ms"], info[f"{k}_ms_min"] = r["ms"], r["ms_min"]
    info["reps"] = a.reps
    j = info["jax_ms"]
    info["jax_tflops_per_s"] = info["tflop"] / (j / 1e3)
    for k in res:
        if k != "jax":
            info[f"{k}_over_jax"] = info[f"{k}_ms"] / j  # > 1: the new JAX call is faster
    return info


# ------------------------------------------------------------------ per-op table

def bench_ops(a, dcfg, shape, ns_new, ns_old, emit=lambda row: None):
    """Per-op times at the UNet's level-0 shape, JAX (new / old) and torch in the same run."""
    import torch
    import torch.nn.functional as F
    from diffusers.models.resnet import TemporalConvLayer
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    b, _, f, hh, ww = shape
    ch = dcfg.get("block_out_channels", (320,))[0]
    hd = dcfg.get("attention_head_dim", 64)
    heads = ch // hd
    cdim = dcfg.get("cross_attention_dim", 1024)
    groups = dcfg.get("norm_num_groups", 32)
    n = b * f
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nss = {"jax": ns_new}
    if ns_old is not None:
        nss["jax_before"] = ns_old
    rows = []

    def run(op, jax_builders, torch_fn):
        fns = {}
        for name, build in jax_builders.items():
            fn, args = build()
            fn(*args).block_until_ready()
            fns[name] = (lambda fn=fn, args=args: fn(*args).block_until_ready())
        torch_fn()
        fns["torch"] = torch_fn
        res = interleaved(fns, a.op_reps, 1)
        row = dict(op=op, shape=list(shape), threads=TORCH_THREADS, cores=len(os.sched_getaffinity(0)),
                   **{f"{k}_ms": v["ms"] for k, v in res.items()})
        for k in res:
            if k != "jax":
                row[f"{k}_over_jax"] = res[k]["ms"] / res["jax"]["ms"]
        print(json.dumps(row), flush=True)
        rows.append(row)
        emit(row)

    def nograd(fn):
        def call():
            with torch.no_grad():
                return fn()
        return call

    # attention cores
    for op, lq, lk, bb in [("spatial self-attention (core)", hh * ww, hh * ww, n),
                           ("text cross-attention (core)", hh * ww, 77, n),
                           ("temporal attention (core)", f, f, b * hh * ww)]:
        q, k, v = r(bb, lq, heads, hd), r(bb, lk, heads, hd), r(bb, lk, heads, hd)
        jq, jk, jv = (jnp.asarray(t) for t in (q, k, v))
        tq, tk, tv = (torch.from_numpy(t).transpose(1, 2).contiguous() for t in (q, k, v))
        run(op, {name: (lambda ns=ns: (jit(lambda q, k, v: ns.attention(q, k, v)), (jq, jk, jv)))
                 for name, ns in nss.items()},
            nograd(lambda: F.scaled_dot_product_attention(tq, tk, tv)))

    # GroupNorm (channels-last in JAX, NCHW in torch), on the spatial and the 5-D (temporal) form
    xs = r(n, hh, ww, ch)
    tx = torch.from_numpy(xs).permute(0, 3, 1, 2).contiguous()

    def gn_builder(ns):
        m = ns.GroupNorm32(groups, 1e-5)
        p = m.init(jax.random.PRNGKey(0), jnp.asarray(xs[:1]))
        return jit(lambda p, x: m.apply(p, x)), (p, jnp.asarray(xs))

    gw, gb = torch.ones(ch), torch.zeros(ch)
    run("GroupNorm (b*f,h,w,c)", {name: (lambda ns=ns: gn_builder(ns)) for name, ns in nss.items()},
        nograd(lambda: F.group_norm(tx, groups, gw, gb, 1e-5)))
    x5 = xs.reshape(b, f, hh, ww, ch)
    tx5 = torch.from_numpy(x5).permute(0, 4, 1, 2, 3).contiguous()

    def gn5_builder(ns):
        m = ns.GroupNorm32(groups, 1e-5)
        p = m.init(jax.random.PRNGKey(0), jnp.asarray(x5[:1]))
        return jit(lambda p, x: m.apply(p, x)), (p, jnp.asarray(x5))

    run("GroupNorm 5-D (b,f,h,w,c)", {name: (lambda ns=ns: gn5_builder(ns)) for name, ns in nss.items()},
        nograd(lambda: F.group_norm(tx5, groups, gw, gb, 1e-5)))

    # 3x3 conv
    import flax.linen as nn
    wconv = torch.randn(ch, ch, 3, 3) * 0.05

    def conv_builder():
        m = nn.Conv(ch, (3, 3), padding=1)
        p = m.init(jax.random.PRNGKey(0), jnp.asarray(xs[:1]))
        return jit(lambda p, x: m.apply(p, x)), (p, jnp.asarray(xs))

    run("conv 3x3", {"jax": conv_builder}, nograd(lambda: F.conv2d(tx, wconv, padding=1)))

    # modules: temporal conv block, temporal transformer, spatial transformer
    def module_builder(ns, cls_name, make, x_in, *extra):
        m = make(getattr(ns.unet, cls_name))
        p = m.init(jax.random.PRNGKey(0), x_in, *extra)
        return jit(lambda p, x, *e: m.apply(p, x, *e)), (p, x_in, *extra)

    tconv = TemporalConvLayer(ch, ch, norm_num_groups=groups).eval()
    txf = torch.from_numpy(xs).permute(0, 3, 1, 2).contiguous()
    run("temporal conv block", {name: (lambda ns=ns: module_builder(
        ns, "TemporalConvBlock", lambda C: C(ch, groups), jnp.asarray(x5))) for name, ns in nss.items()},
        nograd(lambda: tconv(txf, num_frames=f)))
    ttr = TransformerTemporalModel(num_attention_heads=heads, attention_head_dim=hd, in_channels=ch,
                                   norm_num_groups=groups, cross_attention_dim=cdim).eval()
    run("temporal transformer (module)", {name: (lambda ns=ns: module_builder(
        ns, "TemporalTransformer", lambda C: C(heads, hd, groups=groups), jnp.asarray(x5))) for name, ns in nss.items()},
        nograd(lambda: ttr(txf, num_frames=f)))
    ctx = r(n, 77, cdim)
    s2d = Transformer2DModel(num_attention_heads=heads, attention_head_dim=hd, in_channels=ch, norm_num_groups=groups,
                             cross_attention_dim=cdim).eval()
    tctx = torch.from_numpy(ctx)
    run("spatial transformer (module)", {name: (lambda ns=ns: module_builder(
        ns, "SpatialTransformer", lambda C: C(heads, hd, groups=groups), jnp.asarray(xs), jnp.asarray(ctx)))
        for name, ns in nss.items()},
        nograd(lambda: s2d(txf, encoder_hidden_states=tctx)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--shape", action="append", help="b,c,f,h,w (repeatable)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--backend", choices=["xla", "cudnn", "auto"], default="xla")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warm", type=int, default=1)
    ap.add_argument("--op-reps", type=int, default=5, help="repetitions per op of the --ops table")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    ap.add_argument("--baseline-rev", help="also time the project's UNet at this git revision (e.g. 81c7222)")
    ap.add_argument("--baseline-src", help="... or from this directory (holding vstar_jax/, checkpoints_convert/)")
    ap.add_argument("--ops", action="store_true", help="per-op table at the level-0 shape")
    ap.add_argument("--ops-only", action="store_true", help="only the per-op table, no whole call")
    ap.add_argument("--remat", action="store_true", help="UNet config remat=True")
    ap.add_argument("--json", help="also append results here (JSON lines, one per measurement as it is made)")
    ap.add_argument("--threads", help="thread counts to match JAX and torch at, e.g. 1,all (one process each)")
    ap.add_argument("--torch-threads", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.threads:
        return thread_matched(a, argv if argv is not None else sys.argv[1:])
    global TORCH_THREADS
    TORCH_THREADS = a.torch_threads
    shapes = [tuple(int(v) for v in s.split(",")) for s in (a.shape or ["2,4,8,16,16"])]
    ns_old = None
    if a.baseline_rev or a.baseline_src:
        ns_old = load_baseline(a.baseline_src or checkout_rev(a.baseline_rev))
    ns_new = current()
    dev = jax.devices()[0]
    out = []

    def emit(row):  # each row as soon as it exists (a run stopped by a timeout keeps what it measured)
        out.append(row)
        if a.json:
            append_text(a.json, json.dumps(row) + "\n")

    for shape in shapes:
        base = dict(config=a.config, shape=list(shape), dtype=a.dtype, backend=a.backend,
                    device=f"{dev.platform}:{dev.device_kind}", cpus=os.cpu_count(),
                    cores=len(os.sched_getaffinity(0)),
                    baseline=a.baseline_rev or a.baseline_src, threads=a.torch_threads, commit=_commit(),
                    load_avg=[round(v, 2) for v in os.getloadavg()], xla_options=options_for(dev.platform))
        if not a.ops_only:
            r = dict(base, kind="call")
            r.update(bench_call(a, CONFIGS[a.config], shape, ns_new, ns_old))
            print(json.dumps(r), flush=True)
            emit(r)
        if a.ops or a.ops_only:
            bench_ops(a, CONFIGS[a.config], shape, ns_new, ns_old, emit=lambda row: emit(dict(base, kind="op", **row)))
    return 0


def _commit() -> str:
    return subprocess.run(["git", "-C", os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rev-parse",
                           "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def thread_matched(a, argv) -> int:
    """--threads: one child process per thread count (JAX and torch both at it), then the summary rows."""
    counts = []
    for v in a.threads.split(","):
        v = v.strip()
        if v == "all":
            counts.append(os.cpu_count())
        elif v.isdigit() and int(v) >= 1:
            counts.append(int(v))
        else:
            print(f"error: --threads takes counts >= 1 or 'all', got {v!r}", file=sys.stderr)
            return 2
    rest, skip = [], False
    for tok in argv:  # the child gets every option but --threads / --json
        if skip:
            skip = False
            continue
        if tok in ("--threads", "--json"):
            skip = True
            continue
        if tok.startswith(("--threads=", "--json=")):
            continue
        rest.append(tok)
    rows = []
    for n in dict.fromkeys(counts):
        env = dict(os.environ)
        if n == 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + ONE_THREAD_XLA).strip()
        p = subprocess.run([sys.executable, os.path.abspath(__file__), *rest, "--torch-threads", str(n)], env=env,
                           capture_output=True, text=True, preexec_fn=lambda n=n: pin_to_cores(n))
        if p.returncode != 0:
            print(f"error: the {n}-thread run failed: {p.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
        for ln in p.stdout.splitlines():
            if ln.startswith("{"):
                row = json.loads(ln)
                rows.append(row)
                print(ln, flush=True)
    summaries = []
    for shape in dict.fromkeys(tuple(r["shape"]) for r in rows if r.get("kind") == "call"):
        calls = {r["threads"]: r for r in rows if r.get("kind") == "call" and tuple(r["shape"]) == shape}
        if not all("torch_ms" in r for r in calls.values()):
            continue
        jax_ms = {n: r["jax_ms"] for n, r in calls.items()}
        torch_ms = {n: r["torch_ms"] for n, r in calls.items()}
        summaries.append(dict(
            kind="threads", config=a.config, shape=list(shape), jax_ms=jax_ms, torch_ms=torch_ms,
            matched_torch_over_jax={n: round(torch_ms[n] / jax_ms[n], 3) for n in jax_ms},
            best_torch_over_best_jax=round(min(torch_ms.values()) / min(jax_ms.values()), 3),
            best_jax_threads=min(jax_ms, key=jax_ms.get), best_torch_threads=min(torch_ms, key=torch_ms.get),
            load_avg=[round(v, 2) for v in os.getloadavg()], commit=_commit()))
    for row in summaries:
        print(json.dumps(row), flush=True)
    if a.json:
        append_text(a.json, "".join(json.dumps(row) + "\n" for row in rows + summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
