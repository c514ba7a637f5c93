"""VideoCrafter2 T2V UNet (inference_t2v_512_v2.0.yaml), 1,413,284,420 parameters."""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.layout = "lvdm"              # source checkpoint layout (converter key plan)
    c.in_channels = 4
    c.out_channels = 4
    c.model_channels = 320
    c.channel_mult = (1, 2, 4, 4)
    c.num_res_blocks = 2
    c.attention_resolutions = (4, 2, 1)  # downsampling factors with attention
    c.num_head_channels = 64
    c.transformer_depth = 1
    c.context_dim = 1024
    c.use_linear = True            # spatial proj_in/out Linear (else 1x1 conv: same map)
    c.temporal_conv = True
    c.temporal_attention = True
    c.init_attn = True             # `init_attn` after conv_in (Conv1d k=1 projections)
    c.init_attn_heads = 8
    c.fps_cond = True
    c.use_relative_position = False  # lvdm relative-position tables in temporal attention (VideoCrafter1: on)
    c.temporal_length = 16         # their max frame offset, when on
    c.norm_groups = 32
    c.transformer_norm_groups = 32  # spatial/temporal transformer GroupNorm (lvdm: always 32)
    c.dtype = "float32"            # activations / matmuls: float32 | bfloat16 | float16
    c.param_dtype = "float32"
    c.attention_backend = "xla"    # xla | cudnn | auto (TPU: Pallas flash kernel) | pallas
    return c
