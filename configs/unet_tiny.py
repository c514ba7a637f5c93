"""The tiny random VideoCrafter2-layout UNet of ../shared/golden/videocrafter2 (README.json "unet")."""
from vstar_jax.configs import unet_videocrafter2


def get_config():
    c = unet_videocrafter2.get_config()
    c.model_channels = 32
    c.channel_mult = (1, 2)
    c.num_res_blocks = 1
    c.attention_resolutions = (2, 1)
    c.num_head_channels = 8
    c.context_dim = 32
    return c
