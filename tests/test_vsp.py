"""VSP per-frame embeddings against VSTAR's encode_attribute_multiple (golden, torch)."""
import re

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_golden
from vstar_jax.tar_vsp.vsp import frame_anchors, per_frame_embeddings


def test_matches_golden_exactly():
    g = load_golden("videocrafter2/vsp.safetensors")
    checked = 0
    for name, ref in g.items():
        m = re.fullmatch(r"(linear|same)_(k\d+_f(\d+))", name)
        if not m:
            continue
        mode, tag, frames = m.group(1), m.group(2), int(m.group(3))
        out = per_frame_embeddings(g[f"emb_{tag}"], frames, mode=mode)
        assert out.dtype == ref.dtype
        np.testing.assert_array_equal(out, ref, err_msg=name)
        checked += 1
    assert checked == 8


def test_jax_input_matches_numpy():
    g = load_golden("videocrafter2/vsp.safetensors")
    emb = g["emb_k5_f32"]
    out = per_frame_embeddings(jnp.asarray(emb), 32)
    assert isinstance(out, type(jnp.zeros(1)))
    np.testing.assert_allclose(np.asarray(out), g["linear_k5_f32"], rtol=0, atol=1e-6)


def _reference(embs, frames, mode):
    """encode_attribute_multiple in torch with int64 anchors (no int8 overflow)."""
    torch = pytest.importorskip("torch")
    e = torch.from_numpy(embs)
    k = e.shape[0]
    idx = torch.linspace(0, frames - 1, k, dtype=torch.int64)
    parts = []
    for i in range(k - 1):
        n = int(idx[i + 1] - idx[i] + 1)
        beta = torch.linspace(0, 1.0, n).view(n, 1, 1)
        pos, neg = e[i:i + 1].repeat(n, 1, 1), e[i + 1:i + 2].repeat(n, 1, 1)
        mixed = pos * (1.0 - beta) + neg * beta if mode == "linear" else pos
        parts.append(mixed[:-1] if i != k - 2 else mixed)
    return torch.cat(parts).numpy()


@pytest.mark.parametrize("k,frames", [(3, 128), (4, 200), (9, 256), (2, 2), (7, 7)])
@pytest.mark.parametrize("mode", ["linear", "same"])
def test_long_videos_past_int8(k, frames, mode):
    embs = np.random.default_rng(k + frames).standard_normal((k, 77, 4)).astype(np.float32)
    out = per_frame_embeddings(embs, frames, mode=mode)
    assert out.shape == (frames, 77, 4)
    np.testing.assert_array_equal(out, _reference(embs, frames, mode))
    np.testing.assert_array_equal(out[0], embs[0])
    if mode == "linear":
        np.testing.assert_array_equal(out[-1], embs[-1])


def test_anchors_match_torch_integer_linspace():
    torch = pytest.importorskip("torch")
    for frames in range(2, 300, 7):
        for k in range(2, min(frames, 12) + 1):
            ref = torch.linspace(0, frames - 1, k, dtype=torch.int64).numpy()
            np.testing.assert_array_equal(frame_anchors(k, frames), ref)


def test_validation_errors():
    e = np.zeros((3, 77, 4), np.float32)
    with pytest.raises(ValueError, match="at least 2"):
        per_frame_embeddings(e[:1], 16)
    with pytest.raises(ValueError, match="frames >= number of states"):
        per_frame_embeddings(e, 2)
    with pytest.raises(ValueError, match="mode"):
        per_frame_embeddings(e, 16, mode="cubic")
    with pytest.raises(ValueError, match="tokens"):
        per_frame_embeddings(e[0], 16)
