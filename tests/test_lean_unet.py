"""Issue 14's lean building blocks: each is the old computation with the same parameters.

GroupNorm's one-pass statistics against a float64 numpy reference (also with a large mean, where a
plain E[x^2] - E[x]^2 would cancel), the temporal conv as a 2-D conv against flax's 3-D nn.Conv on
the same parameters, remat keeping the parameter tree and the function, the compile-cache switch.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import rel_err
from vstar_jax.models.layers import GroupNorm32
from vstar_jax.models.unet3d import FrameConv


def _numpy_group_norm(x, groups, eps, scale, bias):
    x = np.asarray(x, np.float64)
    n, c = x.shape[0], x.shape[-1]
    h = x.reshape(n, -1, groups, c // groups)
    m = h.mean(axis=(1, 3), keepdims=True)
    v = h.var(axis=(1, 3), keepdims=True)
    return ((h - m) / np.sqrt(v + eps)).reshape(x.shape) * scale + bias


@pytest.mark.parametrize("shape,offset", [((3, 5, 6, 64), 0.3), ((2, 4, 5, 6, 32), 0.0), ((2, 7, 64), 300.0)])
def test_group_norm_matches_numpy(shape, offset):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2 + offset + rng.standard_normal(shape[-1]) * 0.5).astype(np.float32)
    m = GroupNorm32(16 if shape[-1] == 32 else 32, 1e-5)
    p = m.init(jax.random.PRNGKey(0), jnp.asarray(x))
    scale, bias = rng.standard_normal(shape[-1]).astype(np.float32), rng.standard_normal(shape[-1]).astype(np.float32)
    p = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}}
    got = m.apply(p, jnp.asarray(x))
    want = _numpy_group_norm(x, m.num_groups, 1e-5, scale, bias)
    assert rel_err(got, want) < (2e-5 if offset > 100 else 2e-6)
    x16 = jnp.asarray(x, jnp.bfloat16)
    assert m.apply(p, x16).dtype == jnp.bfloat16


def test_frame_conv_is_flax_conv_3x1x1():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 5, 3, 4, 8)).astype(np.float32))
    ref = nn.Conv(6, (3, 1, 1), padding=((1, 1), (0, 0), (0, 0)))
    p_ref = ref.init(jax.random.PRNGKey(0), x)
    ours = FrameConv(6)
    p_ours = ours.init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_structure(p_ref) == jax.tree_util.tree_structure(p_ours)
    np.testing.assert_array_equal(p_ref["params"]["kernel"], p_ours["params"]["kernel"])  # same init too
    p = {"params": {"kernel": p_ref["params"]["kernel"] + 0.1, "bias": jnp.arange(6.0)}}
    assert rel_err(ours.apply(p, x), ref.apply(p, x)) < 1e-6


def test_remat_keeps_parameter_tree_and_function():
    """remat: the UNet's parameter tree is unchanged (eval_shape, no compile), and each rematerialised
    block (TemporalTransformer with a TAR-shaped static transform, ResBlock) has the same value and
    gradients as the plain block. Block-level so the test stays cheap on CPU."""
    from vstar_jax.configs import unet_tiny
    from vstar_jax.models import unet3d

    cfg = unet_tiny.get_config()
    cfg_r = unet_tiny.get_config()
    cfg_r.remat = True
    shapes = unet3d.init_shapes(unet3d.UNet3D(cfg), 3)
    shapes_r = unet3d.init_shapes(unet3d.UNet3D(cfg_r), 3)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(shapes_r)
    assert [a.shape for a in jax.tree_util.tree_leaves(shapes)] == [a.shape for a in jax.tree_util.tree_leaves(shapes_r)]

    plain_blocks, remat_blocks = unet3d._blocks(False), unet3d._blocks(True)
    assert plain_blocks != remat_blocks
    rng = np.random.default_rng(2)
    x5 = jnp.asarray(rng.standard_normal((1, 3, 4, 4, 32)).astype(np.float32))
    transform = lambda s: s + 0.5 * s.max(axis=-1, keepdims=True)  # noqa: E731
    tt, tt_r = plain_blocks[2](4, 8), remat_blocks[2](4, 8)
    p = tt.init(jax.random.PRNGKey(0), x5)
    f = lambda m: jax.jit(jax.value_and_grad(lambda q, x: jnp.sum(jnp.sin(m.apply(q, x, transform, False, None))), argnums=(0, 1)))  # noqa: E731
    (v, g), (v_r, g_r) = f(tt)(p, x5), f(tt_r)(p, x5)
    flat = lambda tree: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(tree)])  # noqa: E731
    assert abs(float(v_r) - float(v)) <= 1e-5 * max(1.0, abs(float(v)))
    assert rel_err(flat(g_r), flat(g)) < 1e-4  # one tolerance over all gradients together

    x4 = jnp.asarray(rng.standard_normal((3, 4, 4, 32)).astype(np.float32))
    emb = jnp.asarray(rng.standard_normal((3, 16)).astype(np.float32))
    rb, rb_r = plain_blocks[0](32, 3), remat_blocks[0](32, 3)
    p = rb.init(jax.random.PRNGKey(1), x4, emb)
    f = lambda m: jax.jit(jax.grad(lambda q: jnp.sum(jnp.sin(m.apply(q, x4, emb)))))  # noqa: E731
    assert rel_err(flat(f(rb_r)(p)), flat(f(rb)(p))) < 1e-4


def test_compile_cache_switch(tmp_path, monkeypatch):
    from vstar_jax import compile_cache as cc

    monkeypatch.delenv(cc.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cc.cache_dir_from_env() == str(tmp_path / "xdg" / "vstar-jax" / "jax_cache")
    for off in ("off", "", "0", "None"):
        assert cc.cache_dir_from_env({cc.ENV: off}) is None
    assert cc.cache_dir_from_env({cc.ENV: str(tmp_path / "c")}) == str(tmp_path / "c")
    before = {k: getattr(jax.config, k) for k in ("jax_enable_compilation_cache", "jax_compilation_cache_dir")}
    try:
        monkeypatch.setenv(cc.ENV, str(tmp_path / "cache"))
        assert cc.enable_compile_cache() == str(tmp_path / "cache")
        assert (tmp_path / "cache").is_dir() and jax.config.jax_enable_compilation_cache
        monkeypatch.setenv(cc.ENV, "off")
        assert cc.enable_compile_cache() is None and not jax.config.jax_enable_compilation_cache
    finally:
        for k, v in before.items():
            jax.config.update(k, v)


def test_chunked_transformer_blocks_are_the_plain_blocks(monkeypatch):
    """CPU: transformer blocks run over chunks of images / pixels (unet3d.CHUNK_ELEMS). Forced to chunk
    at tiny shapes, a temporal transformer (value and gradients) and a spatial one equal the unchunked
    path to float32 rounding; a hook keeps the whole-tensor path."""
    from vstar_jax.models import unet3d

    if jax.default_backend() != "cpu":
        pytest.skip("chunking is a CPU path")
    monkeypatch.setattr(unet3d, "CHUNK_ELEMS", 64)
    assert unet3d._chunks(64, 6, 32, True) == 64 and unet3d._chunks(6, 4, 8, True) == 3  # >= 1 row a chunk
    assert unet3d._chunks(6, 4, 8, False) == 1
    rng = np.random.default_rng(3)
    flat = lambda tree: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(tree)])  # noqa: E731
    x5 = jnp.asarray(rng.standard_normal((2, 3, 4, 4, 16)).astype(np.float32))
    tt = unet3d.TemporalTransformer(2, 8, groups=8)
    p = tt.init(jax.random.PRNGKey(1), x5)
    f = jax.value_and_grad(lambda q, x: jnp.sum(jnp.sin(tt.apply(q, x))), argnums=(0, 1))
    monkeypatch.setattr(unet3d, "CHUNK_ELEMS", 0)
    v, g = jax.jit(f)(p, x5)
    monkeypatch.setattr(unet3d, "CHUNK_ELEMS", 48)  # 3 tokens: 2 chunks of 8 pixels x 6 (b, f) rows
    v_c, g_c = jax.jit(f)(p, x5)
    assert abs(float(v_c) - float(v)) <= 1e-5 * max(1.0, abs(float(v)))
    assert rel_err(flat(g_c), flat(g)) < 1e-5
    # a hook (here a logit transform) keeps the whole-tensor path: the same function as unchunked
    transform = lambda s: s * 0.5  # noqa: E731
    monkeypatch.setattr(unet3d, "CHUNK_ELEMS", 0)
    want = tt.apply(p, x5, transform)
    monkeypatch.setattr(unet3d, "CHUNK_ELEMS", 48)
    np.testing.assert_array_equal(tt.apply(p, x5, transform), want)

    x4 = jnp.asarray(rng.standard_normal((6, 4, 4, 16)).astype(np.float32))
    ctx = jnp.asarray(rng.standard_normal((6, 5, 12)).astype(np.float32))
    st = unet3d.SpatialTransformer(2, 8, groups=8)
    p = st.init(jax.random.PRNGKey(2), x4, ctx)
    monkeypatch.setattr(unet3d, "CHUNK_ELEMS", 0)
    want = jax.jit(st.apply)(p, x4, ctx)
    monkeypatch.setattr(unet3d, "CHUNK_ELEMS", 512)  # 32 tokens: 3 chunks of 2 images
    assert rel_err(jax.jit(st.apply)(p, x4, ctx), want) < 2e-6


@pytest.mark.slow
def test_chunked_unet_is_the_plain_unet(monkeypatch):
    """The whole tiny UNet with chunking forced at every level equals the unchunked UNet (slow: two
    UNet compiles)."""
    from vstar_jax.configs import unet_tiny
    from vstar_jax.models import unet3d

    if jax.default_backend() != "cpu":
        pytest.skip("chunking is a CPU path")
    cfg = unet_tiny.get_config()
    model = unet3d.UNet3D(cfg)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, cfg.in_channels, 3, 8, 8)).astype(np.float32))
    t = jnp.asarray([10, 700])
    ctx = jnp.asarray(rng.standard_normal((2, 5, cfg.context_dim)).astype(np.float32))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x, t, ctx)
    params = jax.tree_util.tree_map(lambda a: a + 0.05 * jnp.asarray(rng.standard_normal(a.shape), a.dtype), params)
    run = lambda: jax.jit(model.apply)(params, x, t, ctx)  # noqa: E731
    monkeypatch.setattr(unet3d, "CHUNK_ELEMS", 0)
    plain = run()
    monkeypatch.setattr(unet3d, "CHUNK_ELEMS", 64)  # a handful of tokens per chunk at every level
    assert rel_err(run(), plain) < 2e-6
