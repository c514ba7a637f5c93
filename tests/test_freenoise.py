"""FreeNoise (vstar_jax.longvideo.freenoise): noise rescheduling and window-fused temporal attention
against numpy transcriptions of the reference (AILab-CVC/FreeNoise), the hook reaching every
temporal attention of the UNet, and N <= W being plain DDIM."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.longvideo import FreeNoise, parse_strategy
from vstar_jax.longvideo.freenoise import SHUFFLE_FOLD, reschedule_map, triangular_weights, window_starts
from vstar_jax.models.attention import attention
from vstar_jax.tar_vsp.tar import gaussian_band


def test_triangular_weights_and_views_as_the_reference():
    assert triangular_weights(16).tolist() == list(range(1, 9)) + list(range(8, 0, -1))
    assert triangular_weights(5).tolist() == [1, 2, 3, 2, 1]
    # get_views(video_length, window_size, stride): (N - W) // S + 1 windows from 0
    assert window_starts(64, 16, 4).tolist() == list(range(0, 49, 4))
    assert window_starts(16, 16, 4).tolist() == [0]
    for n in (2, 3, 4, 5, 6, 7, 16):  # against the transcriptions below
        assert triangular_weights(n).tolist() == generate_weight_sequence(n)
    for frames, window, stride in ((64, 16, 4), (13, 4, 3), (12, 6, 6), (16, 16, 4)):
        assert window_starts(frames, window, stride).tolist() == [s for s, _ in freenoise_get_views(frames, window, stride)]


def _perms(key, n_blocks, stride):
    """The shuffles by the documented PRNG rule (FreeNoise.rng_rule: argsort(uniform(fold_in(k_x,
    SHUFFLE_FOLD), (blocks, S)), axis=1)); the reference's random.shuffle draws them at the same places."""
    return np.argsort(np.asarray(jax.random.uniform(jax.random.fold_in(key, SHUFFLE_FOLD), (n_blocks, stride))), axis=1)


def freenoise_reschedule(x_T_total, window_size, window_stride, perms):
    """AILab-CVC/FreeNoise (commit 404b68b) scripts/evaluation/inference_freenoise.py:99-102, on the
    frame axis (2) of a (b, c, f, h, w) noise: for frame_index in range(W, N, S), list_index =
    range(frame_index - W, frame_index + S - W) shuffled, x[f:f + S] = x[list_index] (in place, so a
    block may copy an already rescheduled one). ``perms[j]`` is the j-th block's shuffle."""
    x = np.array(x_T_total, copy=True)
    for j, frame_index in enumerate(range(window_size, x.shape[2], window_stride)):
        list_index = list(range(frame_index - window_size, frame_index + window_stride - window_size))
        list_index = [list_index[p] for p in perms[j]]  # random.shuffle(list_index)
        x[:, :, frame_index:frame_index + window_stride] = x[:, :, list_index]
    return x


def _np_reschedule(frames, window, stride, perms):
    """The source frame of every frame: the reference's loop run on the frame numbers."""
    return freenoise_reschedule(np.arange(frames)[None, None, :], window, stride, perms)[0, 0]


@pytest.mark.parametrize("frames, window, stride", [(28, 16, 4), (40, 8, 4), (13, 4, 3), (12, 6, 6)])
def test_noise_rescheduling_matches_the_reference_loop(frames, window, stride):
    key = jax.random.key(3)
    got = np.asarray(reschedule_map(key, frames, window, stride))
    perms = _perms(key, len(range(window, frames, stride)), stride)
    assert got.tolist() == _np_reschedule(frames, window, stride, perms).tolist()
    # every new block is a permutation of the block one window earlier (of the rescheduled noise)
    for f in range(window, frames, stride):
        assert sorted(got[f:f + stride]) == sorted(got[f - window:f - window + stride])
    assert (got[:window] == np.arange(window)).all()
    # and the shuffles really shuffle (some block is not in its original order)
    assert any((got[f:f + stride] != got[f - window:f - window + stride]).any() for f in range(window, frames, stride))


def test_init_noise_uses_the_map_and_the_seed():
    st = FreeNoise(8, 4)
    shape = (1, 2, 24, 3, 3)
    key = jax.random.key(5)
    x = np.asarray(st.init_noise(key, shape))
    raw = np.asarray(jax.random.normal(key, shape))
    np.testing.assert_array_equal(x, freenoise_reschedule(raw, 8, 4, _perms(key, len(range(8, 24, 4)), 4)))
    np.testing.assert_array_equal(np.sort(x[:, :, 8:12], axis=2), np.sort(x[:, :, 0:4], axis=2))  # shuffled copy
    assert not np.array_equal(np.asarray(st.init_noise(jax.random.key(6), shape)), x)
    short = (1, 2, 8, 3, 3)  # N <= W: no block to reschedule, plain normal noise (so plain DDIM)
    np.testing.assert_array_equal(np.asarray(st.init_noise(key, short)), np.asarray(jax.random.normal(key, short)))


def _np_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# AILab-CVC/FreeNoise lvdm/modules/attention_freenoise.py:21-28 (generate_weight_sequence)
def generate_weight_sequence(n):
    if n % 2 == 0:
        m = n // 2
        return list(range(1, m + 1)) + list(range(m, 0, -1))
    m = (n + 1) // 2
    return list(range(1, m)) + [m] + list(range(m - 1, 0, -1))


# AILab-CVC/FreeNoise scripts/evaluation/funcs.py:13-20 (get_views): (N - W) // S + 1 views at i * S
def freenoise_get_views(video_length, window_size, stride):
    return [(i * stride, i * stride + window_size) for i in range((video_length - window_size) // stride + 1)]


def relative_position(table, max_relative_position, length_q, length_k):
    """attention_freenoise.py:40-49 (RelativePosition.forward): table[clamp(k - q, -m, m) + m]."""
    distance = np.arange(length_k)[None, :] - np.arange(length_q)[:, None]
    return table[np.clip(distance, -max_relative_position, max_relative_position) + max_relative_position]


def _np_fused(q, k, v, window, stride, tar_sigma=None, rel=None):
    """attention_freenoise.py:111-162 (CrossAttention.forward, self-attention with context_next =
    get_views(N, W, S)): per view, softmax(q k^T * scale [+ q k2^T * scale]) v [+ sim v2], weighted by
    generate_weight_sequence(W); final = where(count > 0, value / count, value). q, k, v (b, n, h, d)
    (heads kept on their own axis instead of "(b h)"); rel = (table_k, table_v, max_relative_position).
    tar_sigma: the project's TAR logit transform inside each view (not FreeNoise's: VSTAR's band)."""
    b, n, h, d = q.shape
    scale = d ** -0.5
    count = np.zeros((b, n, h, d))
    value = np.zeros((b, n, h, d))
    for t_start, t_end in freenoise_get_views(n, window, stride):
        weight = np.asarray(generate_weight_sequence(t_end - t_start), np.float64)[None, :, None, None]
        qs, ks, vs = (t[:, t_start:t_end].astype(np.float64) for t in (q, k, v))
        sim = np.einsum("bihd,bjhd->bhij", qs, ks) * scale
        if rel is not None:
            k2 = relative_position(rel[0], rel[2], t_end - t_start, t_end - t_start)
            sim = sim + np.einsum("bthd,tsd->bhts", qs, k2) * scale
        if tar_sigma is not None:
            sim = sim + sim.max(axis=-1, keepdims=True) * gaussian_band(window, tar_sigma)
        sim = _np_softmax(sim)
        out = np.einsum("bhij,bjhd->bihd", sim, vs)
        if rel is not None:
            v2 = relative_position(rel[1], rel[2], t_end - t_start, t_end - t_start)
            out = out + np.einsum("bhts,tsd->bthd", sim, v2)
        value[:, t_start:t_end] += out * weight
        count[:, t_start:t_end] += weight
    return np.where(count > 0, value / np.where(count > 0, count, 1), value)


@pytest.mark.parametrize("window, stride, tar, rel", [(4, 2, False, False), (6, 3, True, False), (4, 1, False, True)])
def test_window_fusion_matches_numpy(window, stride, tar, rel):
    rng = np.random.default_rng(window + stride)
    n = window + 3 * stride
    q, k, v = (rng.standard_normal((3, n, 2, 8)).astype(np.float32) for _ in range(3))
    kw, ref_kw = {}, {}
    if tar:
        from vstar_jax.tar_vsp.tar import tar_logits

        kw["logit_transform"] = lambda z: tar_logits(z, 2.0, 1.0)
        ref_kw["tar_sigma"] = 2.0
    if rel:  # Toeplitz tables as lvdm's RelativePosition makes them
        table_k, table_v = rng.standard_normal((2, 2 * n + 1, 8)).astype(np.float32)
        pos = np.arange(n)[None, :] - np.arange(n)[:, None] + n
        kw.update(rel_k=jnp.asarray(table_k[pos]), rel_v=jnp.asarray(table_v[pos]))
        ref_kw["rel"] = (table_k, table_v, n)  # lvdm's RelativePosition tables, max_relative_position n
    fused = FreeNoise(window, stride).attend(attention)
    got = np.asarray(fused(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), **kw))
    ref = _np_fused(q, k, v, window, stride, **ref_kw)
    assert np.abs(got - ref).max() < 1e-5, np.abs(got - ref).max()  # outputs are O(1): float32 rounding only
    # not the plain attention over all frames
    plain = np.asarray(attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)))
    assert np.abs(plain - ref).max() > 1e-2


def test_one_window_is_plain_attention():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 6, 2, 4)).astype(np.float32)) for _ in range(3))
    fused = FreeNoise(6, 2).attend(attention)
    np.testing.assert_array_equal(np.asarray(fused(q, k, v)), np.asarray(attention(q, k, v)))
    assert FreeNoise(8, 4).attention_hooks(8) == () and FreeNoise(8, 4).attention_hooks(12) == (FreeNoise(8, 4),)


def test_hook_reaches_every_temporal_attention_and_changes_the_unet():
    """The UNet passes the hook to every temporal transformer (init_attn included, as the reference)
    and to no spatial attention; the output changes, TAR composes."""
    from vstar_jax.configs import unet_tiny
    from vstar_jax.models.unet3d import UNet3D

    cfg = unet_tiny.get_config()
    unet = UNet3D(cfg)
    frames = 8
    x = jax.random.normal(jax.random.key(0), (1, cfg.in_channels, frames, 8, 8))
    ctx = jax.random.normal(jax.random.key(1), (1, 77, cfg.context_dim))
    t = jnp.array([500])
    params = unet.init(jax.random.key(2), x, t, ctx)["params"]
    calls = []

    class Recorder:
        def attend(self, base):
            def fn(q, k, v, **kw):
                calls.append(q.shape)
                return base(q, k, v, **kw)
            return fn

    plain = unet.apply({"params": params}, x, t, ctx)
    # one hooked pass (eager passes of the UNet dominate this test): the recorder, the outer wrapper,
    # sees every call the FreeNoise hook is offered, and passes it on
    fn_out = unet.apply({"params": params}, x, t, ctx,
                        hooks=tuple(FreeNoise(4, 2).attention_hooks(frames)) + (Recorder(),))
    n_temporal = sum(1 for name in params if name.endswith("_temporal") or name == "init_attn")
    assert len(calls) == 2 * n_temporal  # attn1 and attn2 of each temporal transformer
    assert all(s[1] == frames for s in calls)  # the frame axis: temporal attention only
    assert float(jnp.abs(fn_out - plain).max()) > 1e-4
    assert parse_strategy("freenoise:4:2").attention_hooks(4) == ()  # one window: no hook at all


def test_lengths():
    st = FreeNoise(16, 4)
    assert st.check(64, 25).unet_frames == 64 and st.check(16, 25).calls == 25 and st.check(8, 25).unet_frames == 8
    with pytest.raises(ValueError, match="use 64 or 68, not 66"):
        st.check(66, 25)
