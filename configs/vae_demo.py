"""The demo world's small VAE: VideoCrafter2's first-stage architecture (LDM AutoencoderKL, vae_videocrafter2)
at demo scale -- x4 spatial factor (32x32 frames -> 4 x 8 x 8 latents), 32/64/64 channels, one ResNet block
per level, the mid attention kept. Trained by launch/train_demo_vae.py (docs/vidrd-decoder.md)."""
import ml_collections

from vstar_jax.configs import vae_videocrafter2


def get_config() -> ml_collections.ConfigDict:
    c = vae_videocrafter2.get_config()
    c.ch = 32
    c.ch_mult = (1, 2, 2)
    c.num_res_blocks = 1
    c.resolution = 32
    return c
