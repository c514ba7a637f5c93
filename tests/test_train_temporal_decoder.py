"""launch/train_temporal_decoder.py (issue 28): only the temporal layers train; 2 steps interrupted by
SIGINT and resumed reach the state of 2 uninterrupted steps; a checkpoint without a VAE is one line."""
import signal

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from test_temporal_decoder import micro_config
from launch import train_temporal_decoder as ttd
from vstar_jax.io.checkpoint import load_checkpoint, save_checkpoint
from vstar_jax.models.temporal_decoder import split_temporal, temporal_settings
from vstar_jax.models.vae import vae_param_shapes


@pytest.fixture(scope="module")
def tiny_vae_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ttd")
    cfg = micro_config()
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32),
                                    vae_param_shapes(cfg))
    save_checkpoint(str(d / "vae"), {"vae": params}, {"vae": cfg.to_dict()})
    clips = [np.random.default_rng(i).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8) for i in range(5)]
    return d, clips


def _run(ckpt, out, clips, on_step=None):
    config = ttd.make_config(["train.steps=2", "train.batch=2", "train.lr=0.01", "train.warmup=1",
                              "train.ckpt_every=100", "train.log_every=1"], frames=3, size=8,
                             temporal="conv")  # the conv alone: the cheapest program to compile
    return ttd.train(config, ckpt, out, clips=clips, data={"test": True}, progress=False, on_step=on_step)


def _state(res):
    leaves = jax.tree_util.tree_leaves((res["params"], res["opt_state"]))
    return [np.asarray(x) for x in leaves]


@pytest.mark.slow  # compiles a training step (encoder + temporal decoder + gradient): ~7-14 s on 2 cores
def test_two_steps_interrupted_and_resumed_equal_two_steps(tiny_vae_checkpoint, tmp_path):
    d, clips = tiny_vae_checkpoint
    whole = _run(d / "vae", tmp_path / "whole", clips)
    assert whole["step"] == 2 and not whole["stopped"]
    # only temporal arrays are trained, and they moved off their zero init
    trained = flatten_dict(whole["params"], sep="/")
    assert trained and all("temporal" in k for k in trained)
    assert any(np.abs(np.asarray(v)).max() > 0 for k, v in trained.items() if k.endswith("conv/kernel"))

    first = _run(d / "vae", tmp_path / "split", clips, on_step=lambda s: signal.raise_signal(signal.SIGINT))
    assert first["stopped"] and first["step"] == 1
    resumed = _run(d / "vae", tmp_path / "split", clips)
    assert resumed["step"] == 2 and [r["from_step"] for r in resumed["meta"]["runs"]] == [0, 1]
    for a, b in zip(_state(resumed), _state(whole)):
        np.testing.assert_array_equal(a, b)


def test_export_carries_the_temporal_decoder(tiny_vae_checkpoint, tmp_path):
    """The trainer's model set-up (temporal layers added to the checkpoint's image VAE) and its export."""
    d, _ = tiny_vae_checkpoint
    cfg_src, params_src = ttd.load_vae(d / "vae")
    cfg, frozen, temporal = ttd.temporal_vae(cfg_src, params_src, "conv", seed=0)
    trained = jax.tree_util.tree_map(lambda v: np.asarray(v) + np.float32(0.25), temporal)  # as if trained
    res = {"config": cfg, "params": trained}
    out = tmp_path / "exported"
    ttd.export_checkpoint(d / "vae", out, cfg, {**frozen, **flatten_dict(trained, sep="/")}, {"step": 2})
    params, cfg = load_checkpoint(str(out))
    assert temporal_settings(cfg["vae"]).conv and not temporal_settings(cfg["vae"]).attention
    src, _ = load_checkpoint(str(d / "vae"))
    image, temporal = split_temporal(params["vae"])
    for k, v in flatten_dict(src["vae"], sep="/").items():  # the image VAE is unchanged
        np.testing.assert_array_equal(np.asarray(image[k]), np.asarray(v))
    for k, v in flatten_dict(res["params"], sep="/").items():
        np.testing.assert_array_equal(np.asarray(temporal[k]), np.asarray(v))


def test_bad_input_checkpoint_without_vae(tiny_vae_checkpoint, tmp_path, capsys):
    d, _ = tiny_vae_checkpoint
    params, _ = load_checkpoint(str(d / "vae"))
    save_checkpoint(str(tmp_path / "novae"), {"text": {"w": np.zeros(2, np.float32)}}, {"text": {"width": 2}})
    rc = ttd.main(["--checkpoint", str(tmp_path / "novae"), "--videos", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: checkpoint") and "has no VAE" in err and err.count("\n") == 1
    rc = ttd.main(["--checkpoint", str(d / "vae"), "--videos", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
