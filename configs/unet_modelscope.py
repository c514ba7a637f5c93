"""ModelScope T2V UNet (diffusers UNet3DConditionModel defaults), 1,411,233,860 parameters."""
from vstar_jax.configs import unet_videocrafter2


def get_config():
    c = unet_videocrafter2.get_config()
    c.layout = "diffusers"
    c.use_linear = False           # Transformer2DModel uses 1x1 conv projections
    c.fps_cond = False
    return c
