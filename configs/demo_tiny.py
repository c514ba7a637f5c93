"""The embedded demo model: a tiny UNet3D + CLIP-style text encoder trained from scratch
on the procedural world (`vstar_jax/demo/world.py`) by `launch/train_demo.py`.

Same architecture family as VideoCrafter2 (configs/unet_videocrafter2.py, configs/text_openclip_h14.py):
the project's UNet3D and TextTransformer with small sizes and the real CLIP tokenizer (vocab 49408).
Latent space: a fixed, lossless "patch" autoencoder (no training): x = 2 * rgb - 1 cut into
patch x patch tiles stacked on channels, so a 12x12 RGB frame is a 4x4x27 latent
(`vstar_jax/demo/model.py: patchify / unpatchify`). On these CPUs the UNet's cost follows the
number of latent positions: 4x4 latents train ~3.5x faster than 8x8 (0.7 vs 2.4 s/step at batch 16).
The shipped model is one run of this config from scratch: `python launch/train_demo.py --out DIR
--steps 6000` (6000 steps, 64 min on 2 CPU cores; benchmarks/RESULTS.md, where the earlier chain of
runs that found each setting is recorded).
Latent channels must stay well below model_channels: an eps-predictor has to carry the input noise
through conv_in, GroupNorm+SiLU and conv_out (48 latent channels with 32 model channels did not
learn; 27 with 32 trained to loss 0.2 but sampled noise; 27 with 64 is this config).
"""
import ml_collections

from vstar_jax.configs import text_openclip_h14, unet_tiny


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "demo_tiny"
    c.space = "patch"            # latent = patchify(2 * rgb - 1); decode = unpatchify, clip, uint8
    c.frames = 8                 # trained clip length
    c.size = 12                  # frame height = width (pixels)
    c.patch = 3                  # latent: (3 * patch**2, frames, size // patch, size // patch)
    c.display_scale = 8          # decode() upsamples (nearest) for viewing: 96x96 videos

    u = unet_tiny.get_config()
    u.layout = "demo"
    u.in_channels = 27           # 3 * patch**2 (< model_channels)
    u.out_channels = 27
    u.model_channels = 64        # >> latent channels: the eps output must carry the input noise through
    u.channel_mult = (1, 1)      # latent 4x4 -> 2x2 (transformer GroupNorms need channels % 32 == 0)
    u.num_res_blocks = 1
    u.attention_resolutions = (1, 2)
    u.num_head_channels = 16
    u.context_dim = 64
    u.init_attn = True
    u.init_attn_heads = 2
    u.fps_cond = False
    # lvdm's relative position in the temporal attention (VideoCrafter1 has it; VideoCrafter2 does not):
    # tells the attention which frame comes first. Without it this model drew moves along the right
    # axis but forwards or backwards at random (18% right, 28% reversed over 50 prompts). Offsets are
    # clipped at frames - 1 = 7, so longer videos reuse the trained rows.
    u.use_relative_position = True
    u.temporal_length = 7
    u.frame_position = False     # UNet3D option outside VideoCrafter2: normalised frame-position embedding
                                 # (600 steps with it on did not change the direction probe; off when shipped)
    u.text_frame_cond = True     # UNet3D option outside VideoCrafter2: MLP(mean text feature, frame position)
                                 # added to the ResBlocks' embedding (demo_options.TextFrameEmbed); without it the
                                 # model never bound direction words to the layout (10% over 50 prompts)
    u.frame_clock = "normalised"  # the clock those options read (demo_options.frame_clock): t = i / (f - 1), so
                                  # any length replays the trained motion once; demo_vc clips it instead
    u.trained_frames = 0          # the clipped clock's length (unused by "normalised")
    u.norm_groups = 8
    c.unet = u

    t = text_openclip_h14.get_config()
    t.width = 64
    t.heads = 4
    t.layers = 2
    t.mlp_dim = 256
    t.output_dim = 0
    t.layer = "last"
    c.text = t

    d = ml_collections.ConfigDict()
    d.linear_start = 0.00085     # VideoCrafter2's sqrt-linear betas (schedules.make_alphas_cumprod)
    d.linear_end = 0.012
    d.num_timesteps = 1000
    d.prediction = "v"           # v-prediction (vstar_jax.diffusion.parameterization): the coarse layout
                                 # (where the object goes) forms at high noise, where v ~ -x0 is a direct target
    d.use_scale = False          # no VideoCrafter2 latent rescaling here
    d.clip_x0 = False            # demo sampler option (vstar_jax.demo.model.sample_batch); off = pipeline's DDIM
    d.cfg = 5.0                  # sampling defaults for this model
    d.steps = 25
    d.eta = 1.0
    d.sdedit_strength = 0.3      # `vstar-jax enhance`'s default strength with this model as its refiner (issue
                                 # 27): at the reference's 0.6, chunked SDEdit at 12x12 turns 13-17% of moves by
                                 # more than 45 degrees, at 0.3 none (benchmarks/RESULTS.md)
    c.diffusion = d

    tr = ml_collections.ConfigDict()
    tr.batch = 16
    tr.steps = 6000
    tr.lr = 1e-3
    tr.warmup = 150
    tr.weight_decay = 0.01
    tr.clip = 1.0
    tr.min_snr = 0.0             # Min-SNR-gamma loss weighting (0 = plain MSE). Off: with v-prediction it
                                 # weights the noisiest steps by ~snr, and there the caption alone decides
                                 # the motion; with it on the model ignored direction words entirely
    tr.fg_weight = 4.0           # loss weight 1 + fg_weight on the pixels the object's path crosses: the
                                 # object is ~6% of the frame, so its motion barely moved a plain MSE
    tr.high_noise_frac = 0.5     # share of each batch with t drawn from the noisier half (train_demo.sample_timesteps)
    tr.ema = 0.999               # exported weights: EMA of the params (0 = last step)
    tr.uncond_prob = 0.1         # caption dropped ("" prompt) for classifier-free guidance
    tr.data_seed = 0
    tr.init_seed = 0
    tr.kind = "single"           # world clip mix (see world.KINDS): single-state clips (75% moves, 25%
                                 # grow/shrink); multi-state prompts are VSP's job (one state per frame)
    tr.ckpt_every = 200
    tr.log_every = 20
    c.train = tr
    return c
