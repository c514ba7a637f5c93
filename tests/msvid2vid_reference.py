"""MS-Vid2Vid-XL's UNet (``Vid2VidSDUNet``) transcribed in torch, for the converter's parity test.

Written from the reference, not from ``vstar_jax``: Picsart-AI-Research/StreamingT2V, branch
StreamingModelscope (commit a8aceea), file
``t2v_enhanced/thirdparty/modelscope/models/multi_modal/video_to_video/modules/unet_v2v.py``; the lines
transcribed are cited at each piece. Only what ``Vid2VidSDUNet`` builds with ``USE_TEMPORAL_TRANSFORMER``
(the file's setting, line 16), ``temporal_attention=True`` and ``use_fps_condition=False`` (its defaults)
is here; branches that path never takes are left out and named where they were (``DropPath``,
``RelativePositionBias``, ``CrossAttention``, ``ResidualBlock``, ``AttentionBlock``, the temporal
attention blocks and the other temporal convs are never built; the ``use_linear`` branch of
``TemporalTransformer``, which reads an attribute it never sets, is never taken).

The reference imports three packages at its top (lines 10-14) that are not installed here (xformers has
no CPU build for this torch). The module keeps those imports; :func:`install_stand_ins` puts small
modules under their names in ``sys.modules`` first, each replacing only what this path calls:

* ``xformers.ops.memory_efficient_attention(q, k, v, attn_bias=None, op=None)``: plain softmax
  attention, softmax(q k^T / sqrt(d)) v on (batch, tokens, d) (xformers' default scale), the function
  the memory-efficient kernel computes (in tiles; the same value up to float rounding);
* ``fairscale.nn.checkpoint.checkpoint_wrapper(module)``: returns the module; activation checkpointing
  only re-runs the forward in the backward pass, and the test runs no backward;
* ``rotary_embedding_torch.RotaryEmbedding``: only built when ``USE_TEMPORAL_TRANSFORMER`` is False
  (line 1185), so the stand-in refuses to be built.
"""
from __future__ import annotations

import math
import sys
import types


def install_stand_ins() -> None:
    """Put the three stand-in modules in ``sys.modules`` (where the real ones are absent)."""
    import torch

    def memory_efficient_attention(q, k, v, attn_bias=None, op=None):
        if attn_bias is not None:
            raise NotImplementedError("stand-in: attn_bias is not on the path under test")
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        return weights @ v

    class RotaryEmbedding:  # noqa: D401
        def __init__(self, *args, **kwargs):
            raise RuntimeError("stand-in: RotaryEmbedding is only built without USE_TEMPORAL_TRANSFORMER")

    mods = {}
    mods["xformers"] = types.ModuleType("xformers")
    mods["xformers.ops"] = types.ModuleType("xformers.ops")
    mods["xformers.ops"].memory_efficient_attention = memory_efficient_attention
    mods["xformers"].ops = mods["xformers.ops"]
    mods["fairscale"] = types.ModuleType("fairscale")
    mods["fairscale.nn"] = types.ModuleType("fairscale.nn")
    mods["fairscale.nn.checkpoint"] = types.ModuleType("fairscale.nn.checkpoint")
    mods["fairscale.nn.checkpoint"].checkpoint_wrapper = lambda module, *a, **k: module
    mods["fairscale"].nn, mods["fairscale.nn"].checkpoint = mods["fairscale.nn"], mods["fairscale.nn.checkpoint"]
    mods["rotary_embedding_torch"] = types.ModuleType("rotary_embedding_torch")
    mods["rotary_embedding_torch"].RotaryEmbedding = RotaryEmbedding
    for name, mod in mods.items():
        sys.modules.setdefault(name, mod)


def build(name: str = "Vid2VidSDUNet", **kwargs):
    """``name(**kwargs)`` (a module of the transcription below: ``Vid2VidSDUNet``, ``Upsample``,
    ``Downsample``), in eval mode."""
    install_stand_ins()
    return _classes()[name](**kwargs).eval()


def _classes() -> dict:
    # the reference's imports (lines 4-14), resolved once the stand-ins are installed
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import xformers
    import xformers.ops
    from einops import rearrange
    from fairscale.nn.checkpoint import checkpoint_wrapper
    from rotary_embedding_torch import RotaryEmbedding

    USE_TEMPORAL_TRANSFORMER = True  # line 16

    def sinusoidal_embedding(timesteps, dim):  # lines 61-73
        half = dim // 2
        timesteps = timesteps.float()
        sinusoid = torch.outer(timesteps, torch.pow(10000, -torch.arange(half).to(timesteps).div(half)))
        x = torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)
        if dim % 2 != 0:
            x = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
        return x

    def exists(x):  # lines 76-77
        return x is not None

    def default(val, d):  # lines 80-83
        if exists(val):
            return val
        return d() if callable(d) else d

    def prob_mask_like(shape, prob, device):  # lines 86-96 (prob 0 at inference)
        if prob == 1:
            return torch.ones(shape, device=device, dtype=torch.bool)
        if prob == 0:
            return torch.zeros(shape, device=device, dtype=torch.bool)
        mask = torch.zeros(shape, device=device).float().uniform_(0, 1) < prob
        if mask.all():
            mask[0] = False
        return mask

    class MemoryEfficientCrossAttention(nn.Module):  # lines 99-160
        def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, max_bs=16384, dropout=0.0):
            super().__init__()
            inner_dim = dim_head * heads
            context_dim = default(context_dim, query_dim)
            self.max_bs, self.heads, self.dim_head = max_bs, heads, dim_head
            self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
            self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
            self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
            self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
            self.attention_op = None

        def forward(self, x, context=None, mask=None):
            q = self.to_q(x)
            context = default(context, x)
            k, v = self.to_k(context), self.to_v(context)
            b, _, _ = q.shape
            q, k, v = map(lambda t: t.unsqueeze(3).reshape(b, t.shape[1], self.heads, self.dim_head)
                          .permute(0, 2, 1, 3).reshape(b * self.heads, t.shape[1], self.dim_head).contiguous(),
                          (q, k, v))
            if q.shape[0] > self.max_bs:
                outs = [xformers.ops.memory_efficient_attention(q1, k1, v1, attn_bias=None, op=self.attention_op)
                        for q1, k1, v1 in zip(torch.chunk(q, q.shape[0] // self.max_bs, dim=0),
                                              torch.chunk(k, k.shape[0] // self.max_bs, dim=0),
                                              torch.chunk(v, v.shape[0] // self.max_bs, dim=0))]
                out = torch.cat(outs, dim=0)
            else:
                out = xformers.ops.memory_efficient_attention(q, k, v, attn_bias=None, op=self.attention_op)
            if exists(mask):
                raise NotImplementedError
            out = (out.unsqueeze(0).reshape(b, self.heads, out.shape[1], self.dim_head).permute(0, 2, 1, 3)
                   .reshape(b, out.shape[1], self.heads * self.dim_head))
            return self.to_out(out)

    class SpatialTransformer(nn.Module):  # lines 207-278
        def __init__(self, in_channels, n_heads, d_head, depth=1, dropout=0., context_dim=None,
                     disable_self_attn=False, use_linear=False, use_checkpoint=True):
            super().__init__()
            if exists(context_dim) and not isinstance(context_dim, list):
                context_dim = [context_dim]
            self.in_channels = in_channels
            inner_dim = n_heads * d_head
            self.norm = torch.nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)
            if not use_linear:
                self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
            else:
                self.proj_in = nn.Linear(in_channels, inner_dim)
            self.transformer_blocks = nn.ModuleList([
                BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim[d],
                                      disable_self_attn=disable_self_attn, checkpoint=use_checkpoint)
                for d in range(depth)])
            if not use_linear:
                self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1, stride=1, padding=0))
            else:
                self.proj_out = zero_module(nn.Linear(in_channels, inner_dim))  # sic (in == inner here)
            self.use_linear = use_linear

        def forward(self, x, context=None):
            if not isinstance(context, list):
                context = [context]
            b, c, h, w = x.shape
            x_in = x
            x = self.norm(x)
            if not self.use_linear:
                x = self.proj_in(x)
            x = rearrange(x, 'b c h w -> b (h w) c').contiguous()
            if self.use_linear:
                x = self.proj_in(x)
            for i, block in enumerate(self.transformer_blocks):
                x = block(x, context=context[i])
            if self.use_linear:
                x = self.proj_out(x)
            x = rearrange(x, 'b (h w) c -> b c h w', h=h, w=w).contiguous()
            if not self.use_linear:
                x = self.proj_out(x)
            return x + x_in

    class BasicTransformerBlock(nn.Module):  # lines 341-383
        def __init__(self, dim, n_heads, d_head, dropout=0., context_dim=None, gated_ff=True, checkpoint=True,
                     disable_self_attn=False):
            super().__init__()
            attn_cls = MemoryEfficientCrossAttention
            self.disable_self_attn = disable_self_attn
            self.attn1 = attn_cls(query_dim=dim, heads=n_heads, dim_head=d_head, dropout=dropout,
                                  context_dim=context_dim if self.disable_self_attn else None)
            self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
            self.attn2 = attn_cls(query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head,
                                  dropout=dropout)
            self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.checkpoint = checkpoint

        def forward(self, x, context=None):
            x = self.attn1(self.norm1(x), context=context if self.disable_self_attn else None) + x
            x = self.attn2(self.norm2(x), context=context) + x
            x = self.ff(self.norm3(x)) + x
            return x

    class GEGLU(nn.Module):  # lines 387-395
        def __init__(self, dim_in, dim_out):
            super().__init__()
            self.proj = nn.Linear(dim_in, dim_out * 2)

        def forward(self, x):
            x, gate = self.proj(x).chunk(2, dim=-1)
            return x * F.gelu(gate)

    def zero_module(module):  # lines 398-404
        for p in module.parameters():
            p.detach().zero_()
        return module

    class FeedForward(nn.Module):  # lines 407-420
        def __init__(self, dim, dim_out=None, mult=4, glu=False, dropout=0.):
            super().__init__()
            inner_dim = int(dim * mult)
            dim_out = default(dim_out, dim)
            project_in = nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU()) if not glu else GEGLU(dim, inner_dim)
            self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, dim_out))

        def forward(self, x):
            return self.net(x)

    class Upsample(nn.Module):  # lines 423-458
        def __init__(self, channels, use_conv, dims=2, out_channels=None, padding=1):
            super().__init__()
            self.channels = channels
            self.out_channels = out_channels or channels
            self.use_conv = use_conv
            self.dims = dims
            if use_conv:
                self.conv = nn.Conv2d(self.channels, self.out_channels, 3, padding=padding)

        def forward(self, x):
            assert x.shape[1] == self.channels
            if self.dims == 3:
                x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode='nearest')
            else:
                x = F.interpolate(x, scale_factor=2, mode='nearest')
                x = x[..., 1:-1, :]
            if self.use_conv:
                x = self.conv(x)
            return x

    class ResBlock(nn.Module):  # lines 461-583 (up / down resampling and use_conv skips never built)
        def __init__(self, channels, emb_channels, dropout, out_channels=None, use_conv=False,
                     use_scale_shift_norm=False, dims=2, up=False, down=False, use_temporal_conv=True,
                     use_image_dataset=False):
            super().__init__()
            assert not (up or down or use_conv or use_scale_shift_norm)
            self.channels, self.emb_channels, self.dropout = channels, emb_channels, dropout
            self.out_channels = out_channels or channels
            self.use_scale_shift_norm = use_scale_shift_norm
            self.use_temporal_conv = use_temporal_conv
            self.in_layers = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(),
                                           nn.Conv2d(channels, self.out_channels, 3, padding=1))
            self.updown = False
            self.h_upd = self.x_upd = nn.Identity()
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, self.out_channels))
            self.out_layers = nn.Sequential(
                nn.GroupNorm(32, self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)))
            if self.out_channels == channels:
                self.skip_connection = nn.Identity()
            else:
                self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)
            if self.use_temporal_conv:
                self.temopral_conv = TemporalConvBlock_v2(self.out_channels, self.out_channels, dropout=0.1,
                                                          use_image_dataset=use_image_dataset)

        def forward(self, x, emb, batch_size):
            h = self.in_layers(x)
            emb_out = self.emb_layers(emb).type(h.dtype)
            while len(emb_out.shape) < len(h.shape):
                emb_out = emb_out[..., None]
            h = h + emb_out
            h = self.out_layers(h)
            h = self.skip_connection(x) + h
            if self.use_temporal_conv:
                h = rearrange(h, '(b f) c h w -> b c f h w', b=batch_size)
                h = self.temopral_conv(h)
                h = rearrange(h, 'b c f h w -> (b f) c h w')
            return h

    class Downsample(nn.Module):  # lines 586-620 (the avg-pool branch, use_conv False, never built)
        def __init__(self, channels, use_conv, dims=2, out_channels=None, padding=(2, 1)):
            super().__init__()
            assert use_conv
            self.channels = channels
            self.out_channels = out_channels or channels
            self.use_conv, self.dims = use_conv, dims
            stride = 2 if dims != 3 else (1, 2, 2)
            self.op = nn.Conv2d(self.channels, self.out_channels, 3, stride=stride, padding=padding)

        def forward(self, x):
            assert x.shape[1] == self.channels
            return self.op(x)

    class TemporalTransformer(nn.Module):  # lines 861-974 (use_linear=False, only_self_att=True: its path)
        def __init__(self, in_channels, n_heads, d_head, depth=1, dropout=0., context_dim=None,
                     disable_self_attn=False, use_linear=False, use_checkpoint=True, only_self_att=True,
                     multiply_zero=False):
            super().__init__()
            assert not use_linear and only_self_att
            self.multiply_zero, self.only_self_att, self.use_adaptor = multiply_zero, only_self_att, False
            context_dim = [None]
            self.in_channels = in_channels
            inner_dim = n_heads * d_head
            self.norm = torch.nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)
            self.proj_in = nn.Conv1d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
            self.transformer_blocks = nn.ModuleList([
                BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim[d],
                                      checkpoint=use_checkpoint) for d in range(depth)])
            self.proj_out = zero_module(nn.Conv1d(inner_dim, in_channels, kernel_size=1, stride=1, padding=0))
            self.use_linear = use_linear

        def forward(self, x, context=None):
            b, c, f, h, w = x.shape
            x_in = x
            x = self.norm(x)
            x = rearrange(x, 'b c f h w -> (b h w) c f').contiguous()
            x = self.proj_in(x)
            x = rearrange(x, 'bhw c f -> bhw f c').contiguous()
            for block in self.transformer_blocks:
                x = block(x)
            x = rearrange(x, '(b hw) f c -> b hw f c', b=b).contiguous()
            x = rearrange(x, 'b hw f c -> (b hw) c f').contiguous()
            x = self.proj_out(x)
            x = rearrange(x, '(b h w) c f -> b c f h w', b=b, h=h, w=w).contiguous()
            if self.multiply_zero:
                return 0.0 * x + x_in
            return x + x_in

    class TemporalConvBlock_v2(nn.Module):  # lines 1076-1119
        def __init__(self, in_dim, out_dim=None, dropout=0.0, use_image_dataset=False):
            super().__init__()
            out_dim = in_dim if out_dim is None else out_dim
            self.in_dim, self.out_dim, self.use_image_dataset = in_dim, out_dim, use_image_dataset
            self.conv1 = nn.Sequential(nn.GroupNorm(32, in_dim), nn.SiLU(),
                                       nn.Conv3d(in_dim, out_dim, (3, 1, 1), padding=(1, 0, 0)))
            for name in ("conv2", "conv3", "conv4"):
                setattr(self, name, nn.Sequential(nn.GroupNorm(32, out_dim), nn.SiLU(), nn.Dropout(dropout),
                                                  nn.Conv3d(out_dim, in_dim, (3, 1, 1), padding=(1, 0, 0))))
            nn.init.zeros_(self.conv4[-1].weight)
            nn.init.zeros_(self.conv4[-1].bias)

        def forward(self, x):
            identity = x
            x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
            return identity + 0.0 * x if self.use_image_dataset else identity + x

    class Vid2VidSDUNet(nn.Module):  # lines 1122-1543
        def __init__(self, in_dim=4, dim=320, y_dim=1024, context_dim=1024, out_dim=4, dim_mult=[1, 2, 4, 4],
                     num_heads=8, head_dim=64, num_res_blocks=2, attn_scales=[1 / 1, 1 / 2, 1 / 4],
                     use_scale_shift_norm=True, dropout=0.1, temporal_attn_times=1, temporal_attention=True,
                     use_checkpoint=True, use_image_dataset=False, use_fps_condition=False, use_sim_mask=False,
                     training=False, inpainting=True):
            embed_dim = dim * 4
            num_heads = num_heads if num_heads else dim // 32
            super().__init__()
            assert temporal_attention and USE_TEMPORAL_TRANSFORMER and not use_fps_condition
            self.in_dim, self.dim, self.y_dim, self.context_dim = in_dim, dim, y_dim, context_dim
            self.embed_dim, self.out_dim, self.dim_mult = embed_dim, out_dim, dim_mult
            self.num_heads, self.head_dim, self.num_res_blocks = num_heads, head_dim, num_res_blocks
            self.attn_scales = attn_scales
            self.temporal_attention, self.use_checkpoint = temporal_attention, use_checkpoint
            self.use_image_dataset = use_image_dataset
            use_linear_in_temporal, transformer_depth, disabled_sa = False, 1, False
            enc_dims = [dim * u for u in [1] + dim_mult]
            dec_dims = [dim * u for u in [dim_mult[-1]] + dim_mult[::-1]]
            shortcut_dims = []
            scale = 1.0
            self.time_embed = nn.Sequential(nn.Linear(dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

            def temporal(width, heads):
                return TemporalTransformer(width, heads, head_dim, depth=transformer_depth, context_dim=context_dim,
                                           disable_self_attn=disabled_sa, use_linear=use_linear_in_temporal,
                                           multiply_zero=use_image_dataset)

            def spatial(width, ctx):
                return SpatialTransformer(width, width // head_dim, head_dim, depth=1, context_dim=ctx,
                                          disable_self_attn=False, use_linear=True)

            # encoder (lines 1197-1279)
            self.input_blocks = nn.ModuleList()
            init_block = nn.ModuleList([nn.Conv2d(self.in_dim, dim, 3, padding=1)])
            init_block.append(temporal(dim, num_heads))
            self.input_blocks.append(init_block)
            shortcut_dims.append(dim)
            for i, (in_dim, out_dim) in enumerate(zip(enc_dims[:-1], enc_dims[1:])):
                for j in range(num_res_blocks):
                    block = nn.ModuleList([ResBlock(in_dim, embed_dim, dropout, out_channels=out_dim,
                                                    use_scale_shift_norm=False, use_image_dataset=use_image_dataset)])
                    if scale in attn_scales:
                        block.append(spatial(out_dim, self.context_dim))
                        block.append(temporal(out_dim, out_dim // head_dim))
                    in_dim = out_dim
                    self.input_blocks.append(block)
                    shortcut_dims.append(out_dim)
                    if i != len(dim_mult) - 1 and j == num_res_blocks - 1:
                        downsample = Downsample(out_dim, True, dims=2, out_channels=out_dim)
                        shortcut_dims.append(out_dim)
                        scale /= 2.0
                        self.input_blocks.append(downsample)
            # middle (lines 1281-1324)
            self.middle_block = nn.ModuleList([
                ResBlock(out_dim, embed_dim, dropout, use_scale_shift_norm=False, use_image_dataset=use_image_dataset),
                spatial(out_dim, self.context_dim)])
            self.middle_block.append(temporal(out_dim, out_dim // head_dim))
            self.middle_block.append(ResBlock(out_dim, embed_dim, dropout, use_scale_shift_norm=False))
            # decoder (lines 1326-1381): its spatial transformers' context width is 1024, written out
            self.output_blocks = nn.ModuleList()
            for i, (in_dim, out_dim) in enumerate(zip(dec_dims[:-1], dec_dims[1:])):
                for j in range(num_res_blocks + 1):
                    block = nn.ModuleList([ResBlock(in_dim + shortcut_dims.pop(), embed_dim, dropout, out_dim,
                                                    use_scale_shift_norm=False, use_image_dataset=use_image_dataset)])
                    if scale in attn_scales:
                        block.append(spatial(out_dim, 1024))
                        block.append(temporal(out_dim, out_dim // head_dim))
                    in_dim = out_dim
                    if i != len(dim_mult) - 1 and j == num_res_blocks:
                        block.append(Upsample(out_dim, True, dims=2.0, out_channels=out_dim))
                        scale *= 2.0
                    self.output_blocks.append(block)
            # head (lines 1384-1389)
            self.out = nn.Sequential(nn.GroupNorm(32, out_dim), nn.SiLU(), nn.Conv2d(out_dim, self.out_dim, 3, padding=1))
            nn.init.zeros_(self.out[-1].weight)

        def forward(self, x, t, y, x_lr=None, fps=None, video_mask=None, focus_present_mask=None,
                    prob_focus_present=0., mask_last_frame_num=0):  # lines 1391-1461
            batch, x_c, x_f, x_h, x_w = x.shape
            self.batch = batch
            focus_present_mask = default(focus_present_mask, lambda: prob_mask_like((batch,), prob_focus_present,
                                                                                    device=x.device))
            time_rel_pos_bias = None
            e = self.time_embed(sinusoidal_embedding(t, self.dim))
            context = y
            e = e.repeat_interleave(repeats=x_f, dim=0)
            context = context.repeat_interleave(repeats=x_f, dim=0)
            x = rearrange(x, 'b c f h w -> (b f) c h w')
            xs = []
            for block in self.input_blocks:
                x = self._forward_single(block, x, e, context, time_rel_pos_bias, focus_present_mask, video_mask)
                xs.append(x)
            for block in self.middle_block:
                x = self._forward_single(block, x, e, context, time_rel_pos_bias, focus_present_mask, video_mask)
            for block in self.output_blocks:
                x = torch.cat([x, xs.pop()], dim=1)
                x = self._forward_single(block, x, e, context, time_rel_pos_bias, focus_present_mask, video_mask,
                                         reference=xs[-1] if len(xs) > 0 else None)
            x = self.out(x)
            return rearrange(x, '(b f) c h w -> b c f h w', b=batch)

        def _forward_single(self, module, x, e, context, time_rel_pos_bias, focus_present_mask, video_mask,
                            reference=None):  # lines 1463-1543, the branches this path's modules take
            wrap = (lambda m: checkpoint_wrapper(m)) if self.use_checkpoint else (lambda m: m)
            if isinstance(module, ResBlock):
                return wrap(module)(x.contiguous(), e, self.batch)
            if isinstance(module, SpatialTransformer):
                return wrap(module)(x, context)
            if isinstance(module, TemporalTransformer):
                x = rearrange(x, '(b f) c h w -> b c f h w', b=self.batch)
                x = wrap(module)(x, context)
                return rearrange(x, 'b c f h w -> (b f) c h w')
            if isinstance(module, (Upsample, Downsample)):
                return module(x)
            if isinstance(module, nn.ModuleList):
                for block in module:
                    x = self._forward_single(block, x, e, context, time_rel_pos_bias, focus_present_mask, video_mask,
                                             reference)
                return x
            return module(x)

    del RotaryEmbedding  # imported as the reference does (line 14); its path is not this one
    return {"Vid2VidSDUNet": Vid2VidSDUNet, "Upsample": Upsample, "Downsample": Downsample}
