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
from vstar_jax.vstar.tar import gaussian_band


def test_triangular_weights_and_views_as_the_reference():
    assert triangular_weights(16).tolist() == list(range(1, 9)) + list(range(8, 0, -1))
    assert triangular_weights(5).tolist() == [1, 2, 3, 2, 1]
    # get_views(video_length, window_size, stride): (N - W) // S + 1 windows from 0
    assert window_starts(64, 16, 4).tolist() == list(range(0, 49, 4))
    assert window_starts(16, 16, 4).tolist() == [0]


def _np_reschedule(frames, window, stride, perms):
    """inference_freenoise.py: for frame_index in range(W, N, S): x[fi:fi+S] = x[shuffled(fi-W .. fi-W+S)]."""
    x = np.arange(frames)
    for j, fi in enumerate(range(window, frames, stride)):
        idx = list(range(fi - window, fi - window + stride))
        shuffled = [idx[p] for p in perms[j]]
        x[fi:fi + stride] = x[shuffled]
    return x


@pytest.mark.parametrize("frames, window, stride", [(28, 16, 4), (40, 8, 4), (13, 4, 3), (12, 6, 6)])
def test_noise_rescheduling_matches_the_reference_loop(frames, window, stride):
    key = jax.random.key(3)
    got = np.asarray(reschedule_map(key, frames, window, stride))
    n_blocks = len(range(window, frames, stride))
    perms = np.argsort(np.asarray(jax.random.uniform(jax.random.fold_in(key, SHUFFLE_FOLD), (n_blocks, stride))),
                       axis=1)
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
    np.testing.assert_array_equal(x, raw[:, :, np.asarray(reschedule_map(key, 24, 8, 4))])
    np.testing.assert_array_equal(np.sort(x[:, :, 8:12], axis=2), np.sort(x[:, :, 0:4], axis=2))  # shuffled copy
    assert not np.array_equal(np.asarray(st.init_noise(jax.random.key(6), shape)), x)
    short = (1, 2, 8, 3, 3)  # N <= W: no block to reschedule, plain normal noise (so plain DDIM)
    np.testing.assert_array_equal(np.asarray(st.init_noise(key, short)), np.asarray(jax.random.normal(key, short)))


def _np_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _np_fused(q, k, v, window, stride, tar_sigma=None, rel_k=None, rel_v=None):
    """attention_freenoise.CrossAttention.forward with context_next = get_views(...)."""
    b, n, h, d = q.shape
    value = np.zeros((b, n, h, d))
    count = np.zeros((n,))
    w = triangular_weights(window).astype(np.float64)
    for s in window_starts(n, window, stride):
        qs, ks, vs = (t[:, s:s + window].astype(np.float64) for t in (q, k, v))
        sim = np.einsum("bihd,bjhd->bhij", qs, ks)
        if rel_k is not None:
            sim = sim + np.einsum("bihd,ijd->bhij", qs, rel_k[:window, :window])
        sim = sim / np.sqrt(d)
        if tar_sigma is not None:
            sim = sim + sim.max(axis=-1, keepdims=True) * gaussian_band(window, tar_sigma)
        a = _np_softmax(sim)
        out = np.einsum("bhij,bjhd->bihd", a, vs)
        if rel_v is not None:
            out = out + np.einsum("bhij,ijd->bihd", a, rel_v[:window, :window])
        value[:, s:s + window] += out * w[None, :, None, None]
        count[s:s + window] += w
    return value / count[None, :, None, None]


@pytest.mark.parametrize("window, stride, tar, rel", [(4, 2, False, False), (6, 3, True, False), (4, 1, False, True)])
def test_window_fusion_matches_numpy(window, stride, tar, rel):
    rng = np.random.default_rng(window + stride)
    n = window + 3 * stride
    q, k, v = (rng.standard_normal((3, n, 2, 8)).astype(np.float32) for _ in range(3))
    kw, ref_kw = {}, {}
    if tar:
        from vstar_jax.vstar.tar import tar_logits

        kw["logit_transform"] = lambda z: tar_logits(z, 2.0, 1.0)
        ref_kw["tar_sigma"] = 2.0
    if rel:  # Toeplitz tables as lvdm's RelativePosition makes them
        table_k, table_v = rng.standard_normal((2, 2 * n + 1, 8)).astype(np.float32)
        pos = np.arange(n)[None, :] - np.arange(n)[:, None] + n
        kw.update(rel_k=jnp.asarray(table_k[pos]), rel_v=jnp.asarray(table_v[pos]))
        ref_kw.update(rel_k=table_k[pos], rel_v=table_v[pos])
    fused = FreeNoise(window, stride).attend(attention)
    got = np.asarray(fused(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), **kw))
    ref = _np_fused(q, k, v, window, stride, **ref_kw)
    assert np.abs(got - ref).max() < 1e-5, np.abs(got - ref).max()
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
    from configs import unet_tiny
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
    unet.apply({"params": params}, x, t, ctx, hooks=(Recorder(),))
    n_temporal = sum(1 for name in params if name.endswith("_temporal") or name == "init_attn")
    assert len(calls) == 2 * n_temporal  # attn1 and attn2 of each temporal transformer
    assert all(s[1] == frames for s in calls)  # the frame axis: temporal attention only
    fn_out = unet.apply({"params": params}, x, t, ctx, hooks=FreeNoise(4, 2).attention_hooks(frames))
    assert float(jnp.abs(fn_out - plain).max()) > 1e-4
    assert parse_strategy("freenoise:4:2").attention_hooks(4) == ()  # one window: no hook at all


def test_lengths():
    st = FreeNoise(16, 4)
    assert st.check(64, 25).unet_frames == 64 and st.check(16, 25).calls == 25 and st.check(8, 25).unet_frames == 8
    with pytest.raises(ValueError, match="use 64 or 68, not 66"):
        st.check(66, 25)
