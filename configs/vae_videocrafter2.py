"""VideoCrafter2's first-stage VAE (LDM AutoencoderKL, `configs/inference_t2v_512_v2.0.yaml`)."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.in_channels = 3
    c.out_ch = 3
    c.ch = 128
    c.ch_mult = (1, 2, 4, 4)
    c.num_res_blocks = 2
    c.attn_resolutions = ()
    c.resolution = 512
    c.z_channels = 4
    c.double_z = True
    c.embed_dim = 4
    c.norm_num_groups = 32
    c.norm_eps = 1e-6
    c.mid_attention = True
    c.use_quant_conv = True
    c.use_post_quant_conv = True
    c.scale_factor = 0.18215
    return c
