"""Every diffusers UNet3DConditionModel width / head / group / block-type combination converts and matches.

Random configs (seeded): widths that are not multiples of each other, 2-4 levels, head widths that do not
divide every level's width (diffusers floors heads = width // attention_head_dim), GroupNorm group counts
other than 32, layers_per_block 1-2 and independent down / up block-type lists. Each model is saved with
``save_pretrained``, converted by the project's converter, and the Flax UNet must equal diffusers in
float32 within 1e-4 relative to max |reference| (measured ~1e-6: float32 summation order only).

diffusers 0.42 cannot build a per-level ``attention_head_dim`` list for UNet3DConditionModel (its
``transformer_in`` multiplies it by 8 heads: TypeError) nor any ``num_attention_heads``
(NotImplementedError), so those are refused here too (``test_configs_diffusers_refuses_are_refused``);
per-level head layouts are tested on the model (``test_per_level_head_layouts_run``).
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.checkpoints_convert import diffusers as conv_diffusers
from vstar_jax.checkpoints_convert.unet import unet_config_from_diffusers, unet_config_from_lvdm
from conftest import rel_err
from vstar_jax.io.checkpoint import load_checkpoint
from vstar_jax.models.unet3d import UNet3D, unet_level_heads, unet_level_widths

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
RTOL = 1e-4
DOWN = ("CrossAttnDownBlock3D", "DownBlock3D")
UP = ("CrossAttnUpBlock3D", "UpBlock3D")


def random_configs(n: int = 8, seed: int = 15) -> list:
    rng = np.random.default_rng(seed)
    levels = [2, 3, 4, 2, 3, 4, 2, 3][:n] + [int(rng.integers(2, 5)) for _ in range(max(0, n - 8))]
    out = []
    for i, nl in enumerate(levels):
        groups = int(rng.choice([2, 4, 8]))
        while True:  # per-level widths, not all multiples of the first
            widths = [int(groups * k) for k in rng.integers(2, 7, nl)]
            if any(w % widths[0] for w in widths):
                break
        head_dim = int(rng.choice([d for d in (3, 4, 6, 8) if d <= min(widths)]))
        downs = [str(rng.choice(DOWN)) for _ in range(nl)]
        ups = [str(rng.choice(UP)) for _ in range(nl)]
        out.append(dict(block_out_channels=tuple(widths), norm_num_groups=groups, attention_head_dim=head_dim,
                        layers_per_block=2 if i in (0, 3) else 1,
                        cross_attention_dim=int(rng.choice([8, 12])),
                        down_block_types=tuple(downs), up_block_types=tuple(ups)))
    return out


CONFIGS = random_configs()


def test_random_configs_cover_the_issue():
    assert len(CONFIGS) >= 8
    ci = [CONFIGS[i] for i in CI_CONFIGS]
    assert {len(c["block_out_channels"]) for c in ci} == {2, 3, 4} and {c["layers_per_block"] for c in ci} == {1, 2}
    assert len({any(w % c["attention_head_dim"] for w in c["block_out_channels"]) for c in ci}) == 2
    assert {len(c["block_out_channels"]) for c in CONFIGS} == {2, 3, 4}
    assert all(any(w % c["block_out_channels"][0] for w in c["block_out_channels"]) for c in CONFIGS)
    assert all(c["norm_num_groups"] != 32 for c in CONFIGS)
    assert {c["layers_per_block"] for c in CONFIGS} == {1, 2}
    # heads per level differ, and some level's width is not a multiple of the head width (floored heads)
    assert any(len({w // c["attention_head_dim"] for w in c["block_out_channels"]}) > 1 for c in CONFIGS)
    assert any(w % c["attention_head_dim"] for c in CONFIGS for w in c["block_out_channels"])
    # down and up attention placed independently (asymmetric) somewhere
    assert any([d.startswith("CrossAttn") for d in c["down_block_types"]]
               != [u.startswith("CrossAttn") for u in reversed(c["up_block_types"])] for c in CONFIGS)


# CI converts four of the eight (~40 s of ~95 s): together they have 2, 3 and 4 levels, layers_per_block 1
# and 2, 2 and 8 groups, head widths 3 and 4, floored and exact heads, symmetric and asymmetric attention
# placement. The other four run with -m slow.
CI_CONFIGS = (1, 2, 3, 7)


@pytest.mark.parametrize("dcfg", [c if i in CI_CONFIGS else pytest.param(c, marks=pytest.mark.slow)
                                  for i, c in enumerate(CONFIGS)], ids=[
    "w" + "-".join(map(str, c["block_out_channels"])) + f"_g{c['norm_num_groups']}_hd{c['attention_head_dim']}"
    f"_l{c['layers_per_block']}" for c in CONFIGS])
def test_diffusers_folder_converts_and_matches(dcfg, tmp_path):
    torch.manual_seed(0)
    ref = diffusers.UNet3DConditionModel(**dcfg).eval()
    with torch.no_grad():  # diffusers zero-initialises some outputs: randomise so every weight matters
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    ref.save_pretrained(tmp_path / "model" / "unet")
    out = tmp_path / "converted"
    conv_diffusers.convert(str(tmp_path / "model"), str(out), components=["unet"], verbose=False)
    params, config = load_checkpoint(str(out))
    assert tuple(config["unet"]["block_channels"]) == tuple(dcfg["block_out_channels"])
    rng = np.random.default_rng(1)
    side = 2 ** (len(dcfg["block_out_channels"]) - 1)
    x = rng.standard_normal((1, 4, 2, side, 2 * side)).astype(np.float32)
    t = np.array([321])
    ctx = rng.standard_normal((1, 5, dcfg["cross_attention_dim"])).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
    model = UNet3D(config["unet"])
    # XLA backend optimisation off for this one program: ~35% less compile time, same float32 math
    compiled = jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c)).lower(
        params["unet"], x, t, ctx).compile(compiler_options={"xla_backend_optimization_level": 0})
    got = compiled(params["unet"], x, t, ctx)
    err = rel_err(got, want)
    print(f"\nparity {dcfg['block_out_channels']} groups {dcfg['norm_num_groups']}: rel err {err:.2e}")
    assert err < RTOL


# ---------------------------------------------------------------- what diffusers refuses is refused here

BASE = dict(block_out_channels=(16, 24), layers_per_block=1, attention_head_dim=8, cross_attention_dim=8,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), norm_num_groups=8)
REFUSED = {
    "block_out_channels": dict(block_out_channels=(16, 24, 32)),  # 3 widths, 2 down blocks
    "attention_head_dim": dict(attention_head_dim=(8, 8, 8)),    # per-level list of the wrong length
    "norm_num_groups": dict(norm_num_groups=6),                   # 16 % 6 != 0
    "up_block_types": dict(up_block_types=("UpBlock3D",)),
    "num_attention_heads": dict(num_attention_heads=2),
    "attention_head_dim ": dict(attention_head_dim=(8, 8)),       # right length: diffusers still cannot build it
    "down_block_types": dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock3D")),
}


@pytest.mark.parametrize("field", list(REFUSED), ids=[f.strip() + ("_list" if f.endswith(" ") else "")
                                                      for f in REFUSED])
def test_configs_diffusers_refuses_are_refused(field, tmp_path, capsys):
    cfg = {**BASE, **REFUSED[field]}
    with pytest.raises(Exception):
        diffusers.UNet3DConditionModel(**cfg)
    with pytest.raises(ValueError) as e:
        unet_config_from_diffusers(cfg)
    msg = str(e.value)
    assert "\n" not in msg and field.strip() in msg, msg
    # through the command line: one line, exit status 2, nothing written
    (tmp_path / "model" / "unet").mkdir(parents=True)
    (tmp_path / "model" / "unet" / "config.json").write_text(json.dumps(cfg))
    assert conv_diffusers.main([str(tmp_path / "model"), "--out", str(tmp_path / "o"), "--components", "unet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field.strip() in err and not (tmp_path / "o").exists()


def test_lvdm_refusals_name_the_field():
    base = dict(model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[1],
                num_head_channels=8, context_dim=16, addition_attention=True)
    for change, field in ((dict(model_channels=48), "norm_groups"),         # lvdm GroupNorm32: 48 % 32
                          (dict(channel_mult=[2, 4]), "channel_mult"),      # output conv takes model_channels
                          (dict(num_head_channels=-1, num_heads=4), "num_head_channels")):  # init_attn d_head -1
        with pytest.raises(ValueError, match=field) as e:
            unet_config_from_lvdm({**base, **change})
        assert "\n" not in str(e.value)
    # lvdm's num_heads form without init_attn: fixed head count, head width per level
    cfg = unet_config_from_lvdm({**base, "num_head_channels": -1, "num_heads": 4, "addition_attention": False})
    assert unet_level_heads(cfg) == ((4, 8), (4, 16))


def test_per_level_head_layouts_and_block_channels_equals_mult_form():
    """block_channels (32, 64) is the same model as 32 x (1, 2): the same traced program (so bit-identical
    outputs); a per-level head width list gives each level its own (floored) head count."""
    import ml_collections

    from vstar_jax.configs import unet_tiny
    from vstar_jax.models.unet3d import init_shapes

    cfg = unet_tiny.get_config()  # model_channels 32 x channel_mult (1, 2), 8-wide heads
    alt = unet_tiny.get_config()
    alt.channel_mult, alt.block_channels = None, (32, 64)
    assert unet_level_widths(cfg) == unet_level_widths(alt) == (32, 64)
    shapes = init_shapes(UNet3D(cfg), 2, 4, 4)
    assert jax.tree_util.tree_map(lambda s: s.shape, shapes) == \
        jax.tree_util.tree_map(lambda s: s.shape, init_shapes(UNet3D(alt), 2, 4, 4))
    x = jax.ShapeDtypeStruct((1, 4, 2, 4, 4), jnp.float32)
    t, ctx = jax.ShapeDtypeStruct((1,), jnp.int32), jax.ShapeDtypeStruct((1, 5, 32), jnp.float32)
    trace = lambda c: str(jax.make_jaxpr(lambda p, x, t, ctx: UNet3D(c).apply({"params": p}, x, t, ctx, fps=28))(
        shapes, x, t, ctx))  # noqa: E731
    assert trace(cfg) == trace(alt)
    per_level = ml_collections.ConfigDict({**cfg.to_dict(), "num_head_channels": (8, 24), "init_attn": False})
    assert unet_level_heads(per_level) == ((4, 8), (2, 24))  # 64 // 24 = 2 heads of 24 (inner 48)
    p = init_shapes(UNet3D(per_level), 2, 4, 4)
    assert p["down_1_0_spatial"]["block_0"]["attn1"]["to_q"]["kernel"].shape == (48, 48)
    assert p["down_1_0_spatial"]["proj_in"]["kernel"].shape == (64, 48)
    assert p["down_0_0_spatial"]["proj_in"]["kernel"].shape == (32, 32)
    mismatch = unet_tiny.get_config()
    mismatch.block_channels = (32, 48)  # disagrees with 32 x (1, 2)
    with pytest.raises(ValueError, match="block_channels"):
        unet_level_widths(mismatch)
