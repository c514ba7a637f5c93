"""Windows of one long-video step as a sharded batch axis (issue 24): D independent windows (Gen-L's windows,
blend's chunks, the windows of one FIFO iteration) in ONE batched UNet call, D = the mesh axis the
``windows`` rule names. Here: the grouping on one device equals the serial loop, the plan and its line,
and on 8 simulated devices (one subprocess) the pipeline on data 8 / data 2 x frames 4 equals one device,
with one UNet body per group in the compiled program."""
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_on_host_devices
from vstar_jax.diffusion.sampler import Denoiser
from vstar_jax.diffusion.schedules import make_schedule
from vstar_jax.longvideo import parse_strategy
from vstar_jax.longvideo import windows as W


def test_window_groups_visit_the_windows_in_serial_order_and_mask_the_padding():
    index, real = W.window_groups(7, 3)
    assert index.tolist() == [[0, 1, 2], [3, 4, 5], [6, 6, 6]]
    assert real.tolist() == [[True] * 3, [True] * 3, [True, False, False]]
    index, real = W.window_groups(4, 1)  # D = 1: the serial loop
    assert index.tolist() == [[0], [1], [2], [3]] and real.all()
    with pytest.raises(ValueError, match="group must be >= 1"):
        W.window_groups(4, 0)


def _toy(windows: int):
    """A UNet stand-in that mixes frames (a window's frames depend on each other), reads the timestep of
    each frame, the per-frame context and the step index (TAR's gate): a row-wise function, as the UNet."""
    def fn(x, t, ctx, i):
        t = jnp.asarray(t, jnp.float32)
        t = t[:, None, :, None, None] if t.ndim == 2 else t[:, None, None, None, None]
        c = ctx.mean(axis=(-1, -2))
        c = c[:, None, :, None, None] if c.ndim == 2 else c[:, None, None, None, None]
        gate = jnp.where(jnp.asarray(i) <= 1, 1.0, 0.5)
        gate = gate.reshape((-1,) + (1,) * 4) if gate.ndim else gate
        return jnp.tanh(0.7 * x + 0.3 * x.mean(axis=2, keepdims=True) + t / 1000.0 + c) * gate
    return Denoiser(fn, windows=windows)


@pytest.mark.parametrize("spec,frames,steps", [
    ("genl:4:2", 12, 2), pytest.param("genl:4:1", 7, 2, marks=pytest.mark.slow),
    pytest.param("blend:4:2", 10, 2, marks=pytest.mark.slow), pytest.param("fifo:4:2", 6, 8, marks=pytest.mark.slow),
    pytest.param("fifo:4:2:false", 6, 8, marks=pytest.mark.slow)])
def test_groups_of_windows_equal_the_serial_loop(spec, frames, steps):
    """D = 3 windows per call (the last group padded with masked windows) give the serial loop's
    latents; a per-frame context (VSP) and per-window steps (FIFO's TAR gate) included."""
    st = parse_strategy(spec)
    sched = make_schedule("videocrafter2", steps, 1.0)  # eta 1: the step noise is drawn too
    shape = (1, 2, frames, 3, 3)
    key = jax.random.key(0)
    x_T = st.init_noise(key, shape)
    cond = jax.random.normal(jax.random.key(1), (frames, 5, 4))
    uncond = jnp.zeros((1, 5, 4))
    outs = {d: np.asarray(jax.jit(lambda x, c, u, d=d: st.sample(_toy(d), x, c, u, sched, key=key, cfg_scale=5.0,
                                                                   frames=frames).latents)(x_T, cond, uncond))
            for d in (1, 3)}
    plan = st.check(frames, sched.num_steps)
    assert plan.group_windows > 1 and plan.calls_for(1) == plan.calls and plan.calls_for(2) < plan.calls
    for d in (3,):
        err = float(np.abs(outs[d] - outs[1]).max() / np.abs(outs[1]).max())
        assert err < 1e-6, (spec, d, err)


def test_device_plan_line_and_serial_methods():
    from vstar_jax.generation.sampling import describe_device_plan, device_plan
    from vstar_jax.parallel.sharding import make_mesh

    mesh = make_mesh({"data": 1})  # one device: D = 1, nothing padded
    st = parse_strategy("genl:4:2")
    p = device_plan(mesh, None, st.check(16, 2), st, frames=16)
    assert (p["windows_per_call"], p["window_groups"], p["padded"], p["serial"]) == (1, 7, 0, "")
    assert "7 windows a step in 7 UNet call(s) of 1 window(s)" in describe_device_plan(p)
    # the rules are data: the windows axis over a mesh axis of 1 device, or over none, is D = 1 too
    assert device_plan(mesh, (("windows", None),), st.check(16, 2), st, frames=16)["windows_per_call"] == 1
    st = parse_strategy("vidrd:8:4")
    line = describe_device_plan(device_plan(None, None, st.check(16, 2), st, frames=16))
    assert line.startswith("device plan: vidrd runs its chunks serially") and "autoregressive" in line


def _shape_mesh(**shape):
    """A mesh of the given shape over the one test device repeated: device_plan reads only its shape."""
    from jax.sharding import Mesh

    return Mesh(np.array([jax.devices()[0]] * int(np.prod(list(shape.values()))), dtype=object).reshape(
        tuple(shape.values())), tuple(shape))


@pytest.mark.parametrize("spec,frames,mesh,kw,path,why", [
    ("genl:8:4", 64, dict(data=2), {}, "blocks", ""),
    ("genl:8:4", 64, dict(data=2, frames=4), {}, "blocks", ""),
    ("genl:8:4", 64, None, {}, "slot sums", "D = 1"),
    ("genl:8:4", 64, dict(data=2), dict(capture=True), "slot sums", "attention maps"),
    ("genl:4:1", 16, dict(data=8), {}, "slot sums",
     "blocks of 2 window(s) per device are shorter than the overlap reach 3"),
    ("blend:8:4", 64, dict(data=2), {}, "blocks", ""),
    ("blend:8:4", 64, dict(data=2), dict(solver="dpmpp_2m_sde"), "slot sums", "blend steps dpmpp_2m_sde only"),
    ("blend:8:4", 64, dict(data=8), dict(rescale=True), "slot sums", "guide rescale"),
    ("fifo:8:1", 64, dict(data=2, frames=4), {}, "blocks", ""),
    ("vidrd:8:4", 16, dict(data=2), {}, "serial", "autoregressive"),
    ("freenoise:8:4", 64, dict(frames=2), {}, "one pass", "")])
def test_device_plan_names_the_loop_and_why(spec, frames, mesh, kw, path, why):
    """The device plan records and prints which loop steps the windows (blocks: neighbour exchange; slot
    sums: one all-reduce of the latent a step; serial; one pass) and why it is not the blocks loop, from the
    method's own ``window_path`` (the choice its loop branches on). Mutation: blend's DPM++ reason dropped
    (the blocks loop claimed for dpmpp_2m_sde) fails the blend rows."""
    from vstar_jax.generation.sampling import describe_device_plan, device_plan

    st = parse_strategy(spec)
    m = _shape_mesh(**mesh) if mesh else None
    p = device_plan(m, None, st.check(frames, st.steps_for(None) or 4), st, frames=frames, **kw)
    assert p["path"] == path and why in p["path_why"] and bool(p["path_why"]) == bool(why), p
    line = describe_device_plan(p)
    if p["windows"] and not p["serial"]:
        assert f"; {path} path: " in line and why in line, line


MESH_SCRIPT = textwrap.dedent("""
    import sys, tempfile, os, re, numpy as np
    sys.path.insert(0, "tests")
    from tiny_checkpoint import write_tiny_checkpoint
    from vstar_jax import pipeline as pl
    from vstar_jax.runtime import runtime
    from benchmarks.sharding import collective_bytes, executed_collective_bytes, loop_body_collectives
    assert len(__import__("jax").devices()) == 8
    ckpt = write_tiny_checkpoint(os.path.join(tempfile.mkdtemp(), "ck"))
    base = dict(checkpoint=ckpt, steps=2, seed=1, progress=False, tar="L0:1", synopsis=("a red circle", "a blue square"))
    cases = {"genl": dict(frames=16, long_video="genl:4:2"), "blend": dict(frames=16, long_video="blend:4:2"),
             "fifo": dict(frames=8, long_video="fifo:4:2", steps=8, tar="L0:1@3")}  # TAR on at some windows only
    meshes = [{"data": 8}, {"data": 2, "frames": 4}]
    which = sys.argv[1]
    full = which != "ci"
    out = tempfile.mkdtemp()

    def program():
        return list(runtime().compiled.values())[-1].as_text()

    for name, extra in cases.items():
        if (not full and name != "genl") or (which not in ("ci", "full") and name not in which.split(",")):
            continue
        kw = dict(base, **extra)
        one = pl.generate_video("a red circle", **kw).latents
        one_hlo = program()
        for mesh in (meshes if full else meshes[:1]):
            tag = "-".join(f"{k}{v}" for k, v in mesh.items())
            r = pl.generate_video("a red circle", mesh=mesh, out=os.path.join(out, f"{name}-{tag}.mp4"), **kw)
            hlo = program()
            dp = r.sidecar["device_plan"]
            print("CASE", name, tag, float(np.abs(r.latents - one).max() / np.abs(one).max()),
                  dp["windows_per_call"], dp["window_groups"], dp["padded"], flush=True)
            if name == "genl" and mesh == {"data": 8}:
                # one UNet body per group of windows: as many convolutions as the serial program's one body
                ex = executed_collective_bytes(hlo)
                print("CONVS", hlo.count(" convolution("), one_hlo.count(" convolution("))
                print("COLL", " ".join(f"{k}={n}" for k, (n, b) in collective_bytes(hlo).items() if n))
                print("BYTES_PER_STEP", sum(b for _, b in ex.values()) // kw["steps"], r.latents.nbytes)
                body = loop_body_collectives(hlo, kw["steps"])
                print("STEP", len(body), " ".join(f"{k}={n}:{b}" for k, (n, b) in body[0].items()))
                again = pl.regenerate(os.path.join(out, f"{name}-{tag}.json"), out=os.path.join(out, "again.mp4"),
                                      mesh=mesh, progress=False)
                print("SIDECAR", int(np.array_equal(again.latents, r.latents)),
                      again.sidecar["device_plan"] == dp, again.sidecar["frames_sha256"] == r.sidecar["frames_sha256"])
""")


def _mesh_run(which: str):
    r = run_on_host_devices(MESH_SCRIPT.replace("sys.argv[1]", repr(which)), 8, timeout=1800)
    out = {}
    for line in r.stdout.splitlines():
        if line.strip():
            parts = line.split()
            out[tuple(parts[:3]) if parts[0] == "CASE" else parts[0]] = parts
    return out


def test_genl_windows_over_8_devices_equal_one_device_in_one_call_per_group():
    """genl:4:2 on 16 frames (7 windows), TAR + a 2-state synopsis, mesh data 8: all 7 windows in one call of
    8 (one masked), within 1e-5 of one device; the compiled program holds one UNet body (as many
    convolutions as the serial program), no all-gather and no all-to-all (each device has a whole window),
    and moves < 2 latents' bytes a step (building the windows by an all-to-all of the per-frame contexts
    was 46x that, one shared sum 3.3x); a step sends only its neighbours' windows (two collective-permutes,
    the windows held in contiguous blocks, windows.block_grid) and a 4-byte probe: no all-reduce of the
    latent (its average before; mutation: the step's sum as the old all-reduce of per-slot partial sums
    fails it); --from-sidecar on the same mesh is bit-identical, with the same device plan recorded."""
    out = _mesh_run("ci")
    case = out[("CASE", "genl", "data8")]
    assert float(case[3]) < 1e-5 and case[4:] == ["8", "1", "1"], case
    convs = out["CONVS"]
    assert convs[1] == convs[2], convs
    assert "all-gather" not in " ".join(out["COLL"]) and "all-to-all" not in " ".join(out["COLL"]), out["COLL"]
    per_step, latent = int(out["BYTES_PER_STEP"][1]), int(out["BYTES_PER_STEP"][2])
    assert 0 < per_step < 2 * latent, out["BYTES_PER_STEP"]
    assert out["SIDECAR"][1:] == ["1", "True", "True"], out["SIDECAR"]
    # a step: the two neighbour exchanges of whole windows (4 frames of 4 x 8 x 8 each) and the call's 4-byte
    # probe, no all-reduce or all-gather of the latent (before: one all-reduce of the latent a step)
    step = dict(kv.split("=") for kv in out["STEP"][2:])
    assert out["STEP"][1] == "1" and step["collective-permute"] == f"2:{2 * 4 * 4 * 8 * 8 * 4}", step
    assert step["all-reduce"] == "1:4" and step["all-gather"] == "0:0" and step["all-to-all"] == "0:0", step


@pytest.mark.slow
def test_genl_blend_fifo_over_meshes_equal_one_device():
    """genl, blend, fifo with TAR and a 2-state synopsis on data 8 (one call of 8 windows a step) and data 2 x
    frames 4 (2 windows a call, each window's CFG rows and frames over 4 devices): within 1e-5 of one device;
    FIFO within 1e-4, the bound of the 8-device matrix in tests/test_sharding.py (its queue is autoregressive:
    a float-order difference grows along the video)."""
    out = _mesh_run("full")
    cases = [v for k, v in out.items() if isinstance(k, tuple)]
    assert len(cases) == 6, cases
    bad = [c for c in cases if float(c[3]) >= (1e-4 if c[1] == "fifo" else 1e-5)]
    assert not bad, bad
    assert {(c[1], c[2]): c[4] for c in cases}[("genl", "data2-frames4")] == "2"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:os.fork")
def test_two_processes_run_genl_windows_over_data(tmp_path):
    """genl:4:2 on 32 frames over 2 real processes (loopback coordinator, gloo; one CPU device each), mesh
    data 2: 2 windows per UNet call, one on each process; latents within 1e-5 of one process, the video and
    sidecar written once (by process 0), the device plan recorded."""
    import json
    import sys

    from test_multihost import LAUNCH, _free_port, launch_two
    from tiny_checkpoint import shared_tiny_checkpoint
    from vstar_jax import pipeline as pl

    ckpt = shared_tiny_checkpoint()
    out = tmp_path / "mh" / "long.mp4"
    common = [sys.executable, LAUNCH, "a red circle", "--checkpoint", ckpt, "--frames", "32", "--steps", "2",
              "--seeds", "3", "--long-video", "genl:4:2", "--mesh", "data=2", "--out", str(out), "--save-latents",
              "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2", "--log-dir", str(tmp_path / "logs")]
    launch_two(common)
    assert sorted(p.name for p in out.parent.iterdir()) == ["long.json", "long.latents.npy", "long.mp4"]
    assert "15 windows a step in 8 UNet call(s) of 2 window(s)" in (tmp_path / "logs" / "process-0.log").read_text()
    got = np.load(out.parent / "long.latents.npy")
    want = pl.generate_video("a red circle", checkpoint=ckpt, frames=32, steps=2, seed=3, long_video="genl:4:2",
                             progress=False).latents
    err = float(np.abs(got - want).max() / np.abs(want).max())
    assert err < 1e-5, err
    sc = json.loads((out.parent / "long.json").read_text())
    assert sc["mesh"] == {"data": 2} and sc["device_plan"]["windows_per_call"] == 2


def test_tar_gate_takes_one_step_per_row():
    """A batched call of windows at different steps (FIFO) gates TAR per UNet row: the logits' leading axis
    is rows x pixels, row-major; each row's block equals the scalar gate of its own step."""
    from vstar_jax.tar_vsp.tar import TARConfig, make_transform

    tar = TARConfig(((0, 2.0, 0.5),), until_time=3)
    rows, pixels, frames = 3, 4, 5
    logits = jax.random.normal(jax.random.key(0), (rows * pixels, 2, frames, frames))
    steps = jnp.asarray([5, 1, 3])
    got = make_transform(tar, 0, steps)(logits).reshape(rows, pixels, 2, frames, frames)
    blocks = logits.reshape(rows, pixels, 2, frames, frames)
    for r in range(rows):
        want = make_transform(tar, 0, steps[r])(blocks[r])
        np.testing.assert_array_equal(got[r], want)
    assert not np.array_equal(got[0], make_transform(tar, 0, 1)(blocks[0]))  # the gates differ


FIFO_HLO_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from benchmarks.sharding import loop_body_collectives
    from vstar_jax.diffusion.schedules import make_schedule
    from vstar_jax.longvideo import parse_strategy
    from vstar_jax.models.denoiser import DenoiserSpec, make_denoiser
    from vstar_jax.parallel.sharding import LATENT_AXES, make_mesh, named, replicate

    class Toy:  # a row-wise stand-in for the UNet: mixes a row's frames, reads per-frame t, context and the step
        def apply(self, variables, x, t, ctx, step_index=None, **kw):
            t = jnp.asarray(t, jnp.float32)
            t = t[:, None, :, None, None] if t.ndim == 2 else t[:, None, None, None, None]
            c = ctx.mean(axis=(-1, -2))
            c = c[:, None, :, None, None] if c.ndim == 2 else c[:, None, None, None, None]
            i = jnp.asarray(step_index, jnp.float32).reshape((-1, 1, 1, 1, 1))
            return jnp.tanh(0.7 * x + 0.3 * x.mean(axis=2, keepdims=True) + t / 1000.0 + c + i / 50.0)

    st = parse_strategy("fifo:6:2")  # 4 windows an iteration (lookahead), each writes 3 frames
    frames, shape = 7, (1, 3, 7, 2, 2)
    sched = make_schedule("videocrafter2", st.queue_steps, 1.0, timestep_spacing="linspace")
    key = jax.random.key(0)
    x_T = st.init_noise(key, shape)
    cond = jax.random.normal(jax.random.key(1), (frames, 5, 4))  # one context per frame (VSP)
    uncond = jnp.zeros((1, 5, 4))
    ac = np.linspace(0.99, 0.01, 1000, dtype=np.float32)

    def run(mesh, execute=True):
        spec = DenoiserSpec(latent_sharding=None if mesh is None else named(mesh, LATENT_AXES),
                            windows=1 if mesh is None else mesh.shape["data"])
        den = make_denoiser(Toy(), {}, spec, alphas_cumprod=ac, on_call=lambda *a: None)
        fn = jax.jit(lambda x, c, u: st.sample(den, x, c, u, sched, key=key, cfg_scale=5.0, frames=frames).latents)
        args = (x_T, cond, uncond) if mesh is None else tuple(replicate(a, mesh) for a in (x_T, cond, uncond))
        compiled = fn.lower(*args).compile()
        return (np.asarray(compiled(*args)) if execute else None), compiled.as_text()

    equal = sys.argv[1] == "equal"
    one = run(None)[0] if equal else None
    iters = frames + st.queue_steps - st.window
    frame_bytes = 4 * 3 * 2 * 2
    # data=2,frames=4 (slow run only): 2 windows a call, each window's CFG rows and frames over its 4 devices
    for d, mesh in [("2", {"data": 2}), ("8", {"data": 8})] + ([("2x4", {"data": 2, "frames": 4})] if equal else []):
        got, hlo = run(make_mesh(mesh), equal)
        body = loop_body_collectives(hlo, iters)
        print("FIFO", d, float(np.abs(got - one).max() / np.abs(one).max()) if equal else 0.0, len(body),
              " ".join(f"{k}={n}:{b // frame_bytes if k == 'collective-permute' else b}" for k, (n, b) in body[0].items()),
              flush=True)
""")


def _fifo_iteration(equal: str):
    r = run_on_host_devices(FIFO_HLO_SCRIPT.replace("sys.argv[1]", repr(equal)), 8, timeout=600)
    rows = {p[1]: p for p in (ln.split() for ln in r.stdout.splitlines() if ln.startswith("FIFO"))}
    assert sorted(rows) == (["2", "2x4", "8"] if equal == "equal" else ["2", "8"]), r.stdout
    return rows


def test_fifo_iteration_sends_only_the_boundary_frames():
    """One FIFO queue iteration compiled for 2 and 8 simulated devices (mesh data D, fifo:6:2: 4 windows, the
    queue held as D contiguous blocks of windows; on 8 devices 4 are masked), through the pipeline's
    denoiser wrapper on a toy UNet with a per-frame context and per-row TAR steps: the iteration holds
    exactly two collective-permutes carrying 1 + (F/2 - 1) = 3 frames (the frame that moves back to the
    window behind, and the front window's written frames that become a window's lookahead half; on 2
    devices both go to the other device, so they travel as ONE permute: the two end windows' 3 written frames
    each, 6 frames, as bytes are not what an iteration over processes waits for), one
    all-reduce of a 4-byte probe per UNet call (step and finite, fused) and nothing else: no all-gather or
    all-reduce of the queue, no communicated bookkeeping (before: 8 collectives an iteration, the queue
    all-reduced). Mutations: the window behind's first frame indexed by rank from the flattened windows
    (a gather across devices) fails it; the two rolls kept apart on 2 devices (two permutes) fails it."""
    rows = _fifo_iteration("hlo")
    for d, calls, permutes in (("2", 2, "1:6"), ("8", 1, "2:3")):  # calls: ceil(4 windows / D) an iteration
        p = rows[d]
        assert p[3] == "1", p
        body = dict(kv.split("=") for kv in p[4:])
        assert body == {"all-to-all": "0:0", "collective-permute": permutes,
                        "all-reduce": f"{calls}:{4 * calls}",
                        "all-gather": "0:0", "reduce-scatter": "0:0"}, (d, body)


@pytest.mark.slow
def test_fifo_over_window_blocks_equals_one_device():
    """The same toy FIFO run (per-frame context, per-row steps, eta 1) on mesh data 2 (2 windows a device),
    data 8 (4 masked windows) and data 2 x frames 4 equals one device within 1e-6 (the same arithmetic per
    window; measured 2e-7, 0 and 2e-7). On data 2 x frames 4 (each window's CFG rows and frames split over
    its 4 devices) the iteration holds no all-gather and exactly 4 all-to-alls: the queue shift's
    concatenations, which move each window's frames one position across its own frame split (replica
    groups of 2 inside one window's 4 devices; benchmarks/RESULTS.md, FIFO on data=2,frames=4), never a
    re-layout of the queue across windows. (The toy has no temporal transformer, so no UNet all-to-all.)"""
    rows = _fifo_iteration("equal")
    assert all(float(p[2]) < 1e-6 for p in rows.values()), rows
    body = dict(kv.split("=") for kv in rows["2x4"][4:])
    assert body["all-gather"] == "0:0" and body["reduce-scatter"] == "0:0", body
    assert body["all-to-all"].split(":")[0] == "4", body


def test_benchmark_times_a_step_as_the_marginal_of_two_lengths(capsys):
    """benchmarks/clip_parallel.py reports the time of a step after compilation as the difference of two runs
    over the added steps (FIFO: queue iterations), so what a run does once is not spread over its few steps;
    a bad --reps is one error line before anything runs. Mutation: the whole run over its steps (t1 / units1)
    fails it."""
    from benchmarks.clip_parallel import main, marginal

    per, fixed = marginal(1.0, 1.8, 4, 8)  # 0.2 s a step, 0.2 s once
    assert abs(per - 0.2) < 1e-12 and abs(fixed - 0.2) < 1e-12
    per, fixed = marginal(2.0, 3.5, 71, 135)  # FIFO: 64 more iterations
    assert abs(per - 1.5 / 64) < 1e-12 and abs(fixed - (2.0 - 71 * 1.5 / 64)) < 1e-12
    assert main(["--reps", "0", "--processes", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --reps must be >= 1, got 0"
