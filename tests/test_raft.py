"""The JAX RAFT port against torchvision's raft_large (golden flow, synthetic weights)."""
import numpy as np
import pytest

from vstar_jax.checkpoints_convert.common import ConversionError, flatten
from vstar_jax.checkpoints_convert.raft import convert_raft, raft_plan
from raft_golden import GOLDEN, ITERS, inputs, synthetic_state_dict
from vstar_jax.metrics import raft as R
from vstar_jax.metrics.flow import get_flow_model


def torch_shapes():
    """raft_large's state dict key -> torch shape, from the plan and the Flax shapes."""
    flat = flatten(R.raft_param_shapes())
    out = {}
    for key, (dst, kind) in raft_plan().items():
        s = tuple(flat[dst].shape)
        out[key] = (s[3], s[2], s[0], s[1]) if kind == "conv2d" else s
    return out


@pytest.fixture(scope="module")
def state_dict():
    return synthetic_state_dict(torch_shapes())


def test_raft_matches_torchvision_golden(state_dict):
    from safetensors.numpy import load_file

    assert len(state_dict) == 154  # torchvision's 169 keys less 15 BatchNorm counters
    params = convert_raft(state_dict)
    a, b = inputs()
    ours = np.asarray(R._jit_forward(params, R.preprocess(a), R.preprocess(b), iters=ITERS))
    ref = load_file(str(GOLDEN))["flow"]
    assert ours.shape == ref.shape == (1, 128, 160, 2)
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < 1e-4, err


def test_raft_flow_model_from_a_state_dict_file(state_dict, tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "raft_large.safetensors"
    save_file(state_dict, str(path))
    fm = get_flow_model(f"raft:{path}")
    assert fm.name.startswith("raft-large 12 iters")
    a, b = inputs()
    flow = fm.fn(a[0], b[0])
    assert flow.shape == (128, 160, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()
    with pytest.raises(ValueError, match="RAFT weights not found"):
        get_flow_model(f"raft:{tmp_path / 'missing.pth'}")
    with pytest.raises(ValueError, match="multiples of 8"):
        fm.fn(a[0, :100], b[0, :100])


def test_raft_conversion_names_bad_keys(state_dict):
    bad = dict(state_dict)
    del bad["update_block.flow_head.conv2.bias"]
    bad["mask_predictor.conv.weight"] = np.zeros((575, 256, 1, 1), np.float32)
    with pytest.raises(ConversionError) as e:
        convert_raft(bad)
    assert "update_block.flow_head.conv2.bias" in str(e.value) and "mask_predictor.conv.weight" in str(e.value)


def test_convex_upsample_of_constant_flow_is_8x():
    import jax.numpy as jnp

    flow = jnp.full((1, 4, 5, 2), 1.5)
    mask = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 5, 576)), jnp.float32)
    up = np.asarray(R.convex_upsample(flow, mask))
    assert up.shape == (1, 32, 40, 2)
    np.testing.assert_allclose(up[:, 8:24, 8:32], 12.0, rtol=1e-6)  # interior: convex mix of 8 * 1.5
