"""CLIP towers and CLIP score against transformers' CLIPModel on a tiny random config."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from vstar_jax.checkpoints_convert.clip import convert_hf_clip, convert_openclip  # noqa: E402
from vstar_jax.checkpoints_convert.common import ConversionError  # noqa: E402
from vstar_jax.metrics.clip_score import ClipScorer  # noqa: E402
from vstar_jax.models.clip_vision import CLIPVisionTransformer, preprocess  # noqa: E402
from vstar_jax.models.tokenizer import get_tokenizer  # noqa: E402

PROMPTS = ["a red ball rolls on the grass", "", "a white boat on a blue lake, 4k"]


@pytest.fixture(scope="module")
def hf():
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=48, intermediate_size=96,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=16,
    )
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # non-trivial norms and embeddings
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    return model, sd, config.to_dict()


def _hf_image(model, pixels_nhwc):
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(pixels_nhwc.transpose(0, 3, 1, 2)))
        return model.visual_projection(model.vision_model(pixel_values=x).pooler_output).numpy()


def _hf_text(model, tokens):
    with torch.no_grad():
        out = model.text_model(input_ids=torch.from_numpy(tokens.astype(np.int64))).pooler_output
        return model.text_projection(out).numpy()


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_vision_tower_matches_transformers(hf):
    model, sd, config = hf
    params, configs = convert_hf_clip(sd, config)
    pixels = np.random.default_rng(0).standard_normal((3, 32, 32, 3)).astype(np.float32)
    ours = np.asarray(CLIPVisionTransformer(configs["clip_vision"]).apply({"params": params["clip_vision"]}, jnp.asarray(pixels)))
    ref = _hf_image(model, pixels)
    assert ours.shape == (3, 16)
    assert _rel(ours, ref) < 1e-5, _rel(ours, ref)


def test_clip_score_matches_transformers(hf):
    model, sd, config = hf
    params, configs = convert_hf_clip(sd, config)
    scorer = ClipScorer.from_converted(params, configs)
    video = np.random.default_rng(1).integers(0, 256, (5, 40, 56, 3), dtype=np.uint8)
    tokens = get_tokenizer(pad_token_id=49407)(PROMPTS)
    ref_text = _hf_text(model, tokens)
    ours_text = np.asarray(scorer._text(scorer.text_params, jnp.asarray(tokens)))
    assert _rel(ours_text, ref_text) < 1e-5, _rel(ours_text, ref_text)

    img = _hf_image(model, preprocess(video, 32))
    img /= np.linalg.norm(img, axis=-1, keepdims=True)
    txt = ref_text / np.linalg.norm(ref_text, axis=-1, keepdims=True)
    for i, prompt in enumerate(PROMPTS):
        ref = 100.0 * img @ txt[i]
        ours = scorer.frame_scores(video, prompt)
        np.testing.assert_allclose(ours, ref, atol=1e-3)
        assert scorer.score(video, prompt) == pytest.approx(float(ref.mean()), abs=1e-3)
    # CLIPModel's own logits agree: logit_scale * cos
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens[:1].astype(np.int64)),
                    pixel_values=torch.from_numpy(preprocess(video, 32).transpose(0, 3, 1, 2).copy()))
        cos = (out.logits_per_image[:, 0] / model.logit_scale.exp()).numpy()
    np.testing.assert_allclose(scorer.frame_scores(video, PROMPTS[0]), 100 * cos, atol=1e-3)


def test_preprocess_resizes_short_side_and_centre_crops():
    frames = np.zeros((1, 40, 80, 3), np.uint8)
    frames[:, :, 20:60] = 255  # the middle half is white: after the centre crop all is white
    out = preprocess(frames, 32)
    assert out.shape == (1, 32, 32, 3)
    white = (1.0 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])
    np.testing.assert_allclose(out[0, :, 4:28], np.broadcast_to(white, (32, 24, 3)), atol=1e-2)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(frames.astype(np.float32), 32)


def _to_openclip(sd):
    """The same weights in OpenCLIP's layout (fused qkv, ``visual.proj`` as a matrix)."""
    from tiny_torch import hf_to_openclip_layers, hf_vision_to_openclip

    out = dict(hf_vision_to_openclip(sd, 2), **hf_to_openclip_layers(sd, "text_model.", "", 2))
    out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out["ln_final.weight"], out["ln_final.bias"] = sd["text_model.final_layer_norm.weight"], sd["text_model.final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].T
    out["logit_scale"] = sd["logit_scale"]
    return out


def test_openclip_layout_converts_to_the_same_params(hf):
    model, sd, config = hf
    hf_params, _ = convert_hf_clip(sd, config)
    oc_params, oc_cfg = convert_openclip(_to_openclip(sd), vision_head_width=12, text_head_dim=8, act="quick_gelu")
    assert oc_cfg["clip_vision"].heads == 4 and oc_cfg["clip_vision"].image_size == 32
    import jax

    flat_a = jax.tree_util.tree_leaves_with_path(hf_params)
    flat_b = dict(jax.tree_util.tree_leaves_with_path(oc_params))
    assert len(flat_a) == len(flat_b)
    for path, leaf in flat_a:
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_b[path]), err_msg=str(path))


def test_conversion_errors_name_the_keys(hf):
    _, sd, config = hf
    bad = dict(sd)
    del bad["vision_model.post_layernorm.bias"]
    bad["vision_model.encoder.layers.0.mlp.fc1.weight"] = np.zeros((95, 48), np.float32)
    with pytest.raises(ConversionError) as e:
        convert_hf_clip(bad, config)
    assert "vision_model.post_layernorm.bias" in str(e.value)
    assert "vision_model.encoder.layers.0.mlp.fc1.weight" in str(e.value)
    with pytest.raises(ConversionError, match="extra.weight"):
        convert_hf_clip({**sd, "extra.weight": np.zeros(1, np.float32)}, config)


def test_convert_cli_checkpoint_and_metrics_cli(hf, tmp_path, capsys):
    import json

    from vstar_jax.checkpoints_convert.clip import main as convert_main
    from vstar_jax.io.video import read_video, write_sidecar, write_video
    from vstar_jax.metrics.cli import main as metrics_main

    model, sd, config = hf
    src = tmp_path / "hf_clip"
    model.save_pretrained(src)
    assert convert_main([str(src), str(tmp_path / "clip_ckpt")]) == 0
    scorer = ClipScorer.load(str(tmp_path / "clip_ckpt"))

    video = np.random.default_rng(2).integers(0, 256, (6, 48, 64, 3), dtype=np.uint8)
    path = tmp_path / "v.mp4"
    write_video(path, video, fps=8)
    write_sidecar(path, {"prompt": PROMPTS[0]})
    frames = read_video(path)
    img = _hf_image(model, preprocess(frames, 32))
    txt = _hf_text(model, get_tokenizer(pad_token_id=49407)(PROMPTS[:1]))[0]
    ref = float(np.mean(100 * (img / np.linalg.norm(img, axis=-1, keepdims=True)) @ (txt / np.linalg.norm(txt))))
    assert scorer.score(frames, PROMPTS[0]) == pytest.approx(ref, abs=1e-3)
    capsys.readouterr()
    assert metrics_main([str(path), "--clip", str(tmp_path / "clip_ckpt"), "--mawe-size", "0"]) == 0
    out = json.loads(capsys.readouterr().out)[str(path)]
    assert out["clip_score"] == pytest.approx(ref, abs=1e-3)
