"""``demo_vc``: the demo model with a trained length (issue 26; docs/demo-model.md).

The default demo model (configs/demo_tiny.py) feeds its per-frame displacement code a *normalised*
clock, t = i / (f - 1): at any length it replays one whole trained motion, so it cannot show VSTAR's
failure (videos longer than the trained clips turn quasi-static). ``demo_vc`` reads an absolute frame
index clipped at the trained length instead (``unet.frame_clock = "clipped"``, t = min(i, 7) / 7), like a
model that knows only the clip lengths it was trained on: at 8 frames it is the same function as the
default's clock, past frame 8 every frame reads the end of the motion.

Trained from the shipped default model (``--init-from``), on the full clip mix (single-state moves and
grow/shrink, and multi-state clips with moves, size and colour changes), with a lower learning rate:

    python launch/train_demo.py --config demo_vc --out ckpt/demo_vc --init-from vstar_jax/assets/demo_model
    python launch/train_demo.py --config demo_vc --out ckpt/demo_vc --export vstar_jax/assets/demo_vc --export-only

Weights ship in float16 (``export_dtype``): with the default model's float32 weights and StreamingT2V
modules the package stays within 30 MB.
"""
import ml_collections

from vstar_jax.configs import demo_tiny


def get_config() -> ml_collections.ConfigDict:
    c = demo_tiny.get_config()
    c.name = "demo_vc"
    c.unet.frame_clock = "clipped"   # t = min(i, trained_frames - 1) / (trained_frames - 1)
    c.unet.trained_frames = c.frames  # 8
    c.export_dtype = "float16"
    tr = c.train
    tr.kind = "any"                  # world mix: 50% moves, 15% grow/shrink, 35% two- or three-state clips
    tr.steps = 1500
    tr.lr = 3e-4                     # a fine-tune of the default model, not a run from scratch
    tr.warmup = 50
    tr.data_seed = 1                 # other clips than the default model's run
    return c
