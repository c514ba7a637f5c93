"""``demo_vc``: the demo model with a trained length (issue 26; docs/demo-model.md).

The default demo model (configs/demo_tiny.py) feeds its per-frame displacement code a *normalised*
clock, t = i / (f - 1): at any length it replays one whole trained motion, so it cannot show VSTAR's
failure (videos longer than the trained clips turn quasi-static). ``demo_vc`` reads an absolute frame
index clipped at the trained length instead (``unet.frame_clock = "clipped"``, t = min(i, 7) / 7), as a
model that knows only the clip length it was trained on: past frame 8 every frame reads the end of the
motion, and the temporal attention (relative positions, offsets clipped at 7) is all that can carry
motion further.

On 8-frame clips the clipped clock is the same function as the normalised one, so training this config
on the default's 8-frame clips is the default's training objective. The shipped ``demo_vc`` is the
default model's run (6000 steps, single-state clips) exported under this config, by the trainer:

    python launch/train_demo.py --config demo_vc --out ckpt/demo_vc --init-from vstar_jax/assets/demo_model \\
        --steps 0 --export vstar_jax/assets/demo_vc

(``--steps 6000`` without ``--init-from`` trains one from scratch.) Weights ship in float16
(``export_dtype``): with the default model's float32 weights and StreamingT2V modules the package stays
within 30 MB. Tries of other settings and their numbers: benchmarks/RESULTS.md, "demo_vc".
"""
import ml_collections

from vstar_jax.configs import demo_tiny


def get_config() -> ml_collections.ConfigDict:
    c = demo_tiny.get_config()
    c.name = "demo_vc"
    c.unet.frame_clock = "clipped"    # t = min(i, trained_frames - 1) / (trained_frames - 1)
    c.unet.trained_frames = c.frames  # 8
    c.export_dtype = "float16"
    return c
