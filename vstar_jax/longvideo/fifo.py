"""``fifo:F[:n[:lookahead]]`` -- FIFO-Diffusion (Kim et al. 2024; jjihwan/FIFO-Diffusion_public,
``scripts/evaluation/funcs.py``: ``prepare_latents``, ``fifo_ddim_sampling``, ``shift_latents``;
``lvdm/models/samplers/ddim.py``: ``ddim_step``; ``lvdm/models/utils_diffusion.py``:
``make_ddim_timesteps``).

A queue of L = n F latents at increasing noise levels: queue position r (0 = least noisy) sits at
DDIM timestep ``timesteps[r]`` of an L-step schedule (so the run has exactly L DDIM steps). Every
iteration the UNet denoises the queue in windows of F frames with **one timestep per frame**
(diagonal denoising), each frame taking its own DDIM step from its level to the next lower one;
then the front frame is clean: it is dequeued (one output frame) and fresh noise is enqueued at
the back. *Latent partitioning* (the paper's option): n > 1 splits the queue into n windows, so
each window spans n-times-finer noise levels (steps = n F). *Lookahead denoising* (default on, as
the reference's flag): F/2 already-clean frames are kept in front of the queue as context, the
windows step by F/2 and each writes back only its second half.

What the reference computes, and so this module by default:

- **Timesteps** (``timesteps="linspace"``): FIFO's copy of lvdm makes the L DDIM timesteps as
  ``linspace(0, T - 1, L).round()`` (``make_ddim_timesteps``), not VideoCrafter2's
  ``range(0, T, T // L) + 1``; the base clip and every queue level use them. On a diffusers-flavour
  checkpoint (ModelScope) the same timesteps come from diffusers' own ``timestep_spacing="linspace"``
  (FIFO has no diffusers reference). ``timesteps="model"`` keeps the checkpoint's schedule.
- **The queue step** (``scale_in_queue=False``): ``ddim_step`` computes
  ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) e + s z`` with ``x0 = (x - sqrt(1 - a) e) /
  sqrt(a)``: without VideoCrafter2's ``use_scale`` factors, which the base clip (``p_sample_ddim``)
  does apply. ``scale_in_queue=True`` applies them in the queue too (the consistent variant: every
  frame then follows the same DDIM update the model was sampled with).

Sidecars written before these two settings existed ran with ``timesteps="model"`` and
``scale_in_queue=True``; ``--from-sidecar`` fills those in (``SIDECAR_LEGACY``).

Set-up as the reference: an F-frame base clip is sampled with plain DDIM (L steps, the first F
frames' context), then queue position r holds ``sqrt(a_r) base[max(0, r - (L - F))] +
sqrt(1 - a_r) noise`` (plain alpha, as ``prepare_latents``; the lookahead prefix at a_0). The
reference writes out every dequeued frame and keeps the last N, so its video starts after
L - F re-denoised copies of the base clip's first frame; here those lead-in frames are dropped the
same way and the N output frames are the base clip's frames re-denoised in the queue followed by
new ones.

TAR's step gate uses the loop index of each window's middle frame. FIFO cannot reproduce plain
DDIM for any N (its frames are never denoised together at one noise level after the base clip).
The iterations are one ``lax.scan``, the windows of one iteration an inner ``lax.scan`` over groups of
D windows; memory holds the windows' inputs (2 n F frames with lookahead: each queue frame in the two
windows that read it) and the output latents, whatever N is.

**The windows of one iteration are independent** (FIFO's "parallel inference over partitions"), checked
against the reference's order (``fifo_ddim_sampling`` in ``scripts/evaluation/funcs.py``): its inner loop
visits ``rank`` in *reversed* order, window ``rank`` reads queue positions ``[rank F/2, rank F/2 + F)``
and writes back ``[rank F/2 + F/2, rank F/2 + F)`` (lookahead; without it ``[rank F, rank F + F)`` both).
The windows that ran before it in the iteration (higher ranks) wrote only positions at or after
``(rank + 2) F/2``, past its last read; without lookahead the windows are disjoint. So every window reads
the queue as the iteration found it, and the written ranges are disjoint: D windows (``Denoiser.windows``,
the mesh's ``windows`` axis) run as one batched UNet call, each with its own timesteps and TAR gate,
with or without lookahead.

**The queue as window inputs, in contiguous blocks** (:class:`WindowGrid`, Video-Infinity's layout): the
carry of the iteration loop is not the queue but each window's F input frames, (D, K, b, c, F, h, w),
device j of the ``windows`` axis holding windows [j K, (j + 1) K) (K = ceil(windows / D); slots past the
last window are masked and keep their inputs). Call k of an iteration takes column k, one window per
device, and nothing is carried between calls (the windows are independent). After the calls,
:func:`shift_windows` advances the queue by one position in this form: a window's next input is its own
written frames, the first written frame of the window behind it and (lookahead) the front window's last
F/2 - 1 written frames, so on a mesh only the D - 1 block boundaries cross devices: two
collective-permutes an iteration (1 frame back, F/2 - 1 forward; on D = 2 both neighbours are the other
device and the two travel as one permute), never a gather or all-reduce of the queue; the dequeued frame
stays on the first device until the loop ends. The timesteps, contexts and noise keys of each slot are
constants or replicated arithmetic. D = 1 is the serial loop (one window a call).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.diffusion.sampler import as_denoiser, ddim_loop, ddim_step, guided_eps_windows
from vstar_jax.errors import VstarError
from vstar_jax.longvideo import windows as W
from vstar_jax.longvideo.base import Plan, SampleInputs, Strategy, positive, register

QUEUE_FOLD = 0x6669666F  # "fifo": initial queue noise
ITER_FOLD = 0x66697465  # "fite": per-iteration keys (enqueued noise, DDIM step noise)


def queue_layout(window: int, partitions: int, lookahead: bool):
    """Per queue position: DDIM reference index (0 = least noisy) and window starts.

    Returns (prefix, index (P,), starts, write_from) with P = prefix + n F: ``index`` of the
    lookahead prefix is 0; windows start at ``starts`` and write back frames ``[write_from, F)``.
    """
    f, n = int(window), int(partitions)
    prefix = f // 2 if lookahead else 0
    index = np.concatenate([np.zeros(prefix, np.int32), np.arange(n * f, dtype=np.int32)])
    if lookahead:
        starts = np.arange(2 * n, dtype=np.int32) * (f // 2)
        write_from = f // 2
    else:
        starts = np.arange(n, dtype=np.int32) * f
        write_from = 0
    return prefix, index, starts[::-1].copy(), write_from  # reversed ranks, as the reference


def initial_queue(base, noise, sqrt_alpha_ref, sqrt_1ma_ref, window: int, prefix: int):
    """``prepare_latents``: position r of the body holds base frame max(0, r - (L - F)) at level r;
    the prefix holds base frame 0 at level 0. base (b, c, F, h, w); noise (b, c, P, h, w)."""
    L = sqrt_alpha_ref.shape[0]
    frame = np.concatenate([np.zeros(prefix, np.int32), np.maximum(0, np.arange(L) - (L - window))])
    level = np.concatenate([np.zeros(prefix, np.int32), np.arange(L, dtype=np.int32)])
    sa = sqrt_alpha_ref[level][None, None, :, None, None]
    s1 = sqrt_1ma_ref[level][None, None, :, None, None]
    return sa * jnp.take(base, frame, axis=2) + s1 * noise


class WindowGrid(NamedTuple):
    """The windows of one queue iteration on D devices (window slots), K = ceil(n / D) each, as contiguous
    blocks (Video-Infinity's layout): slot (j, k) is window rank r = j K + k (rank 0 the least noisy, at the
    queue's front), so neighbouring windows share a device except at the D - 1 block boundaries. Ranks past
    the last window (``real`` False) repeat the last one and keep their inputs (they write nothing)."""

    starts: np.ndarray  # (D, K) int32 queue position of each slot's window
    wi: np.ndarray  # (D, K) int32 its position in the reference's reversed-rank order (the noise key)
    index: np.ndarray  # (D, K, F) int32 DDIM reference index of each of its frames
    frames: np.ndarray  # (D, K, F) int32 queue positions it reads
    rank: np.ndarray  # (D, K) int32 rank (past the last: >= n)
    n: int  # windows


def _window_grid(starts, index, window: int, group: int) -> WindowGrid:
    rank_starts = np.sort(np.asarray(starts))  # ascending rank; the reference visits them reversed
    rank, real = W.device_blocks(len(rank_starts), group)
    last = np.minimum(rank, len(rank_starts) - 1)
    s = rank_starts[last].astype(np.int32)
    frames = (s[..., None] + np.arange(window, dtype=np.int32)).astype(np.int32)
    return WindowGrid(s, (len(rank_starts) - 1 - last).astype(np.int32), np.asarray(index)[frames], frames,
                      rank.astype(np.int32), len(rank_starts))


def _neighbour_frames(written):
    """What each window block receives from its neighbours, from the frames its windows wrote (D, K, b, c, F',
    h, w): the block behind's first window's first frame (device j + 1's, a roll by -1 over the block axis)
    and the block in front's last window's last F' - 1 frames (device j - 1's, a roll by +1). On two blocks
    both neighbours are the other device (the rolls are the same permutation), so the two travel as ONE
    collective-permute of the two end windows' written frames (their union when K = 1), split on arrival: an
    iteration over processes is bound by the latency of its few small collectives, not by their bytes
    (benchmarks/RESULTS.md, issue 24). They are joined on the window-slot axis, never the frame axis, which a
    window's frame split shards. On D > 2 blocks the directions differ: two collective-permutes."""
    if written.shape[0] != 2:
        return (jnp.roll(written[:, :1, :, :, :1], -1, axis=0),
                jnp.roll(written[:, -1:, :, :, 1:], 1, axis=0))
    ends = written[:, :1] if written.shape[1] == 1 else jnp.concatenate([written[:, :1], written[:, -1:]], axis=1)
    both = jnp.roll(ends, 1, axis=0)  # = a roll by -1 on 2 blocks
    return both[:, :1, :, :, :1], both[:, -1:, :, :, 1:]


def shift_windows(x_in, written, fresh, grid: WindowGrid, lookahead: bool):
    """The next iteration's window inputs (D, K, b, c, F, h, w) from this one's and the frames each window
    wrote back (D, K, b, c, F', h, w): the queue advanced by one position, ``fresh`` (b, c, 1, h, w) enqueued
    behind the last window. A window's next input is its own written frames, the first written frame of
    the window behind it and, with lookahead, the last F/2 - 1 written frames of the window in front (rank
    0: the lookahead prefix, advanced). Only these neighbour frames move between window slots, so on a
    mesh whose window axis splits D only the block boundaries cross devices: one frame back, F/2 - 1 frames
    forward (two collective-permutes; one on D = 2, :func:`_neighbour_frames`), never the queue."""
    first = written[:, :, :, :, :1]
    if lookahead:
        tail = written[:, :, :, :, 1:]
        from_back, from_front = _neighbour_frames(written)
    else:
        from_back = jnp.roll(first[:, :1], -1, axis=0)
    behind = jnp.concatenate([first[:, 1:], from_back], axis=1)  # rank r + 1's
    behind = jnp.where((grid.rank == grid.n - 1)[:, :, None, None, None, None, None], fresh, behind)
    if lookahead:
        front = jnp.concatenate([from_front, tail[:, :-1]], axis=1)  # rank r - 1's
        prefix = x_in[:, :, :, :, 1:written.shape[4]]  # rank 0: the lookahead prefix's
        parts = [jnp.where((grid.rank == 0)[:, :, None, None, None, None, None], prefix, front), written, behind]
    else:
        parts = [written[:, :, :, :, 1:], behind]
    nxt = jnp.concatenate(parts, axis=4)
    return jnp.where((grid.rank < grid.n)[:, :, None, None, None, None, None], nxt, x_in)


@register
@dataclasses.dataclass(frozen=True)
class FIFO(Strategy):
    """FIFO-Diffusion: diagonal denoising of a queue of ``partitions`` x ``window`` latents."""

    name = "fifo"
    POSITIONAL = ("window", "partitions", "lookahead")
    per_frame_timesteps = True
    TIMESTEPS: ClassVar[tuple] = ("linspace", "model")
    SIDECAR_LEGACY: ClassVar[dict] = {"timesteps": "model", "scale_in_queue": True}
    window: int = 16
    partitions: int = 1
    lookahead: bool = True
    timesteps: str = "linspace"  # the reference's make_ddim_timesteps; "model": the checkpoint's schedule
    scale_in_queue: bool = False  # True: the queue step applies use_scale as the base clip does

    def __post_init__(self):
        positive(self.name, window=self.window, partitions=self.partitions)
        if self.timesteps not in self.TIMESTEPS:
            raise VstarError(f"fifo timesteps must be one of {', '.join(self.TIMESTEPS)}, got {self.timesteps!r}")
        if self.window < 2 or (self.lookahead and self.window % 2):
            raise VstarError(f"fifo window must be >= 2{' and even with lookahead' if self.lookahead else ''}, "
                             f"got {self.window}")

    def schedule_kwargs(self, flavor: str, kwargs: tuple) -> tuple:
        if self.timesteps == "model":
            return kwargs
        return tuple(sorted({**dict(kwargs), "timestep_spacing": "linspace"}.items()))

    @property
    def queue_steps(self) -> int:
        return self.window * self.partitions

    def steps_for(self, requested: Optional[int]) -> int:
        if requested is not None and int(requested) != self.queue_steps:
            raise VstarError(f"fifo:{self.window}:{self.partitions} runs exactly window x partitions = "
                             f"{self.queue_steps} DDIM steps (one per queue position), got steps={requested}; "
                             f"omit --steps or change the partitions")
        return self.queue_steps

    def check(self, frames: int, steps: int) -> Plan:
        """``steps``: the DDIM schedule's real step count (uniform spacing can add one)."""
        if int(steps) != self.queue_steps:
            raise VstarError(f"fifo:{self.window}:{self.partitions} needs a {self.queue_steps}-step DDIM schedule "
                             f"(one step per queue position) but the schedule has {steps} steps; pick window x "
                             f"partitions that divides the training timesteps (e.g. 1000)")
        if frames < self.window:
            raise VstarError(f"fifo:{self.window} makes at least {self.window} frames (its base clip), got {frames}")
        iters = int(frames) + self.queue_steps - self.window
        per_iter = 2 * self.partitions if self.lookahead else self.partitions
        return Plan(self.window, self.queue_steps + iters * per_iter,
                    f"queue of {self.queue_steps}{f' + {self.window // 2} lookahead' if self.lookahead else ''}",
                    per_iter, iters)

    def noise_shape(self, shape: tuple) -> tuple:
        b, c, _, h, w = shape
        return (b, c, self.window, h, w)  # the base clip's noise; the queue's is drawn in run()

    def rng_rule(self) -> str:
        return (f"x_T (base clip, F frames)=normal(k_x); queue noise=normal(fold_in(k_steps,{QUEUE_FOLD:#x})); "
                f"iteration j: k=fold_in(fold_in(k_steps,{ITER_FOLD:#x}),j), split(k) -> (enqueued noise, "
                f"step noise; window w: fold_in(step key, w))")

    def window_path(self, frames: int, group: int, *, solver: str = "ddim", rescale: bool = False,
                    capture: bool = False, return_x0: bool = False, clock: bool = False) -> W.WindowPath:
        return W.WindowPath("blocks")  # the queue is always held as blocks of windows (one block when D = 1)

    def run(self, model_fn, inputs: SampleInputs, *, capture: bool = False):
        if capture:
            raise VstarError("attention maps are not recorded with fifo")
        f, L, N = self.window, self.queue_steps, inputs.frames
        co = inputs.coeffs  # loop order: loop index i <-> reference index L - 1 - i
        ref = {k: v[::-1] for k, v in co.items()}
        if not self.scale_in_queue:  # the reference's ddim_step: no use_scale factors
            ref = dict(ref, scale=jnp.ones_like(ref["scale"]), prev_x0_coef=ref["sqrt_alpha_prev"])
        per_frame_ctx = inputs.context.ndim == 4
        base_ctx = W.slice_frames(inputs.context, 0, f, 1) if per_frame_ctx else inputs.context
        base, _, _ = ddim_loop(model_fn, inputs.x_T, base_ctx, co, inputs.cfg_scale, inputs.keys,
                               guided=inputs.guided, use_noise=inputs.use_noise)

        prefix, index, starts, write_from = queue_layout(f, self.partitions, self.lookahead)
        P = prefix + L
        b, c, _, h, w = base.shape
        q0 = initial_queue(base, jax.random.normal(jax.random.fold_in(inputs.key, QUEUE_FOLD), (b, c, P, h, w)),
                           ref["sqrt_alpha"], ref["sqrt_one_minus_alpha"], f, prefix)
        grid = _window_grid(starts, index, f, as_denoiser(model_fn).windows)
        x_in = jnp.moveaxis(jnp.take(q0, jnp.asarray(grid.frames), axis=2), (2, 3), (0, 1))  # (D, K, b, c, F, h, w)
        k_iter = jax.random.fold_in(inputs.key, ITER_FOLD)

        # the context once per window slot, before the loops: on a mesh each device holds its slot's whole
        # context (a per-frame one too) instead of gathering the split context at every call
        slot_ctx = jnp.broadcast_to(inputs.context, (grid.starts.shape[0],) + inputs.context.shape)

        def one_iteration(x_in, it):
            k_new, k_step = jax.random.split(jax.random.fold_in(k_iter, it))

            def one_group(_, col):  # slot j of every device: D windows, one batched UNet call, no queue carried
                xw, s, wi, idx = col
                if per_frame_ctx:  # queue position p holds output frame it + p - prefix - (L - F)
                    frames = jnp.clip(it + s[:, None] + jnp.arange(f) - prefix - (L - f), 0, N - 1)
                    ctx = jax.vmap(lambda c, fr: jnp.take(c, fr, axis=1))(slot_ctx, frames)
                else:
                    ctx = slot_ctx
                eps, _ = guided_eps_windows(model_fn, xw, ref["timesteps"][idx], ctx, L - 1 - idx[:, f // 2],
                                            inputs.cfg_scale, guided=inputs.guided)
                noise = (jax.vmap(lambda w: jax.random.normal(jax.random.fold_in(k_step, w), xw.shape[1:],
                                                              jnp.float32))(wi) if inputs.use_noise else None)
                co_f = {k: v[idx][:, None, None, :, None, None] for k, v in ref.items() if k != "timesteps"}
                x_prev, _ = ddim_step(xw, eps, co_f, noise)
                return None, x_prev[:, :, :, write_from:]  # the frames this window writes back

            cols = (jnp.moveaxis(x_in, 1, 0), grid.starts.T, grid.wi.T, np.moveaxis(grid.index, 1, 0))
            _, written = jax.lax.scan(one_group, None, cols)
            written = jnp.moveaxis(written, 0, 1)  # (D, K, b, c, F - write_from, h, w)
            fresh = jax.random.normal(k_new, (b, c, 1, h, w), jnp.float32)
            return shift_windows(x_in, written, fresh, grid, self.lookahead), written[:, 0, :, :, 0]

        iters = N + L - f
        _, outs = jax.lax.scan(one_iteration, x_in, jnp.arange(iters, dtype=jnp.int32))
        outs = outs[:, 0]  # (iters, b, c, h, w): the dequeued frame is rank 0's, the first device's
        video = jnp.moveaxis(outs[L - f:], 0, 2)  # (b, c, N, h, w): drop the lead-in
        return video, None
