"""Hostile inputs found at run time (issue 22): a sampled latent that goes non-finite stops the run with
one line naming the first DDIM step whose UNet output was not finite, and nothing is written (before,
NaN latents decoded to black frames and exit 0)."""
import numpy as np
import pytest

from hostile import assert_one_line_refusal, run_cli, snapshot

pytestmark = pytest.mark.filterwarnings("ignore:os.fork")


def _nan_checkpoint(path):
    """The tiny random checkpoint with a NaN in the UNet's output bias (as a corrupted weight would be)."""
    from tiny_checkpoint import tiny_configs, tiny_params
    from vstar_jax.io.checkpoint import save_checkpoint

    configs = tiny_configs(8)
    params = tiny_params(configs, 0)
    bias = np.array(params["unet"]["conv_out"]["bias"])
    bias[0] = np.nan
    params["unet"]["conv_out"]["bias"] = bias
    return save_checkpoint(str(path), params, dict(configs, source={"layout": "tiny-random", "seed": 0}))


@pytest.mark.slow  # one compile of the tiny UNet (~30 s on a loaded CPU)
def test_non_finite_latents_stop_with_the_step_named(tmp_path):
    ckpt = _nan_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("kept")
    before = snapshot(out)
    r = run_cli(["generate", "a red ball", "--checkpoint", ckpt, "--frames", "4", "--steps", "2",
                 "--out", out / "clip.mp4"], cwd=tmp_path, timeout=600)
    line = assert_one_line_refusal(r, "went non-finite (NaN or inf) at DDIM step 0 of 2", code=2)
    assert "no video written" in line
    assert snapshot(out) == before
