"""Text encoder: golden OpenCLIP parity (penultimate/last/pooled), transformers CLIPTextModel
parity, encode_prompts, converter errors."""
import json
import warnings

import numpy as np
import pytest

import jax
import ml_collections

from conftest import load_golden, rel_err
from vstar_jax.configs import text_openclip_h14
from vstar_jax.checkpoints_convert.common import ConversionError, PrefixView
from vstar_jax.checkpoints_convert.text import (
    convert_hf_clip_text,
    convert_openclip_text,
    hf_clip_text_config,
    openclip_text_config_from_state_dict,
)
from vstar_jax.models.text import TextTransformer, encode_pooled, encode_prompts, text_param_shapes
from vstar_jax.models.tokenizer import CLIPTokenizer, get_tokenizer

RTOL = 1e-4




@pytest.fixture(scope="module")
def golden():
    sd = PrefixView(load_golden("openclip/text_tiny.safetensors"), "cond_stage_model.model.")
    io = load_golden("openclip/text_tiny_io.safetensors")
    cfg = openclip_text_config_from_state_dict(sd, heads=4)
    return cfg, convert_openclip_text(sd, cfg), sd, io


def test_config_from_state_dict_matches_readme(golden, golden_dir):
    cfg, *_ = golden
    readme = json.loads((golden_dir / "openclip" / "README.json").read_text())["config"]
    assert (cfg.width, cfg.heads, cfg.layers, cfg.output_dim, cfg.vocab_size, cfg.context_length) == (
        readme["width"], readme["heads"], readme["layers"], readme["output_dim"], readme["vocab_size"],
        readme["context_length"])
    assert cfg.act == "gelu" and cfg.layer == "penultimate"


@pytest.mark.parametrize("layer", ["penultimate", "last"])
def test_golden_hidden_states(golden, layer):
    cfg, params, _, io = golden
    model = TextTransformer(cfg)
    got = jax.jit(lambda p, t: model.apply({"params": p}, t, layer=layer))(params, io["token_ids"])
    assert got.shape == io[layer].shape
    assert rel_err(got, io[layer]) < RTOL


def test_golden_pooled_and_encode_prompts(golden, golden_dir):
    cfg, params, sd, io = golden
    model = TextTransformer(ml_collections.FrozenConfigDict(cfg))  # hashable: encode_* jit and cache
    tokens = io["token_ids"]
    pooled = encode_pooled(model, params, tokens)
    eot = tokens.argmax(-1)
    want = io["last"][np.arange(len(tokens)), eot] @ np.asarray(sd["text_projection"])
    assert pooled.shape == (len(tokens), 32)
    assert rel_err(pooled, want) < RTOL

    prompts = json.loads((golden_dir / "openclip" / "README.json").read_text())["prompts"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the long golden prompt is truncated
        emb = encode_prompts(model, params, get_tokenizer(), prompts)
    assert emb.shape == (len(prompts), 77, cfg.width)
    assert rel_err(emb, io["penultimate"]) < RTOL
    uncond = encode_prompts(model, params, get_tokenizer(), [""])
    assert rel_err(uncond[0], io["penultimate"][0]) < RTOL


def test_openclip_converter_errors_and_ignores(golden):
    cfg, _, sd, _ = golden
    good = dict(sd.items())
    # a real VideoCrafter2 checkpoint may keep the visual tower and the logit scale
    convert_openclip_text({**good, "visual.proj": np.zeros((4, 4)), "logit_scale": np.zeros(())}, cfg)
    bad = dict(good)
    del bad["transformer.resblocks.2.attn.in_proj_bias"]
    bad["transformer.resblocks.9.ln_1.weight"] = np.zeros(64, np.float32)
    bad["transformer.resblocks.1.attn.in_proj_weight"] = np.zeros((64, 64), np.float32)
    with pytest.raises(ConversionError) as info:
        convert_openclip_text(bad, cfg)
    err = info.value
    assert err.missing == ["transformer.resblocks.2.attn.in_proj_bias"]
    assert err.unexpected == ["transformer.resblocks.9.ln_1.weight"]
    assert len(err.mismatched) == 1 and "transformer.resblocks.1.attn.in_proj_weight" in err.mismatched[0]
    with pytest.raises(ConversionError, match="visual.proj"):
        convert_openclip_text({**good, "visual.proj": np.zeros((4, 4))}, cfg, ignore_prefixes=())


def test_h14_config_param_count():
    shapes = text_param_shapes(text_openclip_h14.get_config())
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    w, v, ctx, layers = 1024, 49408, 77, 24
    block = 2 * 2 * w + (3 * w * w + 3 * w) + (w * w + w) + (w * 4 * w + 4 * w) + (4 * w * w + w)
    assert n == v * w + ctx * w + layers * block + 2 * w + w * 1024  # 354,032,640


@pytest.fixture(scope="module", params=["gelu", "quick_gelu"])
def hf_model(request):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_hidden_layers=3,
        max_position_embeddings=77, hidden_act=request.param, projection_dim=16,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    model = transformers.CLIPTextModelWithProjection(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, config.to_dict()


def test_hf_clip_text_parity(hf_model):
    import torch

    model, config = hf_model
    cfg = hf_clip_text_config(config, with_projection=True)
    assert cfg.output_dim == 16 and cfg.act == config["hidden_act"] and cfg.eot_token_id == 49407
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    params = convert_hf_clip_text(sd, cfg)
    tok = CLIPTokenizer(pad_token_id=49407)  # transformers layout: padded with the end token
    tokens = tok(["", "a cat walks on the grass", "an astronaut riding a horse on mars, 4k"])
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens.astype(np.int64)))
    jmodel = TextTransformer(cfg)
    hidden, pooled = jax.jit(lambda p, t: jmodel.apply({"params": p}, t, return_pooled=True))(params, tokens)
    assert rel_err(hidden, out.last_hidden_state.numpy()) < RTOL
    assert rel_err(pooled, out.text_embeds.numpy()) < RTOL


def test_hf_bare_text_model_and_errors(hf_model):
    import torch

    transformers = pytest.importorskip("transformers")
    model, config = hf_model
    bare = transformers.CLIPTextModel(transformers.CLIPTextConfig(**config)).eval()
    inner = getattr(bare, "text_model", bare)  # transformers 5 dropped the text_model wrapper
    inner.load_state_dict(model.text_model.state_dict())
    cfg = hf_clip_text_config(dict(config, architectures=["CLIPTextModel"]))
    assert cfg.output_dim == 0
    inner_sd = {k: v.numpy() for k, v in inner.state_dict().items()}
    params = convert_hf_clip_text(inner_sd, cfg)
    assert "text_projection" not in params
    # files saved by transformers 4 (ModelScope's text_encoder/) prefix the keys with "text_model."
    prefixed = {"text_model." + k: v for k, v in inner_sd.items()}
    prefixed["text_model.embeddings.position_ids"] = np.arange(77)[None]
    params2 = convert_hf_clip_text(prefixed, cfg)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)
    tokens = CLIPTokenizer(pad_token_id=49407)(["a red car drives fast"])
    with torch.no_grad():
        want = bare(input_ids=torch.from_numpy(tokens.astype(np.int64))).last_hidden_state.numpy()
    assert rel_err(TextTransformer(cfg).apply({"params": params}, tokens), want) < RTOL
    del prefixed["text_model.encoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(ConversionError, match=r"text_model\.encoder\.layers\.1\.self_attn\.k_proj\.bias"):
        convert_hf_clip_text(prefixed, cfg)


def test_bad_layer_and_tokens(golden):
    cfg, params, _, io = golden
    model = TextTransformer(cfg)
    with pytest.raises(ValueError, match="layer"):
        model.apply({"params": params}, io["token_ids"], layer="middle")
    with pytest.raises(ValueError, match="tokens"):
        model.apply({"params": params}, np.zeros((2, 80), np.int32))
