"""MS-Vid2Vid-XL UNet (StreamingT2V's refiner, ``Vid2VidSDUNet()`` with its defaults), 1,411,233,860
parameters (counted on this config with ``jax.eval_shape``; 1,480 weight tensors in its key map).

Picsart-AI-Research/StreamingT2V, branch StreamingModelscope,
``t2v_enhanced/thirdparty/modelscope/models/multi_modal/video_to_video/modules/unet_v2v.py``
(``Vid2VidSDUNet.__init__``): dim 320, dim_mult [1, 2, 4, 4], 2 res blocks, attention at scales 1, 1/2, 1/4,
head width 64, context 1024, a temporal transformer after the input conv (8 heads of 64), temporal convs
and temporal transformers (Conv1d projections) everywhere, linear spatial projections; its Downsample
convs pad (2, 1) and its Upsample crops one row top and bottom. The same blocks and key names as
VideoCrafter2's lvdm UNet, so this is that config with the differences set.
"""
from vstar_jax.configs import unet_videocrafter2


def get_config():
    c = unet_videocrafter2.get_config()
    c.layout = "msvid2vid"
    c.fps_cond = False             # Vid2VidSDUNet(use_fps_condition=False)
    c.downsample_padding = (2, 1)  # Downsample(padding=(2, 1))
    c.upsample_crop = 1            # Upsample: interpolate x2, then x[..., 1:-1, :]
    return c
