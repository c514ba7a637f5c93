"""Every GroupNorm of the UNet (with StreamingT2V's CAM) and the VAE has the reference's epsilon.

A wrong epsilon moves the outputs by less than the parity tolerances at random weights (activations
are O(1), so 1e-5 vs 1e-6 is lost in float32 noise; issue 25: ``in_norm`` at 1e-6 passed every
test), so the values are asserted directly, on every GroupNorm the modules build.

References:
* VideoCrafter ``lvdm/basics.py``: ``normalization(channels) = GroupNormSpecific(32, channels)``, a
  ``torch.nn.GroupNorm`` with its default eps 1e-5: the ResBlocks' ``in_layers`` / ``out_layers``
  norms and the UNet's final ``out`` norm (``lvdm/modules/networks/openaimodel3d.py``); its
  ``TemporalConvBlock`` norms are ``nn.GroupNorm(32, ...)``, eps 1e-5 too.
  ``lvdm/modules/attention.py``: ``SpatialTransformer`` / ``TemporalTransformer`` norms are
  ``torch.nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)``.
* diffusers ``UNet3DConditionModel`` (ModelScope): resnets and ``conv_norm_out`` use ``norm_eps``
  (1e-5), ``TemporalConvLayer`` ``nn.GroupNorm(norm_num_groups, ...)`` (1e-5), ``Transformer2DModel``
  and ``TransformerTemporalModel`` eps 1e-6: the same values.
* StreamingT2V's CAM merger (``cross_attention.py``): GroupNorm eps 1e-6 (models/streaming.py).
* The LDM VAE (``lvdm/modules/networks/ae_modules.py: Normalize``): ``torch.nn.GroupNorm(32, c,
  eps=1e-6, affine=True)`` everywhere; here ``vae.norm_eps`` of the config, 1e-6.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vstar_jax.configs import unet_tiny, vae_tiny
from vstar_jax.models.layers import GroupNorm32

# the last name of a GroupNorm's path -> the reference epsilon (UNet)
UNET_EPS = [
    (r"in_norm|out_norm", 1e-5, "ResBlock in_layers / out_layers: lvdm normalization()"),
    (r"norm\d", 1e-5, "TemporalConvBlock: nn.GroupNorm(32, c)"),
    (r"norm_out", 1e-5, "the UNet's out norm: lvdm normalization()"),
    (r"norm", 1e-6, "Spatial/TemporalTransformer and CAM merger: eps=1e-6"),
]


def _group_norms(module, *args, **kwargs) -> dict:
    """{path: epsilon} of every GroupNorm32 that ``module.init(*args)`` builds (traced only, no compile)."""
    seen = {}

    def record(next_fun, a, kw, context):
        m = context.module
        if isinstance(m, GroupNorm32) and context.method_name == "__call__":
            seen["/".join(str(p) for p in m.scope.path)] = m.epsilon
        return next_fun(*a, **kw)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
    return seen


def test_every_unet_group_norm_has_the_reference_epsilon():
    from vstar_jax.models.streaming import StreamingUNet

    cfg = unet_tiny.get_config()
    cfg.cam = dict(frames=2, cond_channels=4, embed_channels=(8, 16), downsample=False, head_dim=16, norm_groups=32)
    x = jnp.zeros((1, 4, 2, 8, 8))
    seen = _group_norms(StreamingUNet(cfg), x, jnp.array([400]), jnp.zeros((1, 5, 32)), fps=8,
                        cam_frames=jnp.zeros((1, 4, 2, 8, 8)))
    bad, kinds = [], {}
    for path, eps in seen.items():
        last = path.split("/")[-1]
        rule = next((r for r in UNET_EPS if re.fullmatch(r[0], last)), None)
        assert rule is not None, f"no reference epsilon known for GroupNorm {path}"
        kinds[rule[2]] = kinds.get(rule[2], 0) + 1
        if eps != rule[1]:
            bad.append(f"{path}: {eps} (reference {rule[1]}, {rule[2]})")
    assert not bad, bad
    assert len(kinds) == len(UNET_EPS), kinds  # every kind was met (the walk did not miss a module type)
    assert any(p.startswith("cam_merge_") for p in seen) and any(p.startswith("cam_control/") for p in seen)


def test_every_vae_group_norm_has_the_reference_epsilon():
    from vstar_jax.models.vae import AutoencoderKL

    cfg = ml_collections.ConfigDict(vae_tiny.get_config())
    assert cfg.norm_eps == 1e-6
    seen = _group_norms(AutoencoderKL(cfg), jnp.zeros((1, 3, 16, 16)))
    assert len(seen) > 10 and any("decoder" in p for p in seen) and any("encoder" in p for p in seen), seen
    assert {p: e for p, e in seen.items() if e != 1e-6} == {}
