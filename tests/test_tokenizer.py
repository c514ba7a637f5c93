"""CLIP BPE tokenizer: golden open_clip ids, truncation warning, transformers CLIPTokenizer parity."""
import json
import warnings

import numpy as np
import pytest

from conftest import load_golden
from vstar_jax.models.tokenizer import (
    CLIPTokenizer,
    clean_text,
    get_tokenizer,
    pad_token_id_from_hf,
    tokenize,
)


def _golden_prompts(golden_dir):
    return json.loads((golden_dir / "openclip" / "README.json").read_text())["prompts"]


def test_golden_token_ids_every_prompt(golden_dir):
    prompts = _golden_prompts(golden_dir)
    want = load_golden("openclip/text_tiny_io.safetensors")["token_ids"]
    assert len(prompts) == want.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = tokenize(prompts)
    assert got.shape == (len(prompts), 77) and got.dtype == np.int32
    for i, prompt in enumerate(prompts):
        np.testing.assert_array_equal(got[i], want[i], err_msg=f"prompt {i}: {prompt[:40]!r}")


def test_special_ids_and_padding():
    tok = get_tokenizer()
    ids = tok(["", "a cat"])
    assert tok.sot_token_id == 49406 and tok.eot_token_id == 49407 and tok.vocab_size == 49408
    np.testing.assert_array_equal(ids[0, :3], [49406, 49407, 0])
    assert (ids[0, 2:] == 0).all() and (ids[1, 4:] == 0).all()
    assert tok.decode(ids[1]) == "a cat"
    eot_pad = CLIPTokenizer(pad_token_id=49407)(["a cat"])
    np.testing.assert_array_equal(eot_pad[0, :3], ids[1, :3])
    assert (eot_pad[0, 3:] == 49407).all()


def test_truncation_warns_with_dropped_count():
    prompt = " ".join(["red"] * 100)  # "red" is one token: 102 ids with sot/eot
    with pytest.warns(UserWarning, match=r"25 token\(s\) dropped"):
        ids = tokenize([prompt])
    assert ids[0, 0] == 49406 and ids[0, 76] == 49407
    assert (ids[0, 1:76] == ids[0, 1]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exactly 77 ids: no warning
        ids = tokenize([" ".join(["red"] * 75)])
    assert ids[0, 76] == 49407


def test_cleanup():
    assert clean_text("  A Red Car \n drives FAST!! ") == "a red car drives fast!!"
    assert clean_text("caf&amp;amp;e") == "caf&e"  # html unescaped twice


def test_bad_inputs():
    with pytest.raises(ValueError, match="pad_token_id"):
        CLIPTokenizer(pad_token_id=50000)
    with pytest.raises(ValueError, match="prompt 1"):
        tokenize(["ok", 3])


@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory):
    tok = get_tokenizer()
    d = tmp_path_factory.mktemp("hf_clip_tok")
    (d / "vocab.json").write_text(json.dumps(tok.hf_vocab()))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(tok.hf_merges()) + "\n")
    return d


def test_matches_transformers_clip_tokenizer(hf_tokenizer_dir, golden_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.CLIPTokenizer(
        str(hf_tokenizer_dir / "vocab.json"), str(hf_tokenizer_dir / "merges.txt"), pad_token="<|endoftext|>"
    )
    assert hf.pad_token_id == 49407
    # transformers' CLIPTokenizer does no ftfy/html cleanup: feed it the cleaned text.
    prompts = _golden_prompts(golden_dir) + ["Astronaut riding a horse, 4K, ultra-detailed; 1,234 stars?"]
    want = hf([clean_text(p) for p in prompts], padding="max_length", max_length=77, truncation=True,
              return_tensors="np").input_ids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = CLIPTokenizer(pad_token_id=49407)(prompts)
    np.testing.assert_array_equal(got, want)
    # and with zero padding, identical up to the padding value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zero = tokenize(prompts)
    np.testing.assert_array_equal(np.where(zero == 0, 49407, zero)[:, 1:], want[:, 1:])


def test_pad_token_id_from_hf(hf_tokenizer_dir, tmp_path):
    assert pad_token_id_from_hf(hf_tokenizer_dir) == 49407  # no pad named: end token
    d = tmp_path / "tok"
    d.mkdir()
    (d / "vocab.json").write_text((hf_tokenizer_dir / "vocab.json").read_text())
    (d / "special_tokens_map.json").write_text(json.dumps({"pad_token": "!"}))
    assert pad_token_id_from_hf(d) == 0
    (d / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "<|endoftext|>"}}))
    assert pad_token_id_from_hf(d) == 49407
