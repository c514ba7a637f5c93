"""The tiny LDM VAE of the golden vectors (`shared/golden/videocrafter2/README.json`, "vae")."""
import ml_collections

from vstar_jax.configs import vae_videocrafter2


def get_config() -> ml_collections.ConfigDict:
    c = vae_videocrafter2.get_config()
    c.ch = 32
    c.ch_mult = (1, 2)
    c.num_res_blocks = 1
    c.resolution = 32
    return c
