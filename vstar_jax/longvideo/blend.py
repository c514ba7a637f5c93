"""``blend:F:O`` -- StreamingT2V randomized blending (chunks of F frames overlapping O).

Chunk k predicts x0 for its frames; r_k ~ U{0..O-1} fresh per chunk and step; frames before
s_k + r_k keep chunk k-1's prediction, the rest take chunk k's (chunks write in order, as the
reference does); then one DDIM update of the long latent with the blended prediction. The blend
is applied to eps, which per frame is the same as blending x0 (x0 is an elementwise function of
x and eps) and keeps the update's eps consistent with the blended x0. Offsets:
``randint(fold_in(key, OFFSET_FOLD), (n_steps, n_chunks), 0, O)`` with chunk 0's offset 0; DDIM
noise as in ``single``. Needs (N - O) % (F - O) == 0. With N == F it is ``single``
bit for bit. The chunks of a step all read x_t: D of them (``Denoiser.windows``, the mesh's ``windows``
axis) run as one batched UNet call. The owner map, order-dependent as the reference writes it, is
computed in closed form (:func:`owner_map`: the last chunk that writes a frame). With D > 1 the chunks
lie in contiguous blocks per device (:func:`_blend_blocks`): each takes its frames' eps from their owner,
its block's or a neighbouring block's (two collective-permutes a step). Otherwise each chunk adds only
the frames it owns to its slot's partial sum, and the slots are summed once a step (one all-reduce of
the latent on a mesh): one owner per frame, so either is the serial selection exactly, for any D; the
last group is padded with masked chunks.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.diffusion.sampler import (SampleOutput, as_denoiser, ddim_step, guided_eps_windows, is_dpm, solver_state,
                                         solver_step)
from vstar_jax.errors import VstarError
from vstar_jax.longvideo import windows as W
from vstar_jax.longvideo.base import Plan, SampleInputs, Strategy, positive, register

OFFSET_FOLD = 0x626C6E64  # fold_in constant of the blending offsets' key ("blnd")


def owner_map(starts, offsets, window: int, frames: int):
    """The randomized-blending owner map of one step: (frames,) int32, the chunk whose prediction each frame
    takes. Chunk k covers ``[s_k, s_k + F)`` and writes its frames from ``s_k + r_k`` on, the chunks in order
    (frames before ``s_k + r_k`` keep chunk k-1's), so a frame's owner is the last chunk that writes it:
    max{k : s_k + r_k <= j < s_k + F} (StreamingT2V ``diffusion_sdedit.py``, ``model_fn`` of
    ``GaussianDiffusion_SDEdit.sample``). With chunk 0's offset 0 every frame has one. The blend loop and
    the enhancer's merge of independently denoised chunks both take it from here."""
    j = jnp.arange(frames, dtype=jnp.int32)[None, :]
    s = jnp.asarray(starts, jnp.int32)[:, None]
    writes = (j >= s + jnp.asarray(offsets, jnp.int32)[:, None]) & (j < s + window)
    k = jnp.arange(s.shape[0], dtype=jnp.int32)[:, None]
    return jnp.max(jnp.where(writes, k, -1), axis=0)


def _blend(model_fn, x_T, context, coeffs, cfg_scale, keys, starts, offsets, *, window,
           guided, use_noise, return_x0, capture, group=1, rescale=None, frame_times=None):
    index, real = W.window_groups(len(starts), group)
    g_starts, g_real = jnp.asarray(np.asarray(starts)[index]), jnp.asarray(real)

    frames = x_T.shape[2]
    g_index = jnp.asarray(index)

    def step(carry, xs):
        x, state = carry
        co, i, k, r = xs  # r: (n_chunks,) this step's offsets
        owner = owner_map(starts, r, window, frames)

        def one_group(acc, sm):  # D chunks, one batched UNet call; each adds the frames it owns
            ss, ids, m = sm
            xw, ctx = W.stack_windows(x, context, ss, window)
            eps, aux = guided_eps_windows(model_fn, xw, jnp.broadcast_to(co["timesteps"], (group,)), ctx, i,
                                          cfg_scale, guided=guided, capture=capture, rescale=rescale,
                                          frame_times=W.stack_times(frame_times, ss, window))
            owns = jax.vmap(lambda s, c: W.slice_frames(owner, s, window, 0) == c)(ss, ids)  # (D, F)
            eps = jnp.where(owns[:, None, None, :, None, None], eps, 0.0)  # one owner per frame: exact sums
            return W.add_windows(acc, eps, ss, m), aux

        zeros = jnp.zeros((group,) + x.shape, x.dtype)  # one partial sum per slot (a device's own chunks)
        eps_full, aux = jax.lax.scan(one_group, zeros, (g_starts, g_index, g_real))
        eps_full = eps_full.sum(axis=0)  # on a mesh: one all-reduce of the latent a step
        noise = jax.random.normal(k, x.shape, jnp.float32) if use_noise else None
        x_prev, x0, state = solver_step(x, eps_full, co, noise, state)  # DDIM or DPM++ 2M SDE (the schedule's)
        return (x_prev, state), (x0 if return_x0 else None, aux)

    n = coeffs["timesteps"].shape[0]
    xs = (coeffs, jnp.arange(n, dtype=jnp.int32), keys, offsets)
    x_T = x_T.astype(jnp.float32)
    (x, _), (x0s, aux) = jax.lax.scan(step, (x_T, solver_state(coeffs, x_T)), xs)
    return x, x0s, aux



def _blend_blocks(model_fn, x_T, context, coeffs, cfg_scale, keys, starts, offsets, *, window, guided, use_noise,
                  group):
    """:func:`_blend` on D window slots in contiguous blocks (:class:`~.windows.BlockGrid`): the loop carries
    each chunk's F frames of x_t; after a step's calls each chunk takes, for its own frames, the eps of
    the chunk that owns them (:func:`owner_map`; one of its block's or the m nearest of the neighbouring
    blocks', two collective-permutes of m chunks) and takes the DDIM step there: the same values as the
    serial selection, no all-reduce of the latent."""
    grid = W.block_grid(starts, window, group)
    frames = x_T.shape[2]

    def step(x_w, xs):
        co, i, k, r = xs
        owner = owner_map(starts, r, window, frames)[jnp.asarray(grid.frames)][:, :, None, None, :, None, None]
        eps = W.map_columns(lambda xw, ctx: guided_eps_windows(
            model_fn, xw, jnp.broadcast_to(co["timesteps"], (grid.d,)), ctx, i, cfg_scale, guided=guided)[0],
            x_w, context, grid)
        picked = jnp.zeros_like(eps)
        for dl, view, ok in zip(range(-grid.reach, grid.reach + 1), W.neighbour_windows(eps, grid), grid.ok):
            mine = ok & (owner == jnp.asarray(grid.rank + dl)[:, :, None, None, None, None, None])
            picked = picked + jnp.where(mine, view, 0.0)  # one owner per frame: the serial selection exactly
        noise = W.gather_windows(jax.random.normal(k, x_T.shape, jnp.float32), grid) if use_noise else None
        return W.keep_masked(ddim_step(x_w, picked, co, noise)[0], x_w, grid), None

    n = coeffs["timesteps"].shape[0]
    xs = (coeffs, jnp.arange(n, dtype=jnp.int32), keys, offsets)
    x_w, _ = jax.lax.scan(step, W.gather_windows(x_T.astype(jnp.float32), grid), xs)
    return W.assemble_windows(x_w, grid, x_T.shape), None, None

def blend_offsets(key, num_steps: int, num_chunks: int, overlap: int) -> jax.Array:
    """Randomized-blending offsets (num_steps, num_chunks) int32 in [0, overlap); chunk 0's are 0."""
    r = jax.random.randint(jax.random.fold_in(key, OFFSET_FOLD), (num_steps, num_chunks), 0, overlap,
                           dtype=jnp.int32)
    return r.at[:, 0].set(0)


def _offsets(key, n_steps: int, n_chunks: int, overlap: int):
    if key is None:
        return jnp.zeros((n_steps, n_chunks), jnp.int32)
    return blend_offsets(key, n_steps, n_chunks, int(overlap))


@register
@dataclasses.dataclass(frozen=True)
class Blend(Strategy):
    """StreamingT2V randomized blending: chunks of ``window`` frames overlapping ``overlap``."""

    name = "blend"
    SOLVERS = ("ddim", "dpmpp_2m_sde")
    POSITIONAL = ("window", "overlap")
    window: int = 24
    overlap: int = 8

    def __post_init__(self):
        positive(self.name, window=self.window, overlap=self.overlap)
        if self.overlap >= self.window:
            raise VstarError(f"long_video overlap {self.overlap} must be smaller than the window {self.window}")

    def check(self, frames: int, steps: int) -> Plan:
        try:
            starts = W.chunk_starts(int(frames), self.window, self.overlap)
        except ValueError as e:
            raise VstarError(str(e)) from None
        return Plan(self.window, len(starts) * int(steps), f"{len(starts)} chunks", len(starts), int(steps))

    def rng_rule(self) -> str:
        return f"offsets=randint(fold_in(k_steps,{OFFSET_FOLD:#x}),(steps,chunks),0,overlap) with chunk 0's set to 0"

    def sample(self, model_fn, x_T, cond, uncond, schedule, *, key=None, frames=None, **kw) -> SampleOutput:
        """:meth:`Strategy.sample`; two or more chunks need ``key`` (the random offsets). The loop itself
        (:meth:`run`) takes ``inputs.key`` None as offsets all 0: chunks merged without blending, which
        the enhancer's ``--no-blend`` runs (vstar_jax.enhance.sdedit)."""
        n = frames if frames is not None else jnp.shape(x_T)[2]
        if key is None and len(W.chunk_starts(int(n), self.window, self.overlap)) > 1:
            raise ValueError("blend with more than one chunk needs a PRNG key (key=jax.random.key(seed))")
        return super().sample(model_fn, x_T, cond, uncond, schedule, key=key, frames=frames, **kw)

    def window_path(self, frames: int, group: int, *, solver: str = "ddim", rescale: bool = False,
                    capture: bool = False, return_x0: bool = False, clock: bool = False) -> W.WindowPath:
        # the blocks loop steps with DDIM and plain CFG, each chunk on its own clock (the enhancer's DPM++,
        # guide rescale and video clock take _blend)
        unsupported = (f"blend steps {solver} only in the slot-sum loop" if solver != "ddim" else
                       "blend's guide rescale runs only in the slot-sum loop" if rescale else
                       "blend's windows read the video's frame clock only in the slot-sum loop" if clock else "")
        return W.choose_path(W.chunk_starts(int(frames), self.window, self.overlap), self.window, group,
                             capture=capture, return_x0=return_x0, unsupported=unsupported)

    def _loop(self, model_fn, inputs: SampleInputs, capture: bool, return_x0: bool):
        starts = W.chunk_starts(inputs.frames, self.window, self.overlap)
        n_steps = inputs.coeffs["timesteps"].shape[0]
        offsets = _offsets(inputs.key, n_steps, len(starts), self.overlap)
        group = 1 if capture else as_denoiser(model_fn).windows
        path = self.window_path(inputs.frames, group, solver="dpmpp_2m_sde" if is_dpm(inputs.coeffs) else "ddim",
                                rescale=inputs.rescale is not None, capture=capture, return_x0=return_x0,
                                clock=inputs.frame_times is not None)
        if path.path == "blocks":
            return _blend_blocks(model_fn, inputs.x_T, inputs.context, inputs.coeffs, inputs.cfg_scale, inputs.keys,
                                 starts, offsets, window=self.window, guided=inputs.guided,
                                 use_noise=inputs.use_noise, group=group)
        return _blend(model_fn, inputs.x_T, inputs.context, inputs.coeffs, inputs.cfg_scale, inputs.keys,
                      starts, offsets, window=self.window, guided=inputs.guided,
                      use_noise=inputs.use_noise, return_x0=return_x0, capture=capture, group=group,
                      rescale=inputs.rescale, frame_times=inputs.frame_times)
